"""Run folders: the training checkpoint (written atomically, checked entry by entry before use), the metrics log,
and the lock that keeps two runs out of one folder.

OUT/checkpoint.pt   {"model": {kind, config, state_dict}, "ema", "optimizer", "step", "train_config",
                     "log_window", "seconds"}, plain tensors and builtins (torch.load(weights_only=True))
OUT/metrics.jsonl   one JSON record per log interval
OUT/config.json     the experiment (cfgedu.engine.experiment)
"""
from __future__ import annotations

import fcntl
import json
import math
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from torch import nn

from ..core.configs import config_from_dict
from ..core.io import atomic_torch_save, atomic_write_text, safe_torch_load
from ..nets.registry import MODEL_ENTRIES, check_entries, check_state_dict, model_record, rebuild_model
from .config import RESUMABLE_CHANGES, TrainConfig

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG_JSON = "config.json"
LOCK = ".train.lock"  # flock'ed by the process that writes a run folder, for as long as it trains
_WHAT = "cfgedu training checkpoint"
# entry -> (what it must be, test); log_window and seconds are absent from older checkpoints
_ENTRY_TYPES = {
    "step": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "train_config": ("a dict", lambda v: isinstance(v, dict)),
    "optimizer": ("a dict", lambda v: isinstance(v, dict)),
    "log_window": ("a [loss, steps] pair", lambda v: isinstance(v, (list, tuple)) and len(v) == 2),
    "seconds": ("a finite number >= 0", lambda v: isinstance(v, (int, float)) and 0 <= v < math.inf),
}


def check_checkpoint(checkpoint, path: Path) -> dict:
    """A training checkpoint's entries are all there and of their types (the weights are checked against a network)."""
    check_entries(checkpoint, ("model", "ema", "optimizer", "step", "train_config"), path, _WHAT)
    check_entries(checkpoint["model"], MODEL_ENTRIES, path, _WHAT, where="model.")
    for key, (what, fits) in _ENTRY_TYPES.items():
        if key in checkpoint and not fits(checkpoint[key]):
            raise ValueError(f"{path}: the checkpoint's {key!r} entry must be {what}, got {checkpoint[key]!r:.80}")
    return checkpoint


def check_resumable(checkpoint: dict, model: nn.Module, kind: str, config: TrainConfig, path: Path) -> None:
    """The checkpoint must hold the same network, weights that fit it, and the same optimisation problem as this run."""
    saved = checkpoint["model"]
    if saved["kind"] != kind or config_from_dict(type(model.config), saved["config"], path) != model.config:
        raise ValueError(f"{path} holds a {saved['kind']!r} network with config {saved['config']}, but this "
                         f"run trains a {kind!r} network with config {asdict(model.config)}: use another output folder")
    check_state_dict(saved["state_dict"], model, path, "state_dict")
    check_state_dict(checkpoint["ema"], model, path, "ema")
    now = asdict(config)
    changed = sorted(name for name, value in checkpoint["train_config"].items()
                     if name not in RESUMABLE_CHANGES and now.get(name) != value)
    if changed:
        diffs = ", ".join(f"{name} {checkpoint['train_config'][name]!r} -> {now.get(name)!r}" for name in changed)
        raise ValueError(f"cannot resume {path} with a different training setup ({diffs}); only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change: use another output folder")


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep the metric lines up to the resumed step (a killed run may have logged past its checkpoint); the file is
    replaced atomically, so a kill meanwhile leaves the old history whole."""
    if not path.exists():
        return
    lines, kept = path.read_text().splitlines(), []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            continue
    if kept != lines:
        atomic_write_text("".join(f"{line}\n" for line in kept), path)


@contextmanager
def folder_lock(out_dir: Path):
    """Hold an exclusive flock on out_dir/.train.lock while this process writes the folder; the OS drops it when
    the process ends, crash or kill included, so a stale lock file never blocks a later run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out_dir} is in use: another cfgedu train holds {out_dir / LOCK}; wait for it to end "
                             f"or choose another output folder") from None
        yield


def write_checkpoint(path: Path, *, model: nn.Module, kind: str, ema: nn.Module, optimizer, step: int,
                     config: TrainConfig, log_window: list, seconds: float) -> None:
    """The training state after `step` steps, written atomically (see the module docstring for the entries)."""
    atomic_torch_save({"model": model_record(model, kind), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                       "step": step, "train_config": asdict(config), "log_window": log_window, "seconds": seconds},
                      path)


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    """A training checkpoint, loaded weights-only and its entries checked (not yet against a network)."""
    return check_checkpoint(safe_torch_load(path, map_location), path)


def load_checkpoint_model(path: Path, use_ema: bool = True, kinds: tuple[str, ...] | None = None,
                          map_location="cpu") -> nn.Module:
    """The network of a run (its folder or its checkpoint.pt; EMA weights unless use_ema=False), in eval mode.

    A model.pt written by toy-train before it wrote run folders ({kind, config, state_dict}) loads too. `kinds`,
    when given, are the network kinds the caller can use."""
    path = Path(path)
    path = path / CHECKPOINT if path.is_dir() else path
    saved = safe_torch_load(path, map_location)
    if isinstance(saved, dict) and "optimizer" in saved:
        checkpoint = check_checkpoint(saved, path)
        record, weights = {**checkpoint["model"], "ema": checkpoint["ema"]}, "ema" if use_ema else "state_dict"
    else:
        record, weights = check_entries(saved, MODEL_ENTRIES, path, "cfgedu run or model file"), "state_dict"
    if kinds and record["kind"] not in kinds:
        raise ValueError(f"{path} holds a {record['kind']!r} network; this command needs one of {', '.join(kinds)}")
    return rebuild_model(record, path, weights)


def run_precision(run: Path) -> str:
    """The precision a run folder (or its checkpoint.pt) was trained at: its config.json's train.precision, "fp32"
    for a run without one."""
    run = Path(run)
    record = (run.parent if run.suffix == ".pt" else run) / CONFIG_JSON
    return json.loads(record.read_text()).get("train", {}).get("precision", "fp32") if record.is_file() else "fp32"


def append_metrics(out_dir: Path, record: dict) -> None:
    """One JSON line in out_dir/metrics.jsonl."""
    with open(out_dir / METRICS, "a") as handle:
        handle.write(json.dumps(record) + "\n")
