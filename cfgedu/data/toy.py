"""The 2D three-Gaussian toy as a DataSource: every step draws fresh (x, c) ~ p(x, c) from the exact mixture."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.tensors import derive_seed, make_generator
from ..toy.mixture import GaussianMixture
from .source import TensorData


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
        x, c = self.mixture.sample_labelled(size, make_generator(derive_seed(self.seed, step, micro, rank)))
        return x.float(), c


@dataclass(frozen=True)
class ToyMixture:
    """The three-Gaussian toy as a data config: build(seed) gives ToyData, fresh draws (x, c) ~ p(x, c) every step."""

    radius: float = 1.0  # circumradius of the triangle of means
    std: float = 0.6  # isotropic standard deviation of each class

    def build(self, seed: int) -> ToyData:
        return ToyData(GaussianMixture.three_gaussians(self.radius, self.std), seed)


@dataclass(frozen=True)
class MixtureSamples:
    """A fixed set of draws from the three-Gaussian toy mixture: a tiny dataset for smoke runs and tests."""

    per_class: int = 128
    data_seed: int = 0

    def build(self, seed: int) -> TensorData:
        mixture, generator = GaussianMixture.three_gaussians(), make_generator(self.data_seed)
        x = torch.cat([mixture.sample(self.per_class, c, generator) for c in range(mixture.num_classes)])
        c = torch.arange(mixture.num_classes).repeat_interleave(self.per_class)
        return TensorData(x.float(), c, mixture.num_classes, seed)
