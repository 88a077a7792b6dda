"""Sample paths of the toy from noise to data: where guidance pushes samples, and when.

Every w starts from the same noise z_1, so two paths of one sample differ by guidance alone. Behind the paths at
level λ sits ρ_λ ∝ p_λ(z|c)^{1+w} p_λ(z)^{−w} mixed over classes: the noised density whose score exact-score CFG
follows there (p_λ itself at w = 0).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.guidance import EpsModel
from ..core.guidance_methods import Guidance
from ..core.samplers import sample
from ..core.schedule import LogSNRSchedule
from ..core.tensors import make_generator
from .grid import Grid2D, cfg_densities, mix
from .mixture import GaussianMixture


@dataclass(frozen=True)
class Paths:
    """levels (F,): the λ of each frame, the last one the returned x̂ at λ_max; points (len(ws), F, K, n, 2)."""

    ws: tuple[float, ...]
    levels: torch.Tensor
    points: torch.Tensor


def guided_paths(eps_model: EpsModel, num_classes: int, ws: Sequence[float], per_class: int, *, steps: int,
                 seed: int = 0, method: str = "ddim", v: float = 0.3, guidance: Guidance = Guidance()) -> Paths:
    """The whole path of per_class samples of every class for each w, all from the same z_1 (and, for ancestral
    sampling, the same noise); float64."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    runs = []
    for w in ws:
        model, options = guidance.wrap(eps_model, float(w), null_label=num_classes)
        with torch.no_grad():
            _, path = sample(model, (2,), labels, generator=make_generator(seed), steps=steps, method=method, v=v,
                             dtype=torch.float64, trajectory=True, **options)
        runs.append(torch.stack(path).reshape(len(path), num_classes, per_class, 2))
    grid = LogSNRSchedule().grid(steps)
    return Paths(tuple(float(w) for w in ws), torch.cat([grid, grid[-1:]]), torch.stack(runs))


def level_densities(mixture: GaussianMixture, grid: Grid2D, w: float, levels: torch.Tensor) -> torch.Tensor:
    """Σ_c π_c ρ_λ(z|c) on the grid at every level, (F, n, n) [frame, y, x]."""
    return torch.stack([mix(mixture, cfg_densities(mixture, grid, w, float(lam))) for lam in levels])
