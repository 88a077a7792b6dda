"""Algorithm 2 of Ho & Salimans (2022) and a deterministic DDIM alternative, for any eps_model.

Sampling runs on an increasing λ grid from λ_min (noise) to λ_max and returns x̂ at λ_max. All noise
comes from the `generator` argument. A guided model is just another eps_model (see guidance.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_in_range, check_labels, check_positive_int
from .guidance import EpsModel
from .parameterization import eps_to_x, x_to_eps
from .schedule import LogSNRSchedule, alpha_sigma, posterior, transition
from .tensors import expand_like

METHODS = ("ancestral", "ddim")
Corrector = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def ancestral_step(z: torch.Tensor, x_hat: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor,
                   v: float, generator: torch.Generator, noise_scale: float = 1.0) -> torch.Tensor:
    """z' ~ N(μ̃_{λ'|λ}(z, x̂), (σ̃²_{λ'|λ})^{1−v} (σ²_{λ|λ'})^v) (Eq. 4), the noise's std times noise_scale."""
    mean, posterior_var = posterior(z, x_hat, lam, lam_next)
    _, forward_var = transition(lam, lam_next)
    std = noise_scale * (posterior_var ** (1 - v) * forward_var ** v).sqrt()
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return mean + expand_like(std, z) * noise


def ddim_step(z: torch.Tensor, x_hat: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor) -> torch.Tensor:
    """The deterministic DDIM update z' = α' x̂ + σ' ε̂ with ε̂ = (z − α x̂)/σ."""
    alpha_next, sigma_next = alpha_sigma(lam_next)
    eps = x_to_eps(z, x_hat, lam)
    return expand_like(alpha_next, z) * x_hat + expand_like(sigma_next, z) * eps


def denoise(eps_model: EpsModel, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor,
            clip_x: float | None = None) -> torch.Tensor:
    """x̃ = (z − σ ε̃)/α, optionally clipped to [−clip_x, clip_x]; lam is (B,), or (1,) for one level for all."""
    x_hat = eps_to_x(z, eps_model(z, lam.expand(len(z)), c), lam)
    return x_hat.clamp(-clip_x, clip_x) if clip_x is not None else x_hat


def sample(eps_model: EpsModel, data_shape: tuple[int, ...], c: torch.Tensor, *, generator: torch.Generator,
           schedule: LogSNRSchedule = LogSNRSchedule(), steps: int = 256, v: float = 0.3,
           method: str = "ancestral", dtype: torch.dtype = torch.float32, clip_x: float | None = None,
           num_classes: int | None = None, trajectory: bool = False, progress: bool = False,
           corrector: Corrector | None = None, noise_scale: float = 1.0):
    """Draw len(c) samples with Algorithm 2 (or DDIM) and return x̂ at λ_max, shape (B, *data_shape).

    With trajectory=True also returns the list of z_t, one (B, *data_shape) tensor per grid point.
    Labels are checked against num_classes (or eps_model.num_classes) when known.
    `corrector(z, lam, c, generator) -> z`, if given, is applied after every step at the λ the new state
    belongs to (λ_{t+1}, and λ_T for the final x̂), e.g. Langevin/MALA steps (see cfgedu.toy.correctors).
    """
    steps = check_positive_int("steps", steps)
    v = check_in_range("v", v, 0.0, 1.0)
    noise_scale = check_in_range("noise_scale", noise_scale, 0.0, math.inf)
    check_choice("method", method, METHODS)
    num_classes = num_classes if num_classes is not None else getattr(eps_model, "num_classes", None)
    if num_classes is not None:
        check_labels(c, num_classes)
    device = generator.device
    c = c.to(device)
    grid = schedule.grid(steps).to(device=device, dtype=dtype)  # (T,) increasing λ
    z = torch.randn((len(c), *data_shape), generator=generator, device=device, dtype=dtype)
    path = [z]
    for t in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
        lam, lam_next = grid[t:t + 1], grid[t + 1:t + 2]  # (1,): the step's coefficients once, not once per sample
        x_hat = denoise(eps_model, z, lam, c, clip_x)
        if t == steps - 1:
            z = x_hat
        elif method == "ancestral":
            z = ancestral_step(z, x_hat, lam, lam_next, v, generator, noise_scale)
        else:
            z = ddim_step(z, x_hat, lam, lam_next)
        if corrector is not None:
            z = corrector(z, grid[min(t + 1, steps - 1)].expand(len(c)), c, generator)
        path.append(z)
    return (z, path) if trajectory else z
