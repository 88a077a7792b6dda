"""The ideal tilted sampler: the exact ε of the correctly noised tilted target, by quadrature (SPEC 4.3).

CFG with exact scores follows ρ_λ ∝ p_λ(z|c)^{1+w} p_λ(z)^{−w}, which is not the noised target
π_{w,λ}(z) = ∫ π_w(x|c) N(z; αx, σ²I) dx (SPEC 4.4). Here π_w(x|c) is tabulated on a grid (masses P[j, i]
at nodes (x_i, y_j)) and, since the noise kernel is separable,

    π_{w,λ}(z) ∝ Σ_ij P[j,i] φ_σ(z₁ − α x_i) φ_σ(z₂ − α y_j),   E[x|z] uses the same sums with x_i or y_j,
    ε_ideal(z, λ, c) = (z − α E[x|z]) / σ,

which is two matrix products per class. The sums are trusted while σ/α is at least about one grid cell Δ
(SPEC 4.3 says 2Δ; by Poisson summation the quadrature error of a Gaussian kernel of width s on a grid of
step Δ is ~exp(−2π²s²/Δ²), 3e−9 at s = Δ). Below `min_noise_cells`·Δ the model denoises as if σ/α were
that, and `schedule()` stops the sampler there, so its final x̂ is one Tweedie jump E[x|z] from that level
(which shrinks each variance by about (min_noise_cells·Δ)²).
"""
from __future__ import annotations

import math

import torch

from ..core.checks import check_finite, check_labels
from ..core.parameterization import x_to_eps
from ..core.schedule import LogSNRSchedule, alpha_sigma
from .grid import Grid2D, mix, tilted_densities
from .mixture import GaussianMixture


class IdealTiltedModel:
    """eps_model(z, lam, c) of the noised tilted targets π_{w,λ}(·|c); c = K gives the noised mixture
    Σ_c π_c π_w(x|c) (Figure 2's panel). Float64 inside; returns z's dtype."""

    def __init__(self, mixture: GaussianMixture, w: float, grid: Grid2D | None = None, min_noise_cells: float = 1.0):
        if mixture.dim != 2:
            raise ValueError(f"the quadrature ideal model needs a 2D mixture, got D = {mixture.dim}")
        self.w = check_finite("w", w)
        self.grid = grid or Grid2D.covering(mixture, n=192)
        if not check_finite("min_noise_cells", min_noise_cells) > 0:
            raise ValueError(f"min_noise_cells must be > 0, got {min_noise_cells}")
        self.num_classes = mixture.num_classes
        densities = tilted_densities(mixture, self.grid, self.w)  # (K, n, n) [c, y, x]
        self.masses = torch.cat([densities, mix(mixture, densities)[None]]) * self.grid.cell**2  # (K+1, n, n)
        self.min_ratio = min_noise_cells * self.grid.cell  # smallest trusted σ/α

    @property
    def lambda_max(self) -> float:
        """The log-SNR where σ/α = min_ratio: λ = −2 log(min_ratio)."""
        return -2 * math.log(self.min_ratio)

    def schedule(self, lambda_min: float = -20.0) -> LogSNRSchedule:
        """The sampling schedule ending where the quadrature stops being trusted (the Tweedie jump)."""
        return LogSNRSchedule(lambda_min, self.lambda_max)

    def noised_density(self, grid: Grid2D, lam: float, c: int) -> torch.Tensor:
        """π_{w,λ}(z|c), π_w pushed through the forward process to level λ, on `grid` (c = K: the mixture of the
        classes), float64 (n, n) [y, x]: Σ_ij P[j, i] φ_σ(z₂ − α y_j) φ_σ(z₁ − α x_i), two matrix products."""
        alpha, sigma = alpha_sigma(torch.tensor(float(check_finite("lam", lam)), dtype=torch.float64))
        offsets = grid.axis[:, None] - alpha * self.grid.axis[None]  # (n_out, n): z − α·node along one axis
        kernel = torch.exp(-offsets.square() / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
        return kernel @ self.masses[c] @ kernel.T

    def _weights(self, coordinate: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """exp(−(z/α − node)²/(2(σ/α)²)) over the grid axis, scaled so each row's maximum is 1, (B, n)."""
        log_w = -(coordinate[:, None] - self.grid.axis[None]).square() / (2 * ratio[:, None] ** 2)
        return torch.exp(log_w - log_w.max(dim=1, keepdim=True).values)

    def _posterior_mean(self, y: torch.Tensor, ratio: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
        """E[x | z] for points y = z/α (B, 2) with noise σ/α (B,) under grid masses (n, n) [y, x], (B, 2)."""
        wx, wy = self._weights(y[:, 0], ratio), self._weights(y[:, 1], ratio)  # (B, n) each
        over_y = wx @ masses.T  # (B, n_y): Σ_i P[j, i] wx[b, i]
        over_x = wy @ masses  # (B, n_x): Σ_j P[j, i] wy[b, j]
        norm = (over_y * wy).sum(1).clamp(min=1e-300)  # (B,)
        axis = self.grid.axis
        return torch.stack([(over_x * wx) @ axis, (over_y * wy) @ axis], dim=1) / norm[:, None]

    def x_hat(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """E[x | z_λ, c] under π_w(x|c), float64 (B, 2)."""
        if z.ndim != 2 or z.shape[1] != 2 or lam.shape != (z.shape[0],):
            raise ValueError(f"z must be (B, 2) and lam (B,), got {tuple(z.shape)} and {tuple(lam.shape)}")
        check_labels(c, self.num_classes, batch=z.shape[0])
        alpha, sigma = alpha_sigma(lam.to(torch.float64))
        y = z.to(torch.float64) / alpha[:, None]  # z/α = x + (σ/α) ε
        ratio = (sigma / alpha).clamp(min=self.min_ratio)
        out = torch.empty_like(y)
        for label in c.unique().tolist():
            rows = c == label
            out[rows] = self._posterior_mean(y[rows], ratio[rows], self.masses[label])
        return out

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """ε_ideal = (z − α E[x|z]) / σ."""
        return x_to_eps(z.to(torch.float64), self.x_hat(z, lam, c), lam.to(torch.float64)).to(z.dtype)
