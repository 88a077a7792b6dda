"""Figure 2 of Ho & Salimans (2022) on cfgedu's three-Gaussian toy, plus what the paper does not show:
samples drawn with Algorithm 2 using the CFG field, against the tilted targets they are said to follow."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..core.checks import check_finite, check_positive_int
from ..core.guidance import EpsModel
from ..core.tensors import make_generator
from .grid import Grid2D, HistogramTV, moments, tilted_densities, tv_between
from .mixture import GaussianMixture
from .sampling import panel_samples


@dataclass
class Panel:
    """One value of w: the target densities (K, n, n), and per sampler its samples (K, N, 2)."""

    w: float
    densities: torch.Tensor
    samples: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Figure2:
    mixture: GaussianMixture
    grid: Grid2D
    histogram: HistogramTV
    panels: list[Panel]
    noise_floors: list[list[float]]  # [panel][class]
    seconds: float = 0.0

    def class_summary(self, panel_index: int, c: int) -> dict:
        panel, untilted = self.panels[panel_index], self.panels[0].densities
        mass, mean, cov = moments(self.grid, panel.densities[c])
        row = {"mass": mass, "mean": mean.tolist(), "cov": cov.tolist(),
               "tv_to_untilted": tv_between(self.grid, panel.densities[c], untilted[c]),
               "tv_noise_floor": self.noise_floors[panel_index][c]}
        for name, samples in panel.samples.items():
            key = "tv_sampler_to_target" if name == "exact" else f"tv_{name}_to_target"
            row[key] = self.histogram(samples[c], panel.densities[c])
        return row

    def to_dict(self) -> dict:
        return {"mixture": self.mixture.to_dict(),
                "grid": {**self.grid.to_dict(), "tv_bins": self.histogram.bins},
                "seconds": self.seconds,
                "panels": [{"w": panel.w,
                            "classes": [self.class_summary(i, c) for c in range(self.mixture.num_classes)]}
                           for i, panel in enumerate(self.panels)]}


def compute_figure2(mixture: GaussianMixture, ws=(1.0, 4.0, 16.0), *, samples_per_class: int = 20_000,
                    steps: int = 256, v: float = 0.3, seed: int = 0, grid: Grid2D | None = None, bins: int = 32,
                    learned: dict[str, EpsModel] | None = None) -> Figure2:
    """Targets for w = 0 and each w in `ws`, exact-ε* CFG samples (and samples from any `learned` models)."""
    ws = [check_finite("w", w) for w in ws]
    samples_per_class = check_positive_int("samples_per_class", samples_per_class)
    start = time.perf_counter()
    grid = grid or Grid2D.covering(mixture)
    histogram = HistogramTV(grid, bins)
    models = {"exact": mixture, **(learned or {})}
    generator = make_generator(seed)
    ws = [0.0, *ws]
    # every panel and class of a model in one batch; float32 is enough for the exact sampler too (its TVs agree with
    # float64 within sampling noise: tests/test_figure2.py)
    samples = {name: panel_samples(model, mixture.num_classes, ws, samples_per_class, steps=steps, v=v,
                                   generator=generator, dtype=torch.float32) for name, model in models.items()}
    panels = [Panel(w, tilted_densities(mixture, grid, w), {name: s[i] for name, s in samples.items()})
              for i, w in enumerate(ws)]
    floors = [[histogram.noise_floor(d, samples_per_class, generator) for d in panel.densities] for panel in panels]
    return Figure2(mixture, grid, histogram, panels, floors, time.perf_counter() - start)
