"""Langevin and MALA correctors toward the density that exact-score CFG follows at each level (SPEC 4.4-4.5).

With exact scores the CFG field is the score of ρ_λ(z|c) ∝ p_λ(z|c)^{1+w} p_λ(z)^{−w}, known in closed form
for the Gaussian mixture, so a Metropolis test is possible. ρ_λ is not the noised tilted target, but
ρ_0 = π_w: corrector steps at every level pull CFG samples toward π_w as the levels approach the data.
Pass a corrector to cfgedu.core.samplers.sample(..., corrector=...).
"""
from __future__ import annotations

import torch

from ..core.checks import check_finite, check_positive_int
from ..core.schedule import alpha_sigma
from .mixture import GaussianMixture


class CFGDensity:
    """log ρ_λ(z|c) = (1 + w) log p_λ(z|c) − w log p_λ(z) (unnormalised) and its gradient −ε̃*/σ.

    The null label c = K gives the marginal log p_λ(z).
    """

    def __init__(self, mixture: GaussianMixture, w: float):
        self.mixture = mixture
        self.w = check_finite("w", w)

    def log_density(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B,) float64."""
        return self.mixture.cfg_log_prob(z, lam, c, self.w)

    def grad(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """∇_z log ρ_λ = (1 + w) ∇log p_λ(z|c) − w ∇log p_λ(z), (B, D) float64."""
        null = torch.full_like(c, self.mixture.num_classes)
        return (1 + self.w) * self.mixture.score(z, lam, c) - self.w * self.mixture.score(z, lam, null)


class LangevinCorrector:
    """K Langevin steps z ← z + h∇log ρ_λ + √(2h) ξ per call, with a Metropolis-Hastings test (MALA) when
    metropolis=True. The step is h = step_scale·(α²ℓ_min + σ²), ℓ_min the smallest data variance, so that
    moves stay a fixed fraction of the width of the noised components at every λ."""

    def __init__(self, mixture: GaussianMixture, w: float, steps: int, step_scale: float = 0.01,
                 metropolis: bool = True):
        self.target = CFGDensity(mixture, w)
        self.steps = check_positive_int("steps", steps)
        if not check_finite("step_scale", step_scale) > 0:
            raise ValueError(f"step_scale must be > 0, got {step_scale}")
        self.step_scale = step_scale
        self.metropolis = bool(metropolis)
        self.smallest_variance = mixture.eigenvalues.min().item()
        self.accepted = self.proposed = 0

    @property
    def acceptance_rate(self) -> float:
        """The share of accepted MALA proposals so far (1.0 for plain Langevin)."""
        return self.accepted / self.proposed if self.proposed else 1.0

    def step_size(self, lam: torch.Tensor) -> torch.Tensor:
        """h(λ) = step_scale·(α²ℓ_min + σ²), shape (B, 1)."""
        alpha, sigma = alpha_sigma(lam.to(torch.float64))
        return (self.step_scale * (alpha**2 * self.smallest_variance + sigma**2))[:, None]

    def _log_proposal(self, to: torch.Tensor, start: torch.Tensor, grad: torch.Tensor, h: torch.Tensor):
        """log q(to | start) up to a constant: −‖to − start − h∇‖²/(4h), (B,)."""
        return -(to - start - h * grad).square().sum(1) / (4 * h[:, 0])

    def value_and_grad(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor):
        """(log ρ_λ(z|c) (B,), ∇ log ρ_λ (B, D)); the log density only when a Metropolis test needs it."""
        value = self.target.log_density(z, lam, c) if self.metropolis else None
        return value, self.target.grad(z, lam, c)

    def step(self, z: torch.Tensor, value, grad: torch.Tensor, lam: torch.Tensor, c: torch.Tensor,
             generator: torch.Generator):
        """One Langevin (or MALA) step on float64 z (B, D) whose value_and_grad are given; returns the new
        (z, value, grad)."""
        h = self.step_size(lam)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        proposal = z + h * grad + (2 * h).sqrt() * noise
        value_new, grad_new = self.value_and_grad(proposal, lam, c)
        if not self.metropolis:
            return proposal, value_new, grad_new
        log_ratio = (value_new - value + self._log_proposal(z, proposal, grad_new, h)
                     - self._log_proposal(proposal, z, grad, h))
        uniform = torch.rand(len(z), generator=generator, device=z.device, dtype=z.dtype)
        accept = uniform.log() < log_ratio  # NaN ratios (overflow far in the tails) are rejected
        self.accepted += int(accept.sum())
        self.proposed += len(z)
        keep = accept[:, None]
        return torch.where(keep, proposal, z), torch.where(accept, value_new, value), torch.where(keep, grad_new, grad)

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The sampler hook: `steps` corrector steps at level λ; returns z in its own dtype."""
        state = z.to(torch.float64)
        value, grad = self.value_and_grad(state, lam, c)
        for _ in range(self.steps):
            state, value, grad = self.step(state, value, grad, lam, c, generator)
        return state.to(z.dtype)
