"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6) as a wrapper around any eps_model.

The paper's w: ε̃ = (1 + w)·ε(z, c) − w·ε(z, ∅). w = 0 is the plain conditional model and w = −1
the unconditional one. Diffusers, Imagen, EDM2 and DiT write the same rule with the scale s = 1 + w:
ε̃ = ε(z, ∅) + s·(ε(z, c) − ε(z, ∅)).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .checks import check_finite
from .tensors import expand_like

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
GuidanceWeight = float | Callable[[torch.Tensor], torch.Tensor]
# Beyond this |w| (the paper sweeps 0..4, the course goes to 16) the w·(ε(z, c) − ε(z, ∅)) term swamps ε and the
# samples saturate: every one is pushed to the far edge of its class.
SATURATED_W = 100.0


class GuidanceWarning(UserWarning):
    """A guidance strength w that runs but is unlikely to be what was meant."""


def check_w(w: float) -> float:
    """w as a finite float; a GuidanceWarning when w < −1 (negative scale s = 1 + w) or w > SATURATED_W."""
    w = check_finite("w", w)
    if w < -1:
        warnings.warn(f"w = {w:g} < -1 gives a negative scale s = 1 + w = {1 + w:g}: guidance pushes the samples "
                      f"away from their class", GuidanceWarning, stacklevel=2)
    elif w > SATURATED_W:
        warnings.warn(f"w = {w:g} is above {SATURATED_W:g} (the paper uses 0..4): the guidance term swamps the "
                      f"model and the samples saturate", GuidanceWarning, stacklevel=2)
    return w


def scale_from_w(w: float) -> float:
    """The diffusers/Imagen guidance scale s = 1 + w."""
    return 1.0 + w


def w_from_scale(s: float) -> float:
    """The paper's guidance strength w = s − 1."""
    return s - 1.0


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, w: torch.Tensor | float) -> torch.Tensor:
    """(1 + w)·cond − w·uncond (Eq. 6). The weights sum to 1, so this works on ε, x̂ or scores alike."""
    return cond + w * (cond - uncond)


def cond_and_uncond(eps_model: EpsModel, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor,
                    null_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ε(z, c) and ε(z, ∅), each (B, *data_shape), from one doubled batch (cond + null) through eps_model."""
    null = torch.full_like(c, null_label)
    return eps_model(torch.cat([z, z]), torch.cat([lam, lam]), torch.cat([c, null])).chunk(2)


class Guided:
    """An eps_model that applies CFG with strength w to `eps_model`, using one doubled batch (cond + null).

    w may be a float or a function of λ of shape (B,) -> (B,) (a guidance schedule or interval).
    """

    def __init__(self, eps_model: EpsModel, w: GuidanceWeight, null_label: int):
        self.eps_model = eps_model
        self.w = w if callable(w) else check_w(w)
        self.null_label = int(null_label)
        self.num_classes = self.null_label

    def weight(self, lam: torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
        """w as a scalar or broadcast against `like` when it depends on λ."""
        return expand_like(self.w(lam), like) if callable(self.w) else self.w

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if not callable(self.w) and self.w == 0:
            return self.eps_model(z, lam, c)
        cond, uncond = cond_and_uncond(self.eps_model, z, lam, c, self.null_label)
        return cfg_combine(cond, uncond, self.weight(lam, cond))


def guided(eps_model: EpsModel, w: GuidanceWeight, null_label: int | None = None) -> Guided:
    """Wrap a conditional eps_model with CFG of strength w (s = 1 + w).

    The null label defaults to `eps_model.num_classes`, as every cfgedu model defines it.
    """
    if null_label is None:
        null_label = getattr(eps_model, "num_classes", None)
        if null_label is None:
            raise ValueError("guided() needs null_label= for a model without a num_classes attribute")
    return Guided(eps_model, w, null_label)


def interval_weight(w: float, lam_low: float, lam_high: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Guidance applied only for λ in [lam_low, lam_high] and 0 elsewhere (Kynkäänniemi et al. 2024)."""
    w = check_w(w)
    if not lam_low < lam_high:
        raise ValueError(f"the guidance interval needs lam_low < lam_high, got {lam_low} and {lam_high}")
    return lambda lam: torch.where((lam >= lam_low) & (lam <= lam_high), w, 0.0).to(lam.dtype)
