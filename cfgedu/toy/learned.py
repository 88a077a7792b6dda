"""How close a learned ε_θ gets to the exact ε* of the toy mixture.

The error is E‖ε_θ(z, λ, c) − ε*(z, λ, c)‖² / E‖ε*(z, λ, c)‖² with λ ~ p(λ); "cond" uses the real classes and
z ~ p_λ(z|c), "uncond" the null label ∅ and z ~ p_λ(z) (the same draws, since (x, c) ~ p(x, c)).
"""
from __future__ import annotations

import torch

from ..core.checks import check_finite, check_positive_int
from ..core.guidance import EpsModel
from ..core.schedule import LogSNRSchedule, q_sample
from ..core.tensors import make_generator
from .mixture import GaussianMixture


def eps_relative_errors(eps_model: EpsModel, mixture: GaussianMixture, points: int = 20_000, seed: int = 12345,
                        schedule: LogSNRSchedule = LogSNRSchedule(), chunk: int = 8192,
                        lam: float | None = None) -> dict[str, float]:
    """{"cond", "uncond"}: E‖ε_θ − ε*‖² / E‖ε*‖² on `points` fresh draws of λ ~ p(λ) (or the fixed `lam`),
    (x, c) ~ p(x, c) and ε ~ N(0, I)."""
    points = check_positive_int("points", points)
    generator = make_generator(seed)
    x, c = mixture.sample_labelled(points, generator)
    if lam is None:
        lam = schedule.sample_lam(points, generator, dtype=torch.float64)
    else:
        lam = torch.full((points,), check_finite("lam", lam), dtype=torch.float64)
    z = q_sample(x.double(), lam, torch.randn(points, mixture.dim, generator=generator, dtype=torch.float64))
    null = torch.full_like(c, mixture.num_classes)
    return {name: _relative_error(eps_model, mixture, z, lam, labels, chunk)
            for name, labels in (("cond", c), ("uncond", null))}


def _relative_error(eps_model, mixture, z, lam, labels, chunk) -> float:
    squared_error, squared_target = 0.0, 0.0
    for part in zip(z.split(chunk), lam.split(chunk), labels.split(chunk), strict=True):
        exact = mixture.eps(*part)  # float64 (b, 2)
        with torch.no_grad():
            learned = eps_model(part[0].float(), part[1].float(), part[2]).double()
        squared_error += ((learned - exact) ** 2).sum().item()
        squared_target += (exact**2).sum().item()
    return squared_error / squared_target
