"""The paper's image metrics on extracted features: FID, IS, class accuracy and the real-data FID floor.

Features are kept as running float64 sums (FeatureStats), so batches stream through and the shards of several
torch.distributed ranks pool exactly (an all-reduce of the sums). FID is the Fréchet distance between Gaussian fits
of the features (Heusel et al. 2017); IS = exp(E_x KL(p(y|x) ‖ p(y))) of the softmax (Salimans et al. 2016), the mean
and std over splits. The formulas themselves are cfgedu.toy.metrics', shared with the 2D toy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..core.checks import check_positive_int
from ..toy.metrics import frechet_gaussians
from ..toy.metrics import inception_score as probs_inception_score

Moments = tuple[torch.Tensor, torch.Tensor]  # mean (D,) and covariance (D, D) of a feature set, float64


# ---- processes --------------------------------------------------------------------------------------------------

def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_in_order(rows: torch.Tensor, count: int) -> torch.Tensor:
    """Every rank's rows (n_r, K) interleaved back into the global order, where item i lives on rank i mod W."""
    _, world_size = rank_and_world()
    if world_size == 1:
        return rows
    padded = torch.zeros(-(-count // world_size), *rows.shape[1:], dtype=rows.dtype)  # the largest shard
    padded[: len(rows)] = rows
    device = _collective_device()
    gathered = [torch.empty_like(padded, device=device) for _ in range(world_size)]
    dist.all_gather(gathered, padded.to(device))
    return torch.stack([part.cpu() for part in gathered], dim=1).flatten(0, 1)[:count]


# ---- feature statistics -----------------------------------------------------------------------------------------

@dataclass
class FeatureStats:
    """Running float64 sums of features: count, Σx (D,) and Σxxᵀ (D, D); mean and unbiased covariance."""

    count: int = 0
    total: torch.Tensor | None = None
    outer: torch.Tensor | None = None

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureStats:
        return cls().update(features)

    def _zeros(self, dim: int) -> None:
        if self.total is None:
            self.total = torch.zeros(dim, dtype=torch.float64)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> FeatureStats:
        """Add a batch of features (B, D)."""
        x = features.detach().to("cpu", torch.float64)
        return self.merge(FeatureStats(x.shape[0], x.sum(0), x.T @ x))

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Pool the sums of another shard."""
        if other.count:
            self._zeros(other.total.shape[0])
            self.count += other.count
            self.total += other.total
            self.outer += other.outer
        return self

    def all_reduce(self, dim: int | None = None) -> FeatureStats:
        """The sums pooled over every rank (in place; a rank without samples needs `dim`)."""
        if rank_and_world()[1] == 1:
            return self
        self._zeros(dim if self.total is None else self.total.shape[0])
        dim = self.total.shape[0]
        sums = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64), self.total, self.outer.flatten()])
        sums = sums.to(_collective_device())
        dist.all_reduce(sums)
        sums = sums.cpu()
        self.count, self.total, self.outer = int(sums[0].item()), sums[1:1 + dim], sums[1 + dim:].view(dim, dim)
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def cov(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return (self.outer - self.count * torch.outer(self.mean, self.mean)) / (self.count - 1)

    def moments(self) -> Moments:
        return self.mean, self.cov


# ---- the metrics ------------------------------------------------------------------------------------------------

def frechet_distance(stats: FeatureStats, reference: Moments) -> float:
    """FID = ‖m − m_r‖² + tr(C + C_r − 2 (C^½ C_r C^½)^½) between the fit of `stats` and reference (mean, cov)."""
    mean, cov = reference
    if mean.shape != stats.mean.shape:
        raise ValueError(f"features have dimension {stats.mean.shape[0]} but the reference has {mean.shape[0]}: "
                         f"compute both with the same extractor")
    return frechet_gaussians(stats.mean, stats.cov, mean, cov)


def inception_score(logits: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """Mean and (population) std of the IS of logits (N, K) over `splits` strided splits: split j holds samples j,
    j + splits, ..., so each split sees every class when the samples come in class blocks."""
    check_positive_int("splits", splits)
    if logits.shape[0] < splits:
        raise ValueError(f"need at least {splits} samples for {splits} IS splits, got {logits.shape[0]}")
    probs = torch.softmax(logits.double(), dim=1)
    scores = torch.tensor([probs_inception_score(probs[j::splits]) for j in range(splits)], dtype=torch.float64)
    return scores.mean().item(), scores.std(correction=0).item()


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    """The fraction of images classified as their requested label, overall and per class (nan for an absent one)."""
    hit = (logits.argmax(1) == labels).double()
    per_class = [hit[labels == k].mean().item() if (labels == k).any() else float("nan") for k in range(num_classes)]
    return hit.mean().item(), per_class


def accuracy_columns(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """{"accuracy", "min_class_accuracy", "per_class_accuracy"}: the accuracy columns of an eval.json row."""
    accuracy, per_class = class_accuracy(logits, labels, num_classes)
    return {"accuracy": accuracy, "min_class_accuracy": float(np.nanmin(per_class)), "per_class_accuracy": per_class}


def fid_floor(pool_features: torch.Tensor, reference: Moments, n: int, repeats: int,
              generator: torch.Generator) -> tuple[float, float]:
    """Mean and std of the FID of `repeats` random n-image subsets of real features against `reference`.

    This is the real-data floor with the same sample-size bias as an n-sample FID (subsets are drawn without
    replacement when the pool is large enough).
    """
    n, repeats = check_positive_int("n", n), check_positive_int("repeats", repeats)
    size = len(pool_features)

    def subset() -> torch.Tensor:
        if n <= size:
            return pool_features[torch.randperm(size, generator=generator)[:n]]
        return pool_features[torch.randint(size, (n,), generator=generator)]

    draws = [frechet_distance(FeatureStats.of(subset()), reference) for _ in range(repeats)]
    return float(np.mean(draws)), float(np.std(draws))


def nearest_distances(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each image (N, *shape) to its nearest image of `reference` (M, *shape), (N,): how far a
    sample is from being a copy of a training image."""
    flat, references = images.reshape(len(images), -1).double(), reference.reshape(len(reference), -1).double()
    return torch.cdist(flat, references).min(1).values
