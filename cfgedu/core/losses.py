"""Algorithm 1 of Ho & Salimans (2022): joint conditional/unconditional training as an ε-MSE loss."""
from __future__ import annotations

import torch

from .checks import check_in_range, check_labels
from .guidance import EpsModel
from .schedule import LogSNRSchedule, q_sample


def drop_labels(c: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label ∅ = null_label with probability p_uncond (Algorithm 1, step 2)."""
    p_uncond = check_in_range("p_uncond", p_uncond, 0.0, 1.0)
    drop = torch.rand(c.shape, generator=generator, device=c.device) < p_uncond
    return torch.where(drop, torch.full_like(c, null_label), c)


def diffusion_loss(eps_model: EpsModel, x: torch.Tensor, c: torch.Tensor, *, p_uncond: float, num_classes: int,
                   generator: torch.Generator, schedule: LogSNRSchedule = LogSNRSchedule()) -> torch.Tensor:
    """Mean of ‖ε_θ(z_λ, c̃) − ε‖² over the batch, with λ ~ p(λ), c̃ = c dropped to ∅ w.p. p_uncond.

    x: (B, *data_shape); c: (B,) labels in 0..num_classes-1. The mean runs over every element.
    """
    check_labels(c, num_classes, batch=x.shape[0], allow_null=False)
    c = drop_labels(c, p_uncond, num_classes, generator)
    lam = schedule.sample_lam(x.shape[0], generator, device=x.device, dtype=x.dtype)  # (B,)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    z = q_sample(x, lam, eps)
    return torch.mean((eps_model(z, lam, c) - eps) ** 2)
