"""The continuous-time variance-preserving diffusion in log-SNR λ (Ho & Salimans 2022, Sec. 2).

λ = log(α²/σ²), α² = sigmoid(λ), σ² = sigmoid(−λ); noising runs toward decreasing λ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_finite, check_positive_int
from .tensors import expand_like


def alpha_sigma(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α_λ = sqrt(sigmoid(λ)) and σ_λ = sqrt(sigmoid(−λ)), computed in log space for |λ| up to 20+."""
    return torch.exp(-0.5 * F.softplus(-lam)), torch.exp(-0.5 * F.softplus(lam))


@dataclass(frozen=True)
class LogSNRSchedule:
    """p(λ): λ = −2 log tan(a·u + b), u ~ U[0, 1], truncated to [λ_min, λ_max] (Sec. 2).

    u = 0 is the clean end (λ_max) and u = 1 the noisy end (λ_min).
    """

    lambda_min: float = -20.0
    lambda_max: float = 20.0

    def __post_init__(self):
        check_finite("lambda_min", self.lambda_min)
        check_finite("lambda_max", self.lambda_max)
        if not self.lambda_min < self.lambda_max:
            raise ValueError(f"lambda_min must be < lambda_max, got {self.lambda_min} and {self.lambda_max}")

    @property
    def b(self) -> float:
        return math.atan(math.exp(-self.lambda_max / 2))

    @property
    def a(self) -> float:
        return math.atan(math.exp(-self.lambda_min / 2)) - self.b

    def lam(self, u: torch.Tensor) -> torch.Tensor:
        """λ(u) = −2 log tan(a·u + b)."""
        return -2 * torch.log(torch.tan(self.a * u + self.b))

    def u(self, lam: torch.Tensor) -> torch.Tensor:
        """The inverse map u(λ) = (arctan(e^{−λ/2}) − b) / a."""
        return (torch.atan(torch.exp(-lam / 2)) - self.b) / self.a

    def density(self, lam: torch.Tensor) -> torch.Tensor:
        """p(λ) = sech(λ/2) / (4a) on [λ_min, λ_max], zero outside."""
        inside = (lam >= self.lambda_min) & (lam <= self.lambda_max)
        return torch.where(inside, 1 / (4 * self.a * torch.cosh(lam / 2)), torch.zeros_like(lam))

    def sample_lam(self, n: int, generator: torch.Generator, device=None, dtype=torch.float32) -> torch.Tensor:
        """n draws λ ~ p(λ) (Algorithm 1, step 3), shape (n,)."""
        device = device or generator.device
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return self.lam(u).to(dtype)

    def grid(self, steps: int) -> torch.Tensor:
        """The increasing sampling grid λ_1 = λ_min < ... < λ_T = λ_max at uniformly spaced u, float64 (T,).

        u_t = (T − t)/(T − 1) for t = 1..T; with T = 1 the grid is [λ_min] alone.
        """
        steps = check_positive_int("steps", steps)
        if steps == 1:
            return torch.tensor([self.lambda_min], dtype=torch.float64)
        u = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
        lam = self.lam(u)
        lam[0], lam[-1] = self.lambda_min, self.lambda_max  # exact endpoints despite round-off
        return lam


def q_sample(x: torch.Tensor, lam: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z_λ = α_λ x + σ_λ ε, a draw from q(z_λ|x) = N(α_λ x, σ_λ² I) (Eq. 1)."""
    alpha, sigma = alpha_sigma(lam)
    return expand_like(alpha, x) * x + expand_like(sigma, x) * eps


def transition(lam: torch.Tensor, lam_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z_λ|z_λ') = N((α_λ/α_λ') z_λ', σ²_{λ|λ'} I) for λ < λ' (Eq. 2): returns (α_λ/α_λ', σ²_{λ|λ'}).

    σ²_{λ|λ'} = (1 − e^{λ−λ'}) σ_λ².
    """
    alpha, sigma = alpha_sigma(lam)
    alpha_next, _ = alpha_sigma(lam_next)
    return alpha / alpha_next, -torch.expm1(lam - lam_next) * sigma**2


def posterior(z: torch.Tensor, x: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z_λ'|z_λ, x) = N(μ̃, σ̃² I) for λ < λ' (Eq. 3): returns (μ̃, σ̃²) with σ̃² of shape (B,).

    μ̃ = e^{λ−λ'} (α_λ'/α_λ) z_λ + (1 − e^{λ−λ'}) α_λ' x,   σ̃² = (1 − e^{λ−λ'}) σ_λ'².
    """
    alpha, _ = alpha_sigma(lam)
    alpha_next, sigma_next = alpha_sigma(lam_next)
    keep = torch.exp(lam - lam_next)  # e^{λ−λ'} in (0, 1)
    mean = expand_like(keep * alpha_next / alpha, z) * z + expand_like(-torch.expm1(lam - lam_next) * alpha_next, x) * x
    return mean, -torch.expm1(lam - lam_next) * sigma_next**2
