import json
import subprocess
import sys

import pytest

from cfgedu.commands.cli import main


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
