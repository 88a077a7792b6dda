"""Named experiments (presets) and `--key value` overrides of frozen config dataclasses.

An Experiment is what `python -m cfgedu train --preset NAME` runs: a network kind and its frozen Config, a
data config whose build(seed) returns a DataSource, and a cfgedu.engine.loop.TrainConfig. Presets are listed
lazily as "module:function" strings (the function takes no arguments and returns an Experiment), so
importing this module imports no network or dataset. Adjust a preset with dataclasses.replace in Python,
or with apply_overrides({"steps": "100", "model.width": "64"}) from strings on the command line.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# name -> "module:function" returning an Experiment.
PRESETS: dict[str, str] = {
    "toy-tiny": "cfgedu.engine.config:toy_tiny",
    "imagenet64": "cfgedu.engine.config:imagenet64",
    "digits": "cfgedu.engine.config:digits",
}

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class Experiment:
    """A network (kind in cfgedu.nets.MODEL_KINDS and its Config), its data and its training setup."""

    kind: str = dataclasses.field(metadata={"override": False})  # fixed by the preset, as the Config's type is
    model: Any = None  # the network's frozen Config dataclass
    data: Any = None  # a frozen dataclass with build(seed: int) -> DataSource
    train: Any = None  # cfgedu.engine.loop.TrainConfig

    def to_dict(self) -> dict:
        """A JSON-ready description (tuples become lists, paths and other objects their str)."""
        record = {"kind": self.kind, "model": dataclasses.asdict(self.model),
                  "data": {"type": f"{type(self.data).__module__}.{type(self.data).__qualname__}",
                           **dataclasses.asdict(self.data)},
                  "train": dataclasses.asdict(self.train)}
        return json.loads(json.dumps(record, default=str))


def preset(name: str) -> Experiment:
    """The Experiment registered as `name` in PRESETS."""
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint}; known presets: {', '.join(sorted(PRESETS))}")
    module_name, function_name = PRESETS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)()


# ---------------------------------------------------------------------------------------------- overrides


def override_keys(config) -> list[str]:
    """Every key apply_overrides accepts for `config`: its fields, and "field.sub" inside nested dataclasses."""
    keys = []
    for field in dataclasses.fields(config):
        if not field.metadata.get("override", True):
            continue
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{field.name}.{key}" for key in override_keys(value)]
        else:
            keys.append(field.name)
    return keys


def _resolve_key(config, key: str) -> str:
    """The full dotted key: as given, or the one nested key whose last part is `key`."""
    keys = override_keys(config)
    key = key.replace("-", "_")
    if key in keys:
        return key
    matches = [full for full in keys if full.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"--{key} is ambiguous: write one of {', '.join('--' + m for m in matches)}")
    close = difflib.get_close_matches(key, keys + [full.rsplit(".", 1)[-1] for full in keys], n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    raise ValueError(f"unknown option --{key}{hint}; known: {', '.join('--' + k for k in keys)}")


def parse_value(text: str, annotation, name: str):
    """`text` converted to the type `annotation` (int, float, bool, str, Path, X | None, tuple[...])."""
    text = str(text).strip()
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    try:
        if origin in (typing.Union, types.UnionType):
            if text.lower() in ("none", "null") and type(None) in args:
                return None
            return parse_value(text, next(arg for arg in args if arg is not type(None)), name)
        if origin is tuple or annotation is tuple:
            parts = [part for part in text.strip("()[] ").split(",") if part.strip()]
            element_types = args if args and args[-1] is not Ellipsis else [args[0] if args else float] * len(parts)
            if len(element_types) != len(parts):
                raise ValueError(f"expected {len(element_types)} comma-separated values")
            return tuple(parse_value(part, kind, name) for part, kind in zip(parts, element_types))
        if annotation is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError("expected true or false")
            return text.lower() in _TRUE
        if annotation in (int, float, str, Path):
            return annotation(text)
    except (ValueError, TypeError) as error:
        raise ValueError(f"--{name}: cannot read {text!r} as {_type_name(annotation)} ({error})") from None
    raise ValueError(f"--{name} has type {_type_name(annotation)}, which cannot be set from the command line")


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def apply_overrides(config, overrides: dict[str, str]):
    """A copy of the frozen dataclass `config` with each "key": "text" parsed into the field's type.

    Keys are field names; a nested dataclass field is "outer.inner", or just "inner" when that is unique.
    Unknown keys, ambiguous keys and unreadable values raise ValueError naming the option.
    """
    nested: dict[str, dict[str, str]] = {}
    changes = {}
    hints = typing.get_type_hints(type(config))
    for key, text in overrides.items():
        full = _resolve_key(config, key)
        head, _, rest = full.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = text
        else:
            changes[head] = parse_value(text, hints[head], full)
    for head, inner in nested.items():
        changes[head] = apply_overrides(getattr(config, head), inner)
    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------------------------------------- toy-tiny


@dataclass(frozen=True)
class MixtureSamples:
    """A fixed set of draws from the three-Gaussian toy mixture: a tiny dataset for smoke runs and tests."""

    per_class: int = 128
    data_seed: int = 0

    def build(self, seed: int):
        import torch

        from ..toy.mixture import GaussianMixture
        from ..core.tensors import make_generator
        from .loop import TensorData

        mixture, generator = GaussianMixture.three_gaussians(), make_generator(self.data_seed)
        x = torch.cat([mixture.sample(self.per_class, c, generator) for c in range(mixture.num_classes)])
        c = torch.arange(mixture.num_classes).repeat_interleave(self.per_class)
        return TensorData(x.float(), c, mixture.num_classes, seed)


def toy_tiny() -> Experiment:
    """A 2-layer, 32-wide ε-MLP on 384 toy points for 200 steps: seconds on a CPU."""
    from ..nets.mlp import MLPConfig
    from .loop import TrainConfig

    return Experiment("mlp", MLPConfig(num_classes=3, width=32, depth=2, class_dim=8), MixtureSamples(),
                      TrainConfig(steps=200, batch_size=64, lr=2e-3, ema_decay=0.99, p_uncond=0.2,
                                  checkpoint_every=50, log_every=20))


# ---------------------------------------------------------------------------------------------- digits


def digits() -> Experiment:
    """A 3.9M-parameter ε-U-Net on scikit-learn's digits at 16x16: 1000 steps of 64 images (64k images,
    1.04 GFLOP each to train), aimed at under 10 minutes on an idle 2-core CPU."""
    from ..data.digits import DigitsData
    from ..nets.unet import unet_preset
    from .loop import TrainConfig

    return Experiment("unet", unet_preset("digits"), DigitsData(size=16),
                      TrainConfig(steps=1000, batch_size=64, lr=1e-3, warmup_steps=100, grad_clip=1.0,
                                  ema_decay=0.99, p_uncond=0.1, checkpoint_every=100, log_every=25))


# ---------------------------------------------------------------------------------------------- imagenet64


def imagenet64() -> Experiment:
    """The paper's 64x64 run (SPEC 7.1-7.2): ADM-64 ε-U-Net, λ ∈ [−20, 20], p_uncond 0.1 (0.2, 0.5 via
    --p_uncond), global batch 2048 (64 per GPU, gradient accumulation when fewer than 32 GPUs), lr 3e-4,
    EMA 0.9999, dropout 0.1, 400k steps, bf16 on CUDA. Sample it with v = 0.3 and T = 256. Warm-up
    (1000 steps) and clipping (1.0) follow the authors' distillation config, which the paper does not confirm."""
    from ..data.imagenet64 import ImageNet64Source
    from ..nets.unet import unet_preset
    from .loop import TrainConfig

    return Experiment("unet", unet_preset("imagenet64"), ImageNet64Source("data/imagenet64"),
                      TrainConfig(steps=400_000, batch_size=2048, per_device_batch=64, lr=3e-4, warmup_steps=1000,
                                  grad_clip=1.0, ema_decay=0.9999, p_uncond=0.1, lambda_min=-20.0, lambda_max=20.0,
                                  precision="bf16", checkpoint_every=5000, log_every=100))
