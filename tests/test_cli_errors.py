"""The CLI as a hostile but fair user meets it: output paths checked before any work, one line for every error
and warning, and outputs that are whole or absent."""
import json
import tempfile
from pathlib import Path

import pytest

from cfgedu.commands import _paths
from cfgedu.commands.cli import main

# command -> arguments besides --out; any input they name is missing, so the --out check must come first
ERROR_COMMANDS = {
    "figure2": [],
    "toy-train": [],
    "fields": ["--checkpoint", "missing.pt"],
    "evaluate": ["--checkpoint", "missing"],
    "prepare-imagenet64": ["--src", "missing"],
    "toy-tradeoff": [],
}


def error_of(capsys, *argv: str) -> str:
    """Run the CLI, expect exit status 2 and return its error: the one line of stderr after any progress bar."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.endswith("\n") and "Traceback" not in err, err
    return err.splitlines()[-1]


def assert_whole(folder: Path, names: list[str]) -> None:
    """Every named output is there and not empty, and no temporary file of an atomic write is left."""
    assert all((folder / name).stat().st_size > 0 for name in names)
    assert not [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


@pytest.fixture
def unwritable(tmp_path):
    """A folder where no file can be created (a read-only folder, or /sys when root ignores permissions)."""
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    for candidate in (folder, Path("/sys")):
        try:
            tempfile.TemporaryFile(dir=candidate).close()
        except OSError:
            return candidate
    pytest.skip("no unwritable folder here")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    assert main(["toy-train", "--out", str(out), "--steps", "5", "--no-progress", "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from cfgedu.data.digits import DigitsData
    from cfgedu.engine.config import TrainConfig
    from cfgedu.engine.experiment import Experiment, train_experiment
    from cfgedu.nets.unet import UNetConfig

    out = tmp_path_factory.mktemp("digits")
    config = UNetConfig(image_size=8, model_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
                        head_channels=8, norm_groups=4)
    train_experiment(Experiment("unet", config, DigitsData(8), TrainConfig(steps=1, batch_size=4)), out,
                     progress=False)
    return out


# ---- output paths, checked before the work ----------------------------------------------------------------------

@pytest.mark.parametrize("command", ERROR_COMMANDS)
def test_out_that_is_a_file_is_refused_before_any_work(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cfgedu.toy.figure2.compute_figure2", lambda *a, **k: pytest.fail("figure2 computed"))
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"a file")
    assert error_of(capsys, command, *ERROR_COMMANDS[command], "--out", str(taken)) == \
        f"cfgedu {command}: error: --out {taken} is a file; it must be a folder (created if missing)"
    assert error_of(capsys, command, *ERROR_COMMANDS[command], "--out", str(taken / "sub")) == \
        f"cfgedu {command}: error: --out {taken / 'sub'} cannot be created: {taken} is a file, not a folder"
    assert taken.read_bytes() == b"a file"


def test_out_folder_must_be_writable(unwritable, capsys):
    out = unwritable / "new" / "run"
    assert error_of(capsys, "toy-train", "--out", str(out)).startswith(
        f"cfgedu toy-train: error: --out {out}: cannot write in {unwritable} (")


def test_sample_checks_its_image_path_before_loading_anything(tmp_path, unwritable, capsys):
    missing = str(tmp_path / "missing")
    for name in (tmp_path / "grid", tmp_path):
        assert error_of(capsys, "sample", "--checkpoint", missing, "--out", str(name)) == \
            f"cfgedu sample: error: --out {name} needs an image extension: one of .png, .jpg, .jpeg, .pdf, .svg"
    (tmp_path / "dir.png").mkdir()
    assert error_of(capsys, "sample", "--checkpoint", missing, "--out", str(tmp_path / "dir.png")) == \
        f"cfgedu sample: error: --out {tmp_path / 'dir.png'} is a folder; give an image file name such as " \
        f"{tmp_path / 'dir.png' / 'grid.png'}"
    assert f"--out {unwritable / 'g.png'}: cannot write in {unwritable} (" in \
        error_of(capsys, "sample", "--checkpoint", missing, "--out", str(unwritable / "g.png"))
    assert "no checkpoint at" in error_of(capsys, "sample", "--checkpoint", missing, "--out", str(tmp_path / "g.PNG"))


def test_output_paths_that_are_fine_pass():
    assert _paths.output_folder(Path("not/there/yet")) == Path("not/there/yet")
    assert _paths.output_image("grid.jpeg") == Path("grid.jpeg")


# ---- arguments that run but cannot be what was meant -------------------------------------------------------------

@pytest.mark.parametrize("grid", ["1", "7", "513", "100000"])
def test_fields_grid_is_bounded(grid, tmp_path, capsys):
    assert error_of(capsys, "fields", "--checkpoint", "missing.pt", "--out", str(tmp_path), "--grid", grid) == \
        f"cfgedu fields: error: --grid (points per side) must be in [8, 512], got {grid}"  # the value as given


def test_evaluate_names_the_protocol_for_an_imagenet_checkpoint(tmp_path, capsys, monkeypatch):
    from cfgedu.core.configs import apply_overrides
    from cfgedu.data import imagenet64_convert as convert
    from cfgedu.engine.experiment import train_experiment
    from cfgedu.engine.presets import preset

    convert.write_synthetic_batches(tmp_path / "src", num_train=4, num_val=2, num_files=1)
    convert.convert_pickles(tmp_path / "src", tmp_path / "data", progress=False)
    experiment = apply_overrides(preset("imagenet64-tiny"), {"steps": "1", "data": str(tmp_path / "data")})
    train_experiment(experiment, tmp_path / "run", preset_name="imagenet64-tiny", progress=False)
    monkeypatch.setattr("cfgedu.images.evaluation.sample_batches", lambda *a, **k: pytest.fail("sampled"))
    monkeypatch.setattr("cfgedu.images.digits_classifier.load_classifier", lambda *a, **k: pytest.fail("measured"))
    assert error_of(capsys, "evaluate", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "eval")) == (
        "cfgedu evaluate: error: this checkpoint's network takes 3x64x64 images with 1000 classes; the digits protocol "
        "needs 1-channel 8/16/32-pixel digits with 10 classes: use --protocol imagenet --inception PATH for an "
        "ImageNet 64x64 checkpoint")
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("w, message", [
    ("-5", "w = -5 < -1 gives a negative scale s = 1 + w = -4: guidance pushes the samples away from their class"),
    ("1e9", ("w = 1e+09 is above 100 (the paper uses 0..4): the guidance term swamps the model and the samples "
             "saturate")),
])
def test_figure2_warns_once_in_one_line_about_w(w, message, tmp_path, capsys):
    assert main(["figure2", "--out", str(tmp_path), "--w", w, "--samples-per-class", "50", "--steps", "8"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line] == [f"cfgedu figure2: warning: {message}"]


def test_sample_warns_about_a_saturating_w(digits_run, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(digits_run), "--w", "1e30", "--n", "1", "--steps", "2", "--classes",
                 "1", "--out", str(tmp_path / "grid.png")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "cfgedu sample: warning: w = 1e+30 is above 100" in err
    assert "GuidanceWarning" not in err and "warnings.warn" not in err


# ---- outputs: whole or absent ---------------------------------------------------------------------------------------

def test_every_command_writes_whole_outputs(toy_run, digits_run, tmp_path, monkeypatch):
    from cfgedu.toy.tradeoff import SWEEPS, SweepConfig

    assert_whole(toy_run, ["checkpoint.pt", "config.json", "metrics.jsonl", "eps_error.json"])
    assert main(["figure2", "--out", str(tmp_path / "fig2"), "--samples-per-class", "50", "--steps", "8"]) == 0
    assert_whole(tmp_path / "fig2", ["figure2.png", "figure2.json"])
    assert main(["fields", "--checkpoint", str(toy_run), "--out", str(tmp_path / "fields"), "--grid", "8",
                 "--w", "1", "--lam", "0"]) == 0
    assert_whole(tmp_path / "fields", ["fields.json", "curl.png", "helmholtz.png"])
    assert main(["sample", "--checkpoint", str(digits_run), "--n", "2", "--steps", "2", "--method", "dpm++2m",
                 "--out", str(tmp_path / "grids" / "grid.jpg")]) == 0
    assert_whole(tmp_path / "grids", ["grid.jpg"])
    assert main(["evaluate", "--checkpoint", str(digits_run), "--w", "0", "--per-class", "2", "--steps", "3",
                 "--method", "heun", "--floor-repeats", "2", "--out", str(tmp_path / "eval")]) == 0
    assert_whole(tmp_path / "eval", ["eval.json", "eval.md", "samples_w0.png"])
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (result["method"], result["steps"], result["nfe"]) == ("heun", 3, 4)
    tiny = SweepConfig(ws=(0.0, 1.0), p_unconds=(0.1,), steps=(4,), samples_per_class=50, exact_samples_per_class=50,
                       detail_steps=4, ideal_ws=(1.0,), ideal_grid=16, corrector_ws=(), corrector_T=4,
                       metric_points=40, train_steps=3, tv_bins=8, boundary_w=1.0, nfes=(4,), weak_train_steps=3,
                       method_strengths=(("cfg", (0.0, 3.0)), ("autoguidance", (0.0, 1.0))))
    monkeypatch.setitem(SWEEPS, "fast", tiny)
    assert main(["toy-tradeoff", "--out", str(tmp_path / "tradeoff"), "--fast", "--no-progress"]) == 0
    assert_whole(tmp_path / "tradeoff", ["tradeoff.csv", "tradeoff.md", "tradeoff.png", "boundary_push.png",
                                         "tv_nfe.png", "sweep_config.json",
                                         "models/p_uncond=0.1,steps=3,seed=0/checkpoint.pt",
                                         "models/weak,width=32,steps=3,seed=0/checkpoint.pt"])


def test_a_failed_write_keeps_the_previous_file(digits_run, tmp_path, capsys, monkeypatch):
    """A disk that fills up mid-write: the old grid survives, no temporary file is left, and the CLI says one line."""
    import matplotlib.pyplot as plt

    out = tmp_path / "grid.png"
    argv = ["sample", "--checkpoint", str(digits_run), "--n", "1", "--steps", "2", "--out", str(out)]
    assert main(argv) == 0
    before = out.read_bytes()

    def disk_full(target, *args, **kwargs):
        if isinstance(target, (str, Path)):  # a writer that hands matplotlib the path itself
            with open(target, "wb") as handle:
                return disk_full(handle)
        target.write(before[:40])
        target.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plt, "imsave", disk_full)
    assert error_of(capsys, *argv) == "cfgedu sample: error: [Errno 28] No space left on device"
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


# ---- operating-system errors are one line too -----------------------------------------------------------------------

def test_a_path_error_during_the_run_is_one_line(tmp_path, capsys):
    """toy-tradeoff caches models in OUT/models/: a file there stops the run with the path and the reason."""
    (tmp_path / "models").write_text("not a folder")
    assert error_of(capsys, "toy-tradeoff", "--out", str(tmp_path), "--fast", "--train-steps", "2", "--no-progress") \
        == f"cfgedu toy-tradeoff: error: {tmp_path / 'models' / 'p_uncond=0.1,steps=2,seed=0'}: Not a directory"


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied", "/data/x"),
                                   IsADirectoryError(21, "Is a directory", "/data/x")])
def test_os_errors_become_one_line_with_status_2(error, capsys, monkeypatch):
    def fail(args):
        raise error

    monkeypatch.setattr("cfgedu.commands.describe.run", fail)
    assert error_of(capsys, "describe", "--preset", "digits") == f"cfgedu describe: error: /data/x: {error.strerror}"
