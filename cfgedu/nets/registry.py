"""Networks that satisfy the eps_model contract `model(z, lam, c) -> eps`, and their saved form.

Every cfgedu network is an nn.Module with `num_classes` (the null label) and `config`, a frozen
dataclass from which it can be rebuilt. A saved model is {"kind", "config", "state_dict"}: plain
tensors and builtins, so it loads with torch.load(weights_only=True). A loaded record is checked before a
network is built: config keys and types against the Config dataclass, then every weight's shape against a
network built on the meta device (no memory), so a hand-edited file is one line naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import reprlib
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.nn.modules.module import register_module_parameter_registration_hook

from ..core.configs import config_from_dict
from .classifier import ClassifierConfig, NoisyClassifier
from .mlp import EnergyMLP, EpsMLP, MLPConfig
from .unet import UNet, UNetConfig

# kind -> network class; each has a `Config` dataclass type and takes it as its only argument.
# A network's `objective` attribute names its training loss (cfgedu.core.losses.LOSSES); without one it is "eps".
MODEL_KINDS: dict[str, type[torch.nn.Module]] = {"unet": UNet, "mlp": EpsMLP, "energy": EnergyMLP,
                                                 "classifier": NoisyClassifier}
MODEL_ENTRIES = ("kind", "config", "state_dict")
NetConfig = MLPConfig | UNetConfig | ClassifierConfig


def network_class(kind: str) -> type[torch.nn.Module]:
    """The class registered as `kind`."""
    if not isinstance(kind, str) or kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(MODEL_KINDS))}")
    return MODEL_KINDS[kind]


def build_model(kind: str, config: dict) -> torch.nn.Module:
    """A fresh network of `kind` from a config dict (as saved beside its weights)."""
    cls = network_class(kind)
    return cls(cls.Config(**config))


def model_record(model: torch.nn.Module, kind: str, state_dict: dict | None = None) -> dict:
    """The saved form of a network: kind, config and (by default its own) weights."""
    return {"kind": kind, "config": dataclasses.asdict(model.config),
            "state_dict": state_dict if state_dict is not None else model.state_dict()}


# ---------------------------------------------------------------------------------------------- checking saved files


def check_entries(record, keys: tuple[str, ...], path: Path, what: str, where: str = "") -> dict:
    """`record` itself when it is a dict holding every one of `keys`; else a ValueError naming the file and the key.

    `where` prefixes the key in the message ("model." for the network record inside a training checkpoint)."""
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a {what}: {where.rstrip('.') or 'it'} is a {type(record).__name__}, not a "
                         f"dict with keys {', '.join(keys)}")
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{path} is not a {what}: it has no {where + missing[0]!r} entry (expected "
                         f"{', '.join(where + key for key in keys)})")
    return record


def _state_dict(state, path: Path, key: str) -> dict:
    if not isinstance(state, dict):
        raise ValueError(f"{path}: {key!r} is a {type(state).__name__}, not a state dict of tensors")
    return state


def check_state_dict(state, like: torch.nn.Module, path: Path, key: str) -> None:
    """`state` must hold exactly the entries of like.state_dict(), each a tensor of its shape and dtype (`like` may
    live on the meta device); else a ValueError naming the file, `key` and the entry."""
    state, expected = _state_dict(state, path, key), like.state_dict()
    missing, unknown = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unknown:
        name = min(map(str, missing or unknown))
        raise ValueError(f"{path}: {key!r} {'lacks the' if missing else 'has an unknown'} entry {reprlib.repr(name)} "
                         f"({len(missing)} missing, {len(unknown)} unknown) for the network its config describes")
    for name, tensor in expected.items():
        value = state[name]
        if not isinstance(value, torch.Tensor) or (value.shape, value.dtype) != (tensor.shape, tensor.dtype):
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{path}: {key!r} entry {name!r} is {got}, but the saved config describes a "
                             f"{tensor.dtype} tensor of shape {tuple(tensor.shape)}")


@contextmanager
def _few_parameters(saved: int, path: Path):
    """Stop a network build (ValueError) once it registers far more parameters (2·saved + 64) than the `saved`
    tensors: such a config cannot fit its weights, and a huge depth would take hours even on the meta device.
    A config a few entries off is left to check_state_dict, which names the entry."""
    count = 0

    def count_one(module, name, param):
        nonlocal count
        count += 1
        if count > 2 * saved + 64:
            raise ValueError(f"{path}: the saved config describes a network with far more parameters than the "
                             f"{saved} tensors saved with it")

    handle = register_module_parameter_registration_hook(count_one)
    try:
        yield
    finally:
        handle.remove()


def rebuild_model(record: dict, path: Path, weights: str = "state_dict") -> torch.nn.Module:
    """The network of a saved record {"kind", "config", weights: its state dict}, in eval mode.

    Config and weights are checked against a network built on the meta device before any real memory is
    allocated; every problem is a one-line ValueError naming `path` and the key."""
    check_entries(record, ("kind", "config", weights), path, "saved cfgedu network")
    try:
        cls = network_class(record["kind"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    config, state = config_from_dict(cls.Config, record["config"], path), _state_dict(record[weights], path, weights)
    with _few_parameters(len(state), path), torch.device("meta"):
        skeleton = cls(config)
    check_state_dict(state, skeleton, path, weights)
    model = cls(config)
    model.load_state_dict(state)
    return model.eval()
