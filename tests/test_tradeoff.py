"""The trade-off sweep on a tiny grid: its rows obey known facts, and its files have the promised shape."""
import csv

import pytest
import torch

from cfgedu.commands.toy_tradeoff import learned_models, run_name, write_outputs
from cfgedu.core.schedule import LogSNRSchedule
from cfgedu.toy.tradeoff import GUIDANCE_INTERVAL, SAMPLERS, SweepConfig, linear_schedule_weight, run_sweep
from cfgedu.toy.tradeoff_tables import COLUMNS

TINY = SweepConfig(ws=(0.0, 1.0, 3.0), p_unconds=(0.1,), steps=(12,), samples_per_class=200,
                   exact_samples_per_class=400, detail_steps=12, ideal_ws=(3.0,), ideal_grid=64,
                   corrector_steps=(0, 2), corrector_T=8, metric_points=200, tv_bins=16, train_steps=20)


@pytest.fixture(scope="module")
def sweep(toy_module):
    # the exact mixture stands in for a learned model: the learned path is exercised without training
    return run_sweep(TINY, {0.1: toy_module}, mixture=toy_module, progress=False)


@pytest.fixture(scope="module")
def toy_module():
    from cfgedu.toy.mixture import GaussianMixture

    return GaussianMixture.three_gaussians()


def test_rows_cover_the_grid(sweep):
    c = TINY
    expected = (len(c.p_unconds) * len(c.steps) * len(c.ws) + len(c.steps) * len(c.ws) + 5 * len(c.ws)
                + len(c.ideal_ws) + len(c.corrector_ws) * (2 * len(c.corrector_steps) - 1))  # K = 0 once
    assert len(sweep.rows) == expected
    assert {r["sampler"] for r in sweep.rows} == {"ancestral-v0", "ancestral-v0.3", "ancestral-v1", "ddim", "ideal",
                                                  "interval", "schedule", "ancestral-v0.3+mala",
                                                  "ancestral-v0.3+mala@λmax"}
    assert all(r["p_uncond"] == "" for r in sweep.select(model="exact"))


def test_mala_at_the_data_level_is_mcmc_on_the_tilted_target(sweep):
    """At λ_max, ρ_λ is π_w: MALA there is exact MCMC on π_w, so the K·T steps pull CFG samples onto the target."""
    plain = sweep.select(sampler="ancestral-v0.3+mala", corrector_steps=0)[0]
    final = sweep.select(sampler="ancestral-v0.3+mala@λmax")[0]
    assert final["tv_to_target"] < plain["tv_to_target"]


def test_class_variance_is_the_per_coordinate_variance(toy_module):
    from cfgedu.core.tensors import make_generator
    from cfgedu.toy.metrics import class_variance

    assert class_variance(toy_module.sample(50_000, 1, make_generator(0))) == pytest.approx(0.36, abs=0.01)


def test_guidance_raises_is_and_moves_away_from_the_data(sweep):
    for model in ("exact", "learned"):
        rows = sweep.select(model=model, sampler="ancestral-v0.3", T=12)
        assert [r["w"] for r in rows] == [0.0, 1.0, 3.0]
        assert rows[0]["is_bayes"] < rows[1]["is_bayes"] < rows[2]["is_bayes"] <= 3.0
        assert rows[0]["fd"] < rows[2]["fd"]
        assert 1.0 <= rows[0]["is_logreg"] <= 3.0
    unguided = sweep.select(model="exact", sampler="ddim", w=0.0)[0]
    assert unguided["fd"] < 0.05 and unguided["tv_to_target"] < 2 * unguided["tv_noise_floor"]


def test_ideal_beats_cfg_against_the_tilted_target(sweep):
    ideal = sweep.select(sampler="ideal", w=3.0)[0]
    ddim = sweep.select(sampler="ddim", w=3.0)[0]
    assert ideal["tv_to_target"] < 0.5 * ddim["tv_to_target"]
    assert ideal["tv_to_target"] < 2 * ideal["tv_noise_floor"]


def test_outputs(sweep, tmp_path):
    paths = write_outputs(sweep, tmp_path)
    with open(paths["csv"]) as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert COLUMNS[:12] == ("model", "sampler", "p_uncond", "T", "w", "fd", "is_bayes", "is_logreg", "precision",
                            "recall", "tv_to_target", "tv_noise_floor")
    assert len(rows) == len(sweep.rows)
    assert float(rows[0]["fd"]) == pytest.approx(sweep.rows[0]["fd"], rel=1e-5)
    text = paths["md"].read_text()
    table1 = [line for line in text.split("## Table 1 analogue")[1].split("##")[0].splitlines() if line.startswith("|")]
    assert table1[0] == "| w | FD p_uncond=0.1 | IS p_uncond=0.1 |" and len(table1) == 2 + len(TINY.ws)
    is_w3 = float(table1[-1].split("|")[3])
    assert is_w3 == pytest.approx(sweep.select(model="learned", w=3.0)[0]["is_bayes"], abs=1e-3)
    assert paths["plot"].stat().st_size > 10_000 and paths["boundary"].stat().st_size > 10_000


def test_guidance_weights():
    lam = LogSNRSchedule().grid(1001)
    w_of = linear_schedule_weight(2.0)
    assert w_of(lam[:1]).item() == pytest.approx(0.0, abs=1e-9) and w_of(lam[-1:]).item() == pytest.approx(4.0)
    assert w_of(lam).mean().item() == pytest.approx(2.0, abs=1e-3)  # mean w over the uniform-u grid
    low, high = GUIDANCE_INTERVAL
    assert low == pytest.approx(-3.38, abs=0.01) and high == pytest.approx(2.546, abs=0.01)


def test_learned_models_are_trained_once_and_cached(tmp_path):
    config = SweepConfig(p_unconds=(0.5,), train_steps=5)
    models = learned_models(tmp_path, config, progress=False)
    weights = tmp_path / run_name(0.5, config) / "checkpoint.pt"
    stamp = weights.stat().st_mtime_ns
    again = learned_models(tmp_path, config, progress=False)
    assert weights.stat().st_mtime_ns == stamp  # read back, not retrained
    z, lam, c = torch.randn(4, 2), torch.zeros(4), torch.tensor([0, 1, 2, 3])
    assert torch.allclose(models[0.5](z, lam, c), again[0.5](z, lam, c))
    assert models[0.5].num_classes == 3


def test_bad_configs():
    with pytest.raises(ValueError, match="ws must be"):
        SweepConfig(ws=(-1.0,))
    with pytest.raises(ValueError, match="p_unconds"):
        SweepConfig(p_unconds=(1.5,))
    with pytest.raises(ValueError, match="steps must be"):
        SweepConfig(steps=(0,))
    with pytest.raises(ValueError, match="corrector_steps"):
        SweepConfig(corrector_steps=(-1,))


def test_interval_widget_full_interval_is_plain_cfg(toy_module):
    from cfgedu.frontend.widgets import GuidanceIntervalWidget

    widget = GuidanceIntervalWidget(toy_module, w=2.0, per_class=60, steps=6, bins=16)
    assert "s = 1 + w = 3" in widget.readout.value
    plain = SAMPLERS["ancestral-v0.3"].samples(toy_module, 3, 2.0, 60, 6, 0)
    assert torch.equal(widget.samples(2.0, -20.0, 20.0), plain)
    unguided = SAMPLERS["ancestral-v0.3"].samples(toy_module, 3, 0.0, 60, 6, 0)
    assert torch.equal(widget.samples(2.0, 5.0, 5.0), unguided)  # an empty interval guides nowhere
    widget.sliders["interval"].value = (-3.0, 3.0)
    assert "λ∈[-3, 3]" in widget.view.axes[1].get_title() and widget.update_seconds > 0
