"""Algorithm 1 of Ho & Salimans (2022): joint conditional/unconditional training as an ε-MSE loss.

A step draws its noise first (which labels drop to ∅, λ ~ p(λ), ε ~ N(0, I)) and then takes the loss, so the
training engine can draw the noise of a whole global batch once and give each process and micro-batch its slice.
The noisy classifier of classifier guidance trains on the same noise with a cross-entropy (`classifier_loss`);
`loss_for` picks a network's loss by its `objective`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_in_range, check_labels
from .guidance import Classifier, EpsModel
from .schedule import LogSNRSchedule, q_sample


@dataclass
class StepNoise:
    """Algorithm 1's draws for a batch: labels dropped to ∅ (step 2), λ ~ p(λ) (step 3), ε ~ N(0, I) (step 4)."""

    drop: torch.Tensor  # (B,) bool
    lam: torch.Tensor  # (B,)
    eps: torch.Tensor  # (B, *data_shape)

    def slice(self, start: int, size: int) -> StepNoise:
        return StepNoise(self.drop[start:start + size], self.lam[start:start + size], self.eps[start:start + size])


def draw_noise(batch: int, data_shape: tuple[int, ...], p_uncond: float, generator: torch.Generator,
               schedule: LogSNRSchedule = LogSNRSchedule(), dtype: torch.dtype = torch.float32) -> StepNoise:
    """Steps 2-4 of Algorithm 1 for `batch` examples, on the generator's device."""
    p_uncond = check_in_range("p_uncond", p_uncond, 0.0, 1.0)
    device = generator.device
    drop = torch.rand(batch, generator=generator, device=device) < p_uncond
    lam = schedule.sample_lam(batch, generator, device=device, dtype=dtype)
    eps = torch.randn((batch, *data_shape), generator=generator, device=device, dtype=dtype)
    return StepNoise(drop, lam, eps)


def drop_labels(c: torch.Tensor, drop: torch.Tensor, null_label: int) -> torch.Tensor:
    """Step 2 of Algorithm 1: c̃ = ∅ (null_label) where `drop`, else c."""
    return torch.where(drop, torch.full_like(c, null_label), c)


def algorithm1_loss(eps_model: EpsModel, x: torch.Tensor, c: torch.Tensor, noise: StepNoise,
                    null_label: int) -> torch.Tensor:
    """Steps 5-6: the mean of ‖ε_θ(z_λ, c̃) − ε‖² over all elements, z_λ = α_λ x + σ_λ ε (Eq. 5), in float32."""
    z = q_sample(x, noise.lam, noise.eps)
    return torch.mean((eps_model(z, noise.lam, drop_labels(c, noise.drop, null_label)).float() - noise.eps) ** 2)


def classifier_loss(classifier: Classifier, x: torch.Tensor, c: torch.Tensor, noise: StepNoise,
                    null_label: int) -> torch.Tensor:
    """The cross-entropy −log p_φ(c | z_λ, λ) of a noisy classifier (logits = classifier(z, λ)) on Algorithm 1's
    forward process z_λ = α_λ x + σ_λ ε, in float32. Labels are never dropped (noise.drop is ignored): null_label
    is only checked to lie beyond the classes."""
    check_labels(c, null_label, allow_null=False)
    z = q_sample(x, noise.lam, noise.eps)
    return F.cross_entropy(classifier(z, noise.lam).float(), c)


# A network's training loss by its `objective` attribute; all take (model, x, c, noise, null_label).
LOSSES: dict[str, Callable[..., torch.Tensor]] = {"eps": algorithm1_loss, "classifier": classifier_loss}


def loss_for(model) -> Callable[..., torch.Tensor]:
    """The loss in LOSSES that trains `model`, by its `objective` attribute ("eps" when it has none)."""
    objective = getattr(model, "objective", "eps")
    if objective not in LOSSES:
        raise ValueError(f"{type(model).__name__} has objective {objective!r}; known objectives: {', '.join(LOSSES)}")
    return LOSSES[objective]


def diffusion_loss(eps_model: EpsModel, x: torch.Tensor, c: torch.Tensor, *, p_uncond: float, num_classes: int,
                   generator: torch.Generator, schedule: LogSNRSchedule = LogSNRSchedule()) -> torch.Tensor:
    """Algorithm 1's loss on one batch: x (B, *data_shape), c (B,) labels in 0..num_classes-1."""
    check_labels(c, num_classes, batch=x.shape[0], allow_null=False)
    noise = draw_noise(x.shape[0], tuple(x.shape[1:]), p_uncond, generator, schedule, x.dtype)
    return algorithm1_loss(eps_model, x, c, noise, num_classes)
