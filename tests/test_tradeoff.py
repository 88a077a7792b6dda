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
                   corrector_steps=(0, 2), corrector_T=8, metric_points=200, tv_bins=16, train_steps=20,
                   nfes=(4, 12), method_strengths=(("cfg", (0.0, 1.0, 3.0)), ("autoguidance", (0.0, 2.0)),
                                                   ("apg", (0.0, 4.0)), ("cfg++", (0.0, 1.0, 4.0))))


@pytest.fixture(scope="module")
def sweep(toy_module):
    # the exact mixture stands in for a learned model, and a broader one for the weak model that autoguides it: the
    # learned paths are exercised without training
    weak = type(toy_module).three_gaussians(std=0.8)
    return run_sweep(TINY, {0.1: toy_module}, guide=weak, mixture=toy_module, progress=False)


@pytest.fixture(scope="module")
def toy_module():
    from cfgedu.toy.mixture import GaussianMixture

    return GaussianMixture.three_gaussians()


def test_rows_cover_the_grid(sweep):
    c = TINY
    expected = (len(c.p_unconds) * len(c.steps) * len(c.ws) + len(c.steps) * len(c.ws) + 5 * len(c.ws)
                + len(c.ideal_ws) + len(c.corrector_ws) * (2 * len(c.corrector_steps) - 1))  # K = 0 once
    # NFE rows: 4 samplers × 2 NFEs × 2 w, less ancestral and DDIM at T = 12 with w = 0 and 3, already rows above
    expected += 4 * len(c.nfes) * len(c.nfe_ws) - 4
    strengths = dict(c.method_strengths)
    exact_methods, learned_methods = ("cfg", "apg", "cfg++"), ("cfg", "autoguidance", "apg", "cfg++")
    sweeps = sum(len(strengths[m]) for m in exact_methods) + sum(len(strengths[m]) for m in learned_methods)
    assert len(sweep.select(kind="method")) == sweeps + len(exact_methods) + len(learned_methods)  # + one matched
    assert len(sweep.rows) == expected + sweeps + len(exact_methods) + len(learned_methods)
    assert {r["sampler"] for r in sweep.rows} == {"ancestral-v0", "ancestral-v0.3", "ancestral-v1", "ddim", "ideal",
                                                  "interval", "schedule", "ancestral-v0.3+mala",
                                                  "ancestral-v0.3+mala@λmax", "heun", "dpm++2m"}
    assert all(r["p_uncond"] == "" for r in sweep.select(model="exact"))
    assert {r["nfe"] for r in sweep.select(sampler="heun")} == set(c.nfes)


def test_each_method_is_matched_to_cfgs_inception_score(sweep):
    """The matched rows sit at CFG's IS at match_w (or say it is out of reach); CFG matches itself at w = 3, and
    every method row measures TV against π_3."""
    for model in ("exact", "learned"):
        cfg = sweep.select(model=model, kind="method", method="cfg", match="is")[0]
        assert cfg["w"] == 3.0 and cfg["guidance_curl"] < 1e-6  # exact stand-ins: a gradient field
        plus = sweep.select(model=model, kind="method", method="cfg++", match="is")[0]
        assert 0 < plus["w"] < 4 and plus["is_bayes"] == pytest.approx(cfg["is_bayes"], abs=0.05)
    apg = sweep.select(model="exact", kind="method", method="apg", match="max-is")
    assert apg and apg[0]["is_bayes"] < sweep.select(model="exact", kind="method", method="cfg", match="is")[0][
        "is_bayes"]
    assert {r["tv_w"] for r in sweep.select(kind="method")} == {3.0}
    assert sweep.select(kind="method", method="autoguidance", match="is") \
        + sweep.select(kind="method", method="autoguidance", match="max-is")


def test_under_guidance_deterministic_and_stochastic_samplers_part_ways(sweep):
    """At w = 0 every sampler heads for the same target; at w = 3 the guided field is no diffusion's score, so DDIM
    and DPM-Solver++(2M) (one ODE) agree with each other and not with ancestral sampling (an SDE)."""
    def tv(sampler, w):
        return sweep.select(model="exact", sampler=sampler, nfe=12, w=w, kind="cfg")[0]["tv_to_target"]

    assert abs(tv("ddim", 0.0) - tv("ancestral-v0.3", 0.0)) < 0.05
    assert abs(tv("ddim", 3.0) - tv("dpm++2m", 3.0)) < 0.1
    assert tv("ddim", 3.0) - tv("ancestral-v0.3", 3.0) > 0.2


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
        rows = sweep.select(model=model, sampler="ancestral-v0.3", T=12, kind="cfg")
        assert [r["w"] for r in rows] == [0.0, 1.0, 3.0]
        assert rows[0]["is_bayes"] < rows[1]["is_bayes"] < rows[2]["is_bayes"] <= 3.0
        assert rows[0]["fd"] < rows[2]["fd"]
        assert 1.0 <= rows[0]["is_logreg"] <= 3.0
    unguided = sweep.select(model="exact", sampler="ddim", w=0.0, kind="cfg")[0]
    assert unguided["fd"] < 0.05 and unguided["tv_to_target"] < 2 * unguided["tv_noise_floor"]


def test_ideal_beats_cfg_against_the_tilted_target(sweep):
    ideal = sweep.select(sampler="ideal", w=3.0)[0]
    ddim = sweep.select(sampler="ddim", w=3.0, kind="cfg")[0]
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
    assert is_w3 == pytest.approx(sweep.select(model="learned", w=3.0, kind="cfg")[0]["is_bayes"], abs=1e-3)
    assert all(paths[key].stat().st_size > 10_000 for key in ("plot", "boundary", "nfe"))
    nfe_table = text.split("against the number of network evaluations, w = 3")[1].split("##")[0]
    assert [line.split("|")[1].strip() for line in nfe_table.splitlines() if line.startswith("| ")][1:] == ["4", "12"]
    methods = text.split("## Guidance methods where their IS matches CFG's at w = 3")[1]
    assert methods.count("| autoguidance | learned |") == 1 and methods.count("| cfg | exact | 3 |") == 1


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
