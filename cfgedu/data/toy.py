"""The 2D three-Gaussian toy as a DataSource: every step draws fresh (x, c) ~ p(x, c) from the exact mixture."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..toy.mixture import GaussianMixture
from ..core.tensors import make_generator
from ..engine.loop import derive_seed


@dataclass
class ToyData:
    """Fresh draws from `mixture` (default: GaussianMixture.three_gaussians()), float32 x (size, 2) and
    labels (size,) ~ π. A batch is drawn with a generator seeded by (seed, step, micro, rank): resume is
    exact and ranks never share draws (a different split of the batch draws different, equally fresh points)."""

    mixture: GaussianMixture = field(default_factory=GaussianMixture.three_gaussians)
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return self.mixture.num_classes

    @property
    def data_shape(self) -> tuple[int]:
        return (self.mixture.dim,)

    def batch(self, step: int, micro: int, rank: int, world_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if size < 1 or world_size < 1 or not 0 <= rank < world_size or step < 0 or micro < 0:
            raise ValueError(f"bad batch request: step={step}, micro={micro}, rank={rank}, "
                             f"world_size={world_size}, size={size}")
        return draw_labelled(self.mixture, size, make_generator(derive_seed(self.seed, step, micro, rank)))


def draw_labelled(mixture: GaussianMixture, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws (x, c) ~ p(x, c): labels from the mixture weights, then x ~ p(x|c); float32 (n, D) and (n,)."""
    labels = torch.multinomial(mixture.weights, n, replacement=True, generator=generator)
    x = torch.empty(n, mixture.dim, dtype=torch.float64)
    for k in range(mixture.num_classes):
        chosen = labels == k
        if chosen.any():
            x[chosen] = mixture.sample(int(chosen.sum()), k, generator)
    return x.float(), labels
