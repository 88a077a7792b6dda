"""An experiment: a network (kind and Config), its data and its TrainConfig, trained in a run folder.

`train_experiment` builds the network (seeded from the run's seed) and the data, and trains or resumes the run;
OUT/config.json records the experiment, and an existing one must describe the same experiment.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.tensors import derive_seed
from ..data.source import DataConfig
from ..nets.registry import NetConfig, network_class
from .config import RESUMABLE_CHANGES, TrainConfig
from .loop import TrainResult, train
from .runs import CHECKPOINT, CONFIG_JSON

_INIT_STREAM = 3  # the seed stream of the initial weights (the loop's noise and dropout are streams 1 and 2)


@dataclass(frozen=True)
class Experiment:
    """A network (its kind in cfgedu.nets.registry.MODEL_KINDS and its Config), its data and its training setup."""

    kind: str = dataclasses.field(metadata={"override": False})  # fixed by the preset, as the Config's type is
    model: NetConfig
    data: DataConfig
    train: TrainConfig

    def __post_init__(self):
        expected = network_class(self.kind).Config
        if not isinstance(self.model, expected):
            raise ValueError(f"a {self.kind!r} network takes a {expected.__name__}, got {type(self.model).__name__}")

    def to_dict(self) -> dict:
        """A JSON-ready description (tuples become lists, paths and other objects their str)."""
        record = {"kind": self.kind, "model": dataclasses.asdict(self.model),
                  "data": {"type": f"{type(self.data).__module__}.{type(self.data).__qualname__}",
                           **dataclasses.asdict(self.data)},
                  "train": dataclasses.asdict(self.train)}
        return json.loads(json.dumps(record, default=str))


def _flatten(record: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat = {}
    for key, value in record.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _check_same_experiment(path: Path, record: dict) -> None:
    """An output folder holds one experiment: only the RESUMABLE_CHANGES training fields may differ."""
    saved, now = _flatten(json.loads(path.read_text())), _flatten(record)
    changed = [key for key in sorted(saved.keys() | now.keys()) if saved.get(key) != now.get(key)
               and not (key.startswith("train.") and key[len("train."):] in RESUMABLE_CHANGES)]
    if changed:
        diffs = ", ".join(f"{key} {saved.get(key)!r} -> {now.get(key)!r}" for key in changed)
        raise ValueError(f"{path.parent} holds a run of preset {saved.get('preset')!r} with another setup ({diffs}; "
                         f"see {path}): use another output folder, or the same settings to resume it")


def build_network(experiment: Experiment) -> nn.Module:
    """The experiment's network, initialised from its seed (the global generator is seeded, then restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(experiment.train.seed, _INIT_STREAM))
        return network_class(experiment.kind)(experiment.model)


def train_experiment(experiment: Experiment, out_dir: Path | None, *, preset_name: str = "",
                     require_checkpoint: bool = False, progress: bool = True,
                     on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Build an Experiment's network and data and train it in out_dir, resuming its checkpoint (out_dir None: in
    memory, nothing written). out_dir/config.json records the experiment (written once a checkpoint to resume is
    verified); an existing one must describe the same experiment. on_log receives each metrics record."""
    record = {"preset": preset_name, **experiment.to_dict()}
    if out_dir is not None:
        _check_run_folder(Path(out_dir), record, require_checkpoint)
    data = experiment.data.build(experiment.train.seed)
    return train(build_network(experiment), data, experiment.train, out_dir, kind=experiment.kind, resume=True,
                 progress=progress, on_log=on_log, config_record=record)


def _check_run_folder(out_dir: Path, record: dict, require_checkpoint: bool) -> None:
    checkpoint, saved = out_dir / CHECKPOINT, out_dir / CONFIG_JSON
    if require_checkpoint and not checkpoint.exists():
        raise FileNotFoundError(f"no checkpoint to resume at {checkpoint}")
    if checkpoint.exists() and saved.exists():
        _check_same_experiment(saved, record)
