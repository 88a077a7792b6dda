"""The data contract of the training engine: a DataSource hands out the examples of a step, and TensorData is
an in-memory dataset that does so."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..core.tensors import derive_seed, make_generator


class DataSource(Protocol):
    """Training examples as a pure function of (seed, step, micro, rank), so resume is exact.

    A source that slices one global batch per step at offset (micro·world_size + rank)·size gives the same
    step for any split of the batch over processes and micro-steps (see TensorData).
    """

    num_classes: int
    data_shape: tuple[int, ...]

    def batch(self, step: int, micro: int, rank: int, world_size: int, size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The local (x, c): x of shape (size, *data_shape), c of shape (size,) in 0..num_classes-1."""


class DataConfig(Protocol):
    """A frozen dataclass that names a dataset (saved in config.json); build(seed) gives its DataSource."""

    def build(self, seed: int) -> DataSource:
        """The DataSource of a run with this seed."""


def slot_offset(micro: int, rank: int, world_size: int, size: int) -> int:
    """Where the local batch of (micro, rank) starts in the global batch of its step."""
    return (micro * world_size + rank) * size


@dataclass
class TensorData:
    """An in-memory dataset as a DataSource: each step shuffles it with a generator seeded by (seed, step)
    and hands (micro, rank) its slot of that order; the order wraps into a fresh shuffle when a global
    batch is larger than the dataset."""

    x: torch.Tensor  # (N, *data_shape)
    c: torch.Tensor  # (N,) labels in 0..num_classes-1
    num_classes: int
    seed: int = 0

    def __post_init__(self):
        if self.x.ndim < 2 or self.c.shape != (self.x.shape[0],) or self.c.dtype != torch.long:
            raise ValueError(f"TensorData needs x of shape (N, *data_shape) and long labels c of shape (N,); "
                             f"got {tuple(self.x.shape)} and {tuple(self.c.shape)} {self.c.dtype}")
        if self.c.numel() and not 0 <= int(self.c.min()) <= int(self.c.max()) < self.num_classes:
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}")

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def batch(self, step, micro, rank, world_size, size):
        start = slot_offset(micro, rank, world_size, size)
        generator = make_generator(derive_seed(self.seed, step))
        n = self.x.shape[0]
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-(start + size) // n))])
        index = order[start:start + size]
        return self.x[index], self.c[index]
