import json
import subprocess
import sys

import pytest
import torch

from cfgedu.commands.cli import main
from cfgedu.core.tensors import make_generator
from cfgedu.toy.grid import Grid2D, HistogramTV, tilted_densities
from cfgedu.toy.sampling import class_samples, panel_samples


@pytest.fixture(scope="module")
def figure2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("figure2")
    assert main(["figure2", "--out", str(out), "--w", "1", "4", "--samples-per-class", "5000", "--steps", "64"]) == 0
    return out, json.loads((out / "figure2.json").read_text())


def test_writes_png_and_json(figure2_run):
    out, result = figure2_run
    assert (out / "figure2.png").stat().st_size > 10_000
    assert set(result) == {"mixture", "grid", "seconds", "panels"}
    assert [p["w"] for p in result["panels"]] == [0.0, 1.0, 4.0]
    assert result["mixture"]["means"][0] == pytest.approx([0.0, 1.0], abs=1e-12)


def test_every_mass_is_one(figure2_run):
    for panel in figure2_run[1]["panels"]:
        for row in panel["classes"]:
            assert abs(row["mass"] - 1) < 1e-6


def test_sampler_hits_the_target_only_without_guidance(figure2_run):
    """At w = 0 exact-score sampling is at the noise floor; with guidance it misses the tilted target."""
    panels = figure2_run[1]["panels"]
    for row in panels[0]["classes"]:
        assert row["tv_sampler_to_target"] < 1.5 * row["tv_noise_floor"]
        assert row["tv_to_untilted"] == 0.0
    for row in panels[2]["classes"]:
        assert row["tv_sampler_to_target"] > 3 * row["tv_noise_floor"]
        assert row["tv_to_untilted"] > 0.2


@pytest.mark.parametrize("args, message", [
    (["--w", "nan"], "w must be finite, got nan"),
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--v", "2"], r"v must be in \[0.0, 1.0\]"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "cfgedu", "figure2", "--out", str(tmp_path), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert __import__("re").search(message, result.stderr)


def test_panels_drawn_together_follow_each_w(toy):
    """panel_samples draws every w in one batch; each panel has the class means of class_samples drawn for its w
    alone (another random stream, so they agree within sampling noise: ~0.01 here), and guidance moves them."""
    ws = [0.0, 4.0]
    together = panel_samples(toy, 3, ws, 4000, generator=make_generator(0), steps=64)
    assert together.shape == (2, 3, 4000, 2) and together.dtype == torch.float64
    for i, w in enumerate(ws):
        alone = class_samples(toy, 3, w, 4000, generator=make_generator(1), steps=64)
        torch.testing.assert_close(together[i].mean(1), alone.mean(1), atol=0.04, rtol=0)
    assert (together[1].mean(1) - together[0].mean(1)).norm(dim=1).min() > 0.2


def test_float32_sampling_gives_the_float64_tvs(toy):
    """figure2 samples the exact mixture in float32: per class, its TV to the tilted target is float64's within
    sampling noise (the noise floor at 5000 samples is ~0.05; guided TVs are ~0.3)."""
    grid = Grid2D.covering(toy)
    histogram, target = HistogramTV(grid, 32), tilted_densities(toy, grid, 4.0)
    tvs = {dtype: [histogram(samples, target[c]) for c, samples in
                   enumerate(panel_samples(toy, 3, [4.0], 5000, generator=make_generator(0), steps=64, dtype=dtype)[0])]
           for dtype in (torch.float32, torch.float64)}
    assert min(tvs[torch.float64]) > 0.2
    assert max(abs(a - b) for a, b in zip(tvs[torch.float32], tvs[torch.float64], strict=True)) < 0.03
