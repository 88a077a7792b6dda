"""Networks that satisfy the eps_model contract `model(z, lam, c) -> eps`, and their saved form.

Every cfgedu network is an nn.Module with `num_classes` (the null label) and `config`, a frozen
dataclass from which it can be rebuilt. A saved model is {"kind", "config", "state_dict"}: plain
tensors and builtins, so it loads with torch.load(weights_only=True).
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import torch

from ..io import atomic_torch_save, safe_torch_load

# kind -> "module:class"; the class has a `Config` dataclass type and takes it as its only argument.
MODEL_KINDS: dict[str, str] = {
    "unet": "cfgedu.nets.unet:UNet",
    "mlp": "cfgedu.nets.mlp:EpsMLP",
    "energy": "cfgedu.nets.mlp:EnergyMLP",
}


def _model_class(kind: str):
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(MODEL_KINDS)) or 'none'}")
    module_name, class_name = MODEL_KINDS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_model(kind: str, config: dict) -> torch.nn.Module:
    """A fresh network of `kind` from a config dict (as saved beside its weights)."""
    cls = _model_class(kind)
    return cls(cls.Config(**config))


def model_record(model: torch.nn.Module, kind: str, state_dict: dict | None = None) -> dict:
    """The saved form of a network: kind, config and (by default its own) weights."""
    return {"kind": kind, "config": dataclasses.asdict(model.config),
            "state_dict": state_dict if state_dict is not None else model.state_dict()}


def save_model(path: Path, model: torch.nn.Module, kind: str, state_dict: dict | None = None) -> Path:
    """Write model_record(...) atomically to `path`."""
    return atomic_torch_save(model_record(model, kind, state_dict), path)


def load_model(path: Path, expected_kinds: tuple[str, ...] | None = None, map_location="cpu") -> torch.nn.Module:
    """Rebuild a saved network in eval mode; clear errors for missing, corrupt or foreign files."""
    record = safe_torch_load(path, map_location)
    if not isinstance(record, dict) or not {"kind", "config", "state_dict"} <= record.keys():
        raise ValueError(f"{path} is not a cfgedu model file (expected keys kind, config, state_dict)")
    if expected_kinds and record["kind"] not in expected_kinds:
        raise ValueError(f"{path} holds a {record['kind']!r} model; this command needs one of {', '.join(expected_kinds)}")
    model = build_model(record["kind"], record["config"])
    model.load_state_dict(record["state_dict"])
    return model.eval()
