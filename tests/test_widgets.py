"""Widget logic without a kernel: move a slider, check the artists and the readouts."""
import re
from itertools import pairwise

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")

from cfgedu.core.schedule import alpha_sigma  # noqa: E402
from cfgedu.frontend import widgets  # noqa: E402
from cfgedu.toy.grid import Grid2D, mix, tilted_densities  # noqa: E402


def parse_readout(text: str) -> tuple[float, float]:
    """(w, s) from 'w = 4 (s = 1 + w = 5)'."""
    match = re.fullmatch(r"w = (\S+) \(s = 1 \+ w = (\S+)\)", text)
    assert match, text
    return float(match[1]), float(match[2])


@pytest.fixture
def figure2(toy):
    return widgets.Figure2Widget(toy, Grid2D.covering(toy, n=96), w=1.0)


@pytest.mark.parametrize("w", [-1.0, 0.0, 0.3, 4.0, 16.0])
def test_readout_shows_w_and_s_equal_one_plus_w(figure2, w):
    figure2.sliders["w"].value = w
    shown_w, shown_s = parse_readout(figure2.readout.value)
    assert shown_w == pytest.approx(figure2.sliders["w"].value)
    assert shown_s == pytest.approx(1 + shown_w)
    assert parse_readout(widgets.guidance_label(w)) == pytest.approx((w, 1 + w))


def test_figure2_slider_updates_the_image_in_place_to_the_tilted_mixture(toy, figure2):
    image, png = figure2.image, figure2.view.image.value
    figure2.sliders["w"].value = 4.0
    assert figure2.image is image and list(figure2.view.axes[1].images) == [image]  # the same artist, new data
    expected = mix(toy, tilted_densities(toy, figure2.grid, 4.0))
    np.testing.assert_allclose(np.asarray(image.get_array()), expected.numpy(), rtol=1e-9, atol=1e-12)
    assert figure2.view.image.value != png
    assert "s = 1 + w = 5" in figure2.view.axes[1].get_title()


def test_figure2_guided_conditionals_have_unit_mass_and_w0_is_the_conditional(toy, figure2):
    densities = figure2.conditionals(2.5)
    cell = figure2.grid.cell
    np.testing.assert_allclose((densities.sum(dim=(1, 2)) * cell**2).numpy(), 1.0, atol=1e-9)
    points = figure2.grid.points()
    untilted = toy.log_prob_components(points).exp().T.reshape(densities.shape)
    np.testing.assert_allclose(figure2.conditionals(0.0).numpy(), untilted.numpy(), rtol=1e-6, atol=1e-6)


def test_forward_process_moves_draws_to_alpha_x_plus_sigma_eps(toy):
    panel = widgets.ForwardProcessWidget(toy, Grid2D.covering(toy, n=64), lam=2.0, points_per_class=20)
    panel.sliders["λ"].value = -1.0
    alpha, sigma = alpha_sigma(torch.tensor(-1.0, dtype=torch.float64))
    np.testing.assert_allclose(panel.points.get_offsets(), (alpha * panel.x + sigma * panel.noise).numpy())
    density = np.asarray(panel.image.get_array())
    assert density.sum() * panel.grid.cell**2 == pytest.approx(1.0, abs=1e-3)  # p_λ integrates to 1
    assert panel.readout.value.startswith("λ = -1 (α = 0.519")


def test_score_field_arrows_follow_the_exact_fields(toy):
    panel = widgets.ScoreFieldWidget(toy, Grid2D.covering(toy, n=32), lam=0.0, c=0, arrows=5)
    panel.sliders["c"].value = 2
    tails = panel.arrow_grid.points()
    expected = toy.implicit_classifier_gradient(tails, torch.zeros(len(tails), dtype=torch.float64),
                                                torch.full((len(tails),), 2))
    quiver = panel.quivers[2]
    arrows = np.stack([quiver.U, quiver.V], axis=1)
    cosine = (arrows * expected.numpy()).sum(1) / (np.linalg.norm(arrows, axis=1) * expected.norm(dim=1).numpy())
    np.testing.assert_allclose(cosine, 1.0, atol=1e-9)  # same directions, rescaled lengths
    assert np.linalg.norm(arrows, axis=1).max() == pytest.approx(0.9 * panel.arrow_grid.cell)
    np.testing.assert_allclose(np.asarray(panel.images[2].get_array()).max(), 1.0, atol=0.05)  # p(c|z) → 1 far out


def test_w_slider_is_marked_for_the_browser_and_rejects_a_value_outside_its_range():
    slider = widgets.w_slider(0.5)
    assert "cfgedu-w-slider" in slider._dom_classes and slider.description == "w"
    with pytest.raises(ValueError, match="low <= value <= high"):
        widgets.w_slider(20.0)


def test_time_sliders_moves_every_slider_to_new_values(toy):
    panel = widgets.ScoreFieldWidget(toy, Grid2D.covering(toy, n=16), arrows=3)
    values = widgets.slider_values(panel.sliders["c"], 4)
    assert all(a != b for a, b in pairwise([panel.sliders["c"].value, *values]))
    timings = widgets.time_sliders(panel, moves=3)
    assert set(timings) == {"λ", "c"} and all(len(t) == 3 and min(t) > 0 for t in timings.values())


def test_range_sliders_get_new_intervals():
    import ipywidgets

    slider = ipywidgets.FloatRangeSlider(value=(-3.0, 2.5), min=-20.0, max=20.0, step=0.5)
    values = widgets.slider_values(slider, 5)
    assert all(isinstance(v, tuple) and v[0] < v[1] for v in values)
    assert all(a != b for a, b in pairwise([slider.value, *values]))
    slider.value = values[-1]  # the slider accepts them


def test_guidance_methods_widget_switches_method_and_strength_scale(toy):
    from cfgedu.core.guidance_methods import Guidance
    from cfgedu.core.tensors import make_generator
    from cfgedu.toy.sampling import class_samples

    panel = widgets.GuidanceMethodsWidget(toy, toy, guide=type(toy).three_gaussians(std=0.8), per_class=50, steps=8,
                                          bins=16)
    assert panel.sliders["method"].options == ("cfg", "apg", "cfg++", "autoguidance")
    assert parse_readout(panel.readout.value) == (3.0, 4.0)
    plain = class_samples(toy, 3, 3.0, 50, generator=make_generator(0), steps=8, method="ddim")
    assert torch.equal(panel.samples("cfg", 3.0), plain)
    before = bytes(panel.view.image.value)
    panel.sliders["method"].value = "cfg++"  # CFG++'s own strength l on [0, 1]
    assert panel.sliders["w"].max == 1.0 and panel.sliders["w"].value == 0.3
    assert panel.readout.value.startswith("l = 0.3 (CFG++") and "cfg++, l = 0.3" in panel.view.axes[2].get_title()
    assert bytes(panel.view.image.value) != before
    plus = class_samples(toy, 3, 0.3, 50, generator=make_generator(0), steps=8, method="ddim",
                         guidance=Guidance("cfg++"))
    assert torch.equal(panel.samples("cfg++", 0.3), plus)
    panel.sliders["target"].value = 1.0
    assert "w = 1" in panel.view.axes[1].get_title()
    assert "autoguidance" not in widgets.GuidanceMethodsWidget(toy, toy, per_class=20, steps=4,
                                                               bins=8).sliders["method"].options


def test_choosers_cycle_through_their_options(toy):
    panel = widgets.GuidanceMethodsWidget(toy, toy, per_class=20, steps=4, bins=8)
    assert widgets.slider_values(panel.sliders["method"], 4) == ["apg", "cfg++", "cfg", "apg"]
