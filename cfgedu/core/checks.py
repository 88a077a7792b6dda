"""Argument validation for public entry points: each check raises a ValueError that says what was
wrong and what is allowed."""
from __future__ import annotations

import math

import torch


def check_finite(name: str, value: float) -> float:
    """A finite real number."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_in_range(name: str, value: float, low: float, high: float) -> float:
    """A number in the closed interval [low, high]."""
    number = check_finite(name, value)
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return number


def check_positive_int(name: str, value: int) -> int:
    """An integer >= 1."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """One of a fixed set of strings."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_labels(c: torch.Tensor, num_classes: int, batch: int | None = None, allow_null: bool = True) -> torch.Tensor:
    """Integer labels of shape (B,) in 0..num_classes-1, or num_classes (the null label) if allowed."""
    if not isinstance(c, torch.Tensor) or c.ndim != 1 or c.dtype.is_floating_point or c.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {type(c).__name__} "
                         f"{getattr(c, 'dtype', '')} of shape {tuple(getattr(c, 'shape', ()))}")
    if batch is not None and c.shape[0] != batch:
        raise ValueError(f"labels have batch size {c.shape[0]} but the inputs have {batch}")
    high = num_classes if allow_null else num_classes - 1
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > high):
        allowed = f"0..{num_classes - 1} or {num_classes} (the null label)" if allow_null else f"0..{num_classes - 1}"
        raise ValueError(f"labels must be in {allowed}; got values from {int(c.min())} to {int(c.max())}")
    return c


def check_batch(z: torch.Tensor, lam: torch.Tensor) -> None:
    """z of shape (B, *data_shape) and lam of shape (B,)."""
    if z.ndim < 2:
        raise ValueError(f"z must have shape (B, *data_shape), got {tuple(z.shape)}")
    if lam.shape != (z.shape[0],):
        raise ValueError(f"lam must have shape ({z.shape[0]},) to match z of shape {tuple(z.shape)}, "
                         f"got {tuple(lam.shape)}")


def check_logits(logits: torch.Tensor, batch: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """A classifier's output: logits of shape (batch, K), with K above every label when labels are given."""
    bound = f" with K > {int(labels.max())}" if labels is not None else ""
    if logits.ndim != 2 or logits.shape[0] != batch or (labels is not None and logits.shape[1] <= int(labels.max())):
        raise ValueError(f"the classifier must return logits of shape ({batch}, K){bound}, got {tuple(logits.shape)}")
    return logits
