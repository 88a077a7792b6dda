"""Densities of the 2D toy on a regular grid: tilted (guided) targets, moments, exact draws and TV.

The tilted target of Sec. 3.1: π_w(x|c) ∝ p(x|c)·p(c|x)^w ∝ p(x|c)^{1+w} p(x)^{−w}, normalised on the grid.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.checks import check_finite, check_positive_int
from .mixture import GaussianMixture


@dataclass(frozen=True)
class Grid2D:
    """An n×n grid of cell centres over [−half_width, half_width]²; cell side Δ = 2·half_width/n."""

    half_width: float = 4.0
    n: int = 384

    def __post_init__(self):
        check_positive_int("n", self.n)
        if not check_finite("half_width", self.half_width) > 0:
            raise ValueError(f"half_width must be > 0, got {self.half_width}")

    @classmethod
    def covering(cls, mixture: GaussianMixture, n: int = 384, stds: float = 5.0) -> Grid2D:
        """A grid over ±(max‖μ‖ + stds·τ), τ the largest component std (SPEC 4.2: Δ ≤ τ/8 at n ≈ 400)."""
        tau = mixture.eigenvalues.max().sqrt().item()
        return cls(half_width=mixture.means.norm(dim=1).max().item() + stds * tau, n=n)

    @property
    def cell(self) -> float:
        return 2 * self.half_width / self.n

    @property
    def axis(self) -> torch.Tensor:
        """Cell-centre coordinates, float64 (n,)."""
        return -self.half_width + self.cell * (torch.arange(self.n, dtype=torch.float64) + 0.5)

    def points(self) -> torch.Tensor:
        """All cell centres as (n*n, 2), row-major with y as the slow index (so reshape gives [y, x])."""
        y, x = torch.meshgrid(self.axis, self.axis, indexing="ij")
        return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)

    def to_dict(self) -> dict:
        return {"half_width": self.half_width, "n": self.n, "cell": self.cell}


def normalize(log_density: torch.Tensor, cell: float) -> torch.Tensor:
    """exp(log_density − max) / (sum·Δ²): a density that integrates to 1 on the grid."""
    density = torch.exp(log_density - log_density.max())
    return density / (density.sum() * cell**2)


def cfg_densities(mixture: GaussianMixture, grid: Grid2D, w: float, lam: float | None = None) -> torch.Tensor:
    """ρ_λ(z|c) ∝ p_λ(z|c)^{1+w} p_λ(z)^{−w} for every class, normalised on the grid, float64 (K, n, n) [c, y, x]: the
    densities whose scores exact-score CFG follows at level λ (None: the data level, where ρ is π_w)."""
    w, points = check_finite("w", w), grid.points()
    lam_batch = None if lam is None else torch.full((len(points),), float(lam), dtype=torch.float64)
    return torch.stack([
        normalize(mixture.cfg_log_prob(points, lam_batch, torch.full((len(points),), c), w), grid.cell)
        .reshape(grid.n, grid.n) for c in range(mixture.num_classes)])


def tilted_densities(mixture: GaussianMixture, grid: Grid2D, w: float) -> torch.Tensor:
    """The tilted targets π_w(x|c) ∝ p(x|c)·p(c|x)^w ∝ p(x|c)^{1+w} p(x)^{−w} of every class (Figure 2's guided
    conditionals), normalised on the grid, float64 (K, n, n) [c, y, x]."""
    return cfg_densities(mixture, grid, w)


class TiltedTargets:
    """tilted_densities(mixture, grid, w) computed once per w: call it with w for the (K, n, n) targets."""

    def __init__(self, mixture: GaussianMixture, grid: Grid2D):
        self.mixture, self.grid = mixture, grid
        self._by_w: dict[float, torch.Tensor] = {}

    def __call__(self, w: float) -> torch.Tensor:
        if w not in self._by_w:
            self._by_w[w] = tilted_densities(self.mixture, self.grid, w)
        return self._by_w[w]


def mix(mixture: GaussianMixture, densities: torch.Tensor) -> torch.Tensor:
    """Σ_c π_c densities[c]: the mixture of guided conditionals shown in Figure 2, (n, n)."""
    return torch.einsum("k,kyx->yx", mixture.class_weights, densities)


def moments(grid: Grid2D, density: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mass, mean (2,) and covariance (2, 2) of a grid density (n, n)."""
    masses = density.reshape(-1) * grid.cell**2  # (n*n,)
    points = grid.points()
    mass = masses.sum()
    mean = masses @ points / mass
    centred = points - mean
    return mass.item(), mean, (centred * masses[:, None]).T @ centred / mass


def grid_values(field: Callable[[torch.Tensor], torch.Tensor], grid: Grid2D) -> torch.Tensor:
    """The field at the grid's cell centres, float64 (n, n, 2) [y, x, component]."""
    with torch.no_grad():
        return field(grid.points()).detach().to(torch.float64).reshape(grid.n, grid.n, 2)


def jacobian_fd(values: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    """J by central differences on the grid, second-order one-sided at the edges (so the error is O(Δ²)
    everywhere; needs n >= 3), (n·n, 2, 2) row-major like grid.points()."""
    d_dy, d_dx = torch.gradient(values, spacing=grid.cell, dim=(0, 1), edge_order=2)  # (n, n, 2) each
    return torch.stack([d_dx, d_dy], dim=-1).reshape(-1, 2, 2)  # J[..., i, j] = ∂f_i/∂z_j


def tv_between(grid: Grid2D, p: torch.Tensor, q: torch.Tensor) -> float:
    """Total variation ½∫|p − q| between two grid densities."""
    return 0.5 * ((p - q).abs().sum() * grid.cell**2).item()


def sample_from_grid(grid: Grid2D, density: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n exact draws from a grid density by inverse CDF over cells plus a uniform jitter within each cell, (n, 2)."""
    cells = torch.multinomial(density.reshape(-1), n, replacement=True, generator=generator)
    jitter = (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * grid.cell
    return grid.points()[cells] + jitter


@dataclass(frozen=True)
class HistogramTV:
    """TV between samples and a grid density, measured on a coarse `bins`×`bins` histogram of the grid.

    Samples outside the grid count as mass the target does not have.
    """

    grid: Grid2D
    bins: int = 32

    def __post_init__(self):
        if self.grid.n % self.bins:
            raise ValueError(f"histogram bins ({self.bins}) must divide the grid size ({self.grid.n})")

    def target_masses(self, density: torch.Tensor) -> torch.Tensor:
        """Grid cell masses summed into bins, (bins, bins) [y, x]."""
        k = self.grid.n // self.bins
        masses = density * self.grid.cell**2
        return masses.reshape(self.bins, k, self.bins, k).sum(dim=(1, 3))

    def sample_masses(self, samples: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The fraction of samples in each bin (bins, bins) and the fraction outside the grid."""
        index = torch.floor((samples.to(torch.float64) + self.grid.half_width) / (2 * self.grid.half_width) * self.bins)
        inside = ((index >= 0) & (index < self.bins)).all(dim=1)
        flat = (index[inside, 1] * self.bins + index[inside, 0]).long()
        counts = torch.bincount(flat, minlength=self.bins**2).to(torch.float64)
        return counts.reshape(self.bins, self.bins) / samples.shape[0], 1 - inside.double().mean().item()

    def __call__(self, samples: torch.Tensor, density: torch.Tensor) -> float:
        observed, outside = self.sample_masses(samples)
        return 0.5 * ((observed - self.target_masses(density)).abs().sum().item() + outside)

    def noise_floor(self, density: torch.Tensor, n: int, generator: torch.Generator) -> float:
        """The TV of n exact draws from the density itself: what sampling noise alone gives."""
        return self(sample_from_grid(self.grid, density, n, generator), density)
