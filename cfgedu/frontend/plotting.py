"""Matplotlib helpers: each takes an ax and data and returns the ax (or the artist it draws)."""
from __future__ import annotations

import torch

from ..toy.grid import Grid2D


def _bare(ax, title: str | None):
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def density_image(ax, grid: Grid2D, density: torch.Tensor, title: str | None = None, cmap: str = "magma",
                  vmax: float | None = None):
    """Show a grid density (n, n) [y, x] as an image over the grid's extent; returns the AxesImage."""
    h = grid.half_width
    image = ax.imshow(density.numpy(), origin="lower", extent=(-h, h, -h, h), cmap=cmap, vmin=0, vmax=vmax,
                      interpolation="bilinear")
    _bare(ax, title)
    return image


def histogram_density(grid: Grid2D, samples: torch.Tensor, bins: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """A (bins, bins) [y, x] histogram density of 2D samples over the grid's extent.

    samples: (N, 2), or (K, N, 2) with `weights` (K,) mixing the per-class histograms.
    """
    h = grid.half_width
    if samples.ndim == 3:
        return sum(wk * histogram_density(grid, s, bins) for wk, s in zip(weights.tolist(), samples))
    counts, _ = torch.histogramdd(samples[:, [1, 0]].double(), bins=[bins, bins], range=[-h, h, -h, h])
    return counts / (samples.shape[0] * (2 * h / bins) ** 2)


def sample_histogram(ax, grid: Grid2D, samples: torch.Tensor, bins: int = 128, weights=None,
                     title: str | None = None, cmap: str = "magma"):
    """Show samples (N, 2) or (K, N, 2) as a histogram image on the grid's extent; returns the AxesImage."""
    coarse = Grid2D(grid.half_width, bins)
    return density_image(ax, coarse, histogram_density(grid, samples, bins, weights), title=title, cmap=cmap)
