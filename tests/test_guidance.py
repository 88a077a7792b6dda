import math
import warnings

import pytest
import torch

from cfgedu.core.guidance import (
    SATURATED_W,
    GuidanceWarning,
    cfg_combine,
    check_w,
    guided,
    interval_weight,
    scale_from_w,
    w_from_scale,
)
from cfgedu.core.parameterization import eps_to_score, eps_to_x, score_to_eps, x_to_eps


class Recorder:
    """A conditional eps_model that counts its calls and batch sizes."""

    num_classes = 3

    def __init__(self, mixture):
        self.mixture, self.batches = mixture, []

    def __call__(self, z, lam, c):
        self.batches.append(len(c))
        return self.mixture(z, lam, c)


def inputs(generator, n=32):
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return z, torch.full((n,), 0.7, dtype=torch.float64), torch.randint(0, 3, (n,), generator=generator)


@pytest.mark.parametrize("w", [0.0, 0.3, 4.0])
def test_w_and_s_agree(w):
    s = scale_from_w(w)
    assert s == 1 + w and w_from_scale(s) == pytest.approx(w)
    cond, uncond = torch.tensor([2.0]), torch.tensor([-1.0])
    diffusers_form = uncond + s * (cond - uncond)
    assert torch.allclose(cfg_combine(cond, uncond, w), diffusers_form)
    assert torch.allclose(cfg_combine(cond, uncond, w), (1 + w) * cond - w * uncond)


def test_w_zero_is_conditional_and_w_minus_one_unconditional(toy, generator):
    z, lam, c = inputs(generator)
    assert torch.equal(guided(toy, 0.0)(z, lam, c), toy(z, lam, c))
    assert torch.allclose(guided(toy, -1.0)(z, lam, c), toy(z, lam, torch.full_like(c, 3)))


def test_one_doubled_batch(toy, generator):
    model = Recorder(toy)
    z, lam, c = inputs(generator)
    out = guided(model, 2.0)(z, lam, c)
    assert model.batches == [64]
    expected = 3 * toy(z, lam, c) - 2 * toy(z, lam, torch.full_like(c, 3))
    assert torch.allclose(out, expected)


@pytest.mark.parametrize("w", [0.5, 3.0])
def test_guiding_eps_x_or_score_gives_the_same_step(toy, generator, w):
    """The CFG weights sum to 1, so guiding ε, x̂ or the score is the same operation."""
    z, lam, c = inputs(generator)
    null = torch.full_like(c, 3)
    eps_c, eps_u = toy(z, lam, c), toy(z, lam, null)
    eps = cfg_combine(eps_c, eps_u, w)
    assert torch.allclose(eps_to_x(z, eps, lam), cfg_combine(eps_to_x(z, eps_c, lam), eps_to_x(z, eps_u, lam), w))
    assert torch.allclose(eps, score_to_eps(cfg_combine(eps_to_score(eps_c, lam), eps_to_score(eps_u, lam), w), lam))
    assert torch.allclose(x_to_eps(z, eps_to_x(z, eps, lam), lam), eps)


def test_interval_guidance(toy, generator):
    z, _, c = inputs(generator, 4)
    lam = torch.tensor([-5.0, -1.0, 1.0, 5.0], dtype=torch.float64)
    out = guided(toy, interval_weight(2.0, -2.0, 2.0))(z, lam, c)
    inside = guided(toy, 2.0)(z, lam, c)
    assert torch.allclose(out[[1, 2]], inside[[1, 2]])
    assert torch.allclose(out[[0, 3]], toy(z, lam, c)[[0, 3]])


def test_one_w_per_sample_is_each_w_on_its_own(toy, generator):
    """Several guidance strengths in one batch (figure2's panels): each sample is guided by its own w."""
    z, lam, c = inputs(generator)
    w = torch.tensor([1.0] * 16 + [4.0] * 16)
    out = guided(toy, w)(z, lam, c)
    torch.testing.assert_close(out[:16], guided(toy, 1.0)(z[:16], lam[:16], c[:16]))
    torch.testing.assert_close(out[16:], guided(toy, 4.0)(z[16:], lam[16:], c[16:]))


@pytest.mark.parametrize("w", [math.nan, math.inf])
def test_bad_w(toy, w):
    with pytest.raises(ValueError, match="w must be finite"):
        guided(toy, w)
    with pytest.raises(ValueError, match="w must be finite"):
        guided(toy, torch.tensor([1.0, w]))


def test_null_label_needed():
    with pytest.raises(ValueError, match="null_label"):
        guided(lambda z, lam, c: z, 1.0)


@pytest.mark.parametrize("w, message", [(-5.0, r"w = -5 < -1 gives a negative scale s = 1 \+ w = -4"),
                                        (1e9, r"w = 1e\+09 is above 100 .* saturate")])
def test_w_outside_the_useful_range_warns(toy, w, message):
    with pytest.warns(GuidanceWarning, match=message):
        guided(toy, w)
    with pytest.warns(GuidanceWarning, match=message):
        interval_weight(w, -2.0, 2.0)


@pytest.mark.parametrize("w", [-1.0, 0.0, 4.0, 16.0, SATURATED_W])
def test_w_in_the_useful_range_is_silent(toy, w):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_w(w) == w and guided(toy, w).w == w
