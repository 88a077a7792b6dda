"""`python -m cfgedu train`: presets and overrides, SIGKILL and resume, DDP under torchrun, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from cfgedu.commands.cli import main
from cfgedu.core.configs import apply_overrides, override_keys
from cfgedu.core.io import safe_torch_load
from cfgedu.engine.config import TrainConfig
from cfgedu.engine.presets import preset
from cfgedu.engine.runs import CHECKPOINT, METRICS, load_checkpoint_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TINY = ["--preset", "toy-tiny", "--no-progress"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cfgedu", "train", *TINY, *args]


def tensors(tree) -> list[torch.Tensor]:
    """Every tensor in a nested checkpoint, in a fixed order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in tensors(item)]
    return []


def lines(path: Path, *keys: str) -> list[tuple]:
    return [tuple(json.loads(line)[k] for k in keys) for line in path.read_text().splitlines()]


def test_sigkill_then_resume_ends_bit_identical(tmp_path):
    args = ["--steps", "300", "--checkpoint_every", "10"]
    straight = subprocess.Popen(cli("--out", str(tmp_path / "straight"), *args), env=ENV, cwd=tmp_path)
    victim = subprocess.Popen(cli("--out", str(tmp_path / "killed"), *args), env=ENV, cwd=tmp_path)
    checkpoint = tmp_path / "killed" / CHECKPOINT
    while not checkpoint.exists() and victim.poll() is None:
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert safe_torch_load(checkpoint)["step"] < 300  # killed mid-run
    subprocess.run(cli("--out", str(tmp_path / "killed"), *args), env=ENV, cwd=tmp_path, check=True, timeout=180)
    assert straight.wait(timeout=180) == 0
    resumed, reference = safe_torch_load(checkpoint), safe_torch_load(tmp_path / "straight" / CHECKPOINT)
    assert resumed["step"] == reference["step"] == 300
    pairs = list(zip(tensors(resumed), tensors(reference), strict=True))
    assert len(pairs) > 10 and all(torch.equal(a, b) for a, b in pairs)  # model, EMA and AdamW state
    logged = [lines(tmp_path / run / METRICS, "step", "loss") for run in ("killed", "straight")]
    assert logged[0] == logged[1]


def test_two_gloo_processes_take_the_single_process_step(tmp_path):
    """2 processes x 2 accumulated micro-batches of 8 (DDP averaging, no_sync) against 1 process x 32."""
    args = ["--steps", "3", "--batch_size", "32", "--log_every", "1"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "cfgedu", "train", *TINY, "--out", str(tmp_path / "ddp"), *args, "--grad_accum", "2"]
    ddp = subprocess.Popen(torchrun, env=ENV, cwd=tmp_path)
    assert main(["train", *TINY, "--out", str(tmp_path / "one"), *args]) == 0  # meanwhile, in this process
    assert ddp.wait(timeout=180) == 0
    for use_ema in (False, True):
        two = load_checkpoint_model(tmp_path / "ddp", use_ema=use_ema).state_dict()
        one = load_checkpoint_model(tmp_path / "one", use_ema=use_ema).state_dict()
        assert all(torch.allclose(two[k], one[k], atol=1e-6, rtol=1e-5) for k in one)
    ema, raw = (load_checkpoint_model(tmp_path / "one", use_ema).state_dict() for use_ema in (True, False))
    assert max((ema[k] - raw[k]).abs().max() for k in raw) > 1e-3  # the steps moved the weights away from the EMA
    assert lines(tmp_path / "ddp" / METRICS, "step") == [(1,), (2,), (3,)]
    assert [loss for _, loss in lines(tmp_path / "ddp" / METRICS, "step", "loss")] == pytest.approx(
        [loss for _, loss in lines(tmp_path / "one" / METRICS, "step", "loss")], rel=1e-5)


def error_of(capsys, *args: str) -> str:
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cfgedu train: error:") and "\n" not in err
    return err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert "unknown preset 'toy-tiy' (did you mean 'toy-tiny'?)" in error_of(capsys, "--preset", "toy-tiy",
                                                                             "--out", out)
    assert "unknown option --stepz (did you mean --steps?)" in error_of(capsys, *TINY, "--out", out, "--stepz", "3")
    assert "--steps needs a value" in error_of(capsys, *TINY, "--out", out, "--steps")
    assert "cannot read 'many' as int" in error_of(capsys, *TINY, "--out", out, "--steps", "many")
    assert "no checkpoint to resume" in error_of(capsys, *TINY, "--out", out, "--resume")
    assert "--threads must be >= 0" in error_of(capsys, *TINY, "--out", out, "--threads", "-1")


def test_foreign_and_corrupted_checkpoints_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--steps", "2", "--model.width", "8"]) == 0
    assert "holds a run of preset 'toy-tiny' with another setup (model.width 8 -> 32;" in error_of(
        capsys, *TINY, "--out", str(out), "--steps", "4")
    (out / "config.json").unlink()  # the checkpoint alone still tells
    assert "holds a 'mlp' network with config" in error_of(capsys, *TINY, "--out", str(out), "--steps", "4")
    (out / CHECKPOINT).write_bytes((out / CHECKPOINT).read_bytes()[:300])  # a copy cut short
    assert "is not a readable cfgedu checkpoint" in error_of(capsys, *TINY, "--out", str(out), "--steps", "4",
                                                             "--width", "8")
    torch.save({"kind": "mlp"}, out / CHECKPOINT)
    assert "is not a cfgedu training checkpoint" in error_of(capsys, *TINY, "--out", str(out), "--width", "8")


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_failed_resume_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--steps", "2"]) == 0
    (out / CHECKPOINT).write_bytes((out / CHECKPOINT).read_bytes()[:300])
    before = files_of(out)
    assert "is not a readable cfgedu checkpoint" in error_of(capsys, *TINY, "--out", str(out), "--steps", "4")
    assert files_of(out) == before  # config.json still says steps 2


def test_steps_below_the_checkpoint_are_refused_and_equal_steps_do_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--steps", "6", "--log_every", "2"]) == 0
    before = files_of(out)
    assert f"{out} holds step 6, beyond steps 4; nothing was trained" in error_of(capsys, *TINY, "--out", str(out),
                                                                                 "--steps", "4")
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(out), "--steps", "6", "--log_every", "3"]) == 0
    said = capsys.readouterr().out
    assert f"nothing to do: {out} already holds step 6" in said and "nothing was written" in said
    assert "trained to" not in said and files_of(out) == before  # not even config.json's log_every


def test_a_second_train_on_a_busy_folder_is_refused(tmp_path, capsys):
    """Two real processes on one folder: the second is refused at once, the first's metrics stay in order."""
    out = tmp_path / "run"
    first = subprocess.Popen(cli("--out", str(out), "--steps", "300", "--log_every", "5"), env=ENV, cwd=tmp_path)
    while not (out / METRICS).exists() and first.poll() is None:
        time.sleep(0.005)
    assert f"{out} is in use: another cfgedu train holds" in error_of(capsys, *TINY, "--out", str(out),
                                                                      "--steps", "300", "--log_every", "5")
    assert first.wait(timeout=180) == 0
    assert lines(out / METRICS, "step") == [(step,) for step in range(5, 305, 5)]


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_building(*args, **kwargs):
        raise AssertionError("built a network before checking --out")

    monkeypatch.setattr("cfgedu.engine.experiment.build_network", no_building)
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    assert "is a file" in error_of(capsys, *TINY, "--out", str(taken))
    assert f"{taken} is a file, not a folder" in error_of(capsys, *TINY, "--out", str(taken / "run"))
    assert taken.read_text() == "keep me"


def test_rerunning_a_finished_run_resumes_and_extends_it(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--out", out, "--steps", "4", "--log_every", "2"]) == 0
    assert main(["train", *TINY, "--out", out, "--steps", "6", "--log_every", "2"]) == 0
    assert "trained to step 6" in capsys.readouterr().out
    assert lines(Path(out) / METRICS, "step") == [(2,), (4,), (6,)]


def test_overrides_parse_into_the_field_types():
    experiment = apply_overrides(preset("toy-tiny"), {
        "steps": "7", "train.lr": "1e-3", "grad_clip": "none", "betas": "0.8, 0.95", "compile": "yes",
        "model.width": "12", "precision": "bf16"})
    assert experiment.train == TrainConfig(**{**experiment.train.__dict__, "steps": 7, "lr": 1e-3, "grad_clip": None,
                                              "betas": (0.8, 0.95), "compile": True, "precision": "bf16"})
    assert experiment.model.width == 12 and preset("toy-tiny").model.width != 12
    assert "kind" not in override_keys(experiment) and "data.per_class" in override_keys(experiment)


@dataclass(frozen=True)
class Inner:
    size: int = 1
    root: Path | None = None


@dataclass(frozen=True)
class Outer:
    left: Inner = field(default_factory=Inner)
    right: Inner = field(default_factory=Inner)


def test_ambiguous_and_invalid_overrides_are_refused():
    with pytest.raises(ValueError, match="ambiguous: write one of --left.size, --right.size"):
        apply_overrides(Outer(), {"size": "2"})
    assert apply_overrides(Outer(), {"right.size": "2"}) == Outer(Inner(1), Inner(2))
    assert apply_overrides(Outer(), {"left.root": "data/x"}).left.root == Path("data/x")
    assert apply_overrides(Outer(), {"left.root": "None"}).left.root is None
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        apply_overrides(preset("toy-tiny"), {"lr": "-1"})
    with pytest.raises(ValueError, match="cannot read '0.9' as tuple"):
        apply_overrides(preset("toy-tiny"), {"betas": "0.9"})


def test_a_diverging_run_stops_with_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    message = error_of(capsys, *TINY, "--out", str(out), "--lr", "1e30", "--steps", "5", "--checkpoint_every", "1")
    assert "non-finite loss nan (gradient norm nan) at step 2" in message
    assert safe_torch_load(out / CHECKPOINT)["step"] == 1
