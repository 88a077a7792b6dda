"""The paper's image metrics with a pluggable feature extractor: FID, IS, class accuracy, and the FID floor.

A feature extractor is any function images (N, C, H, W) -> (features (N, D), logits (N, K)): the digits
CNN (classifier.py) at toy scale, Inception for ImageNet. FID is the Fréchet distance between Gaussian
fits of the features (Heusel et al. 2017); IS = exp(E_x KL(p(y|x) ‖ p(y))) on the softmax (Salimans et al. 2016).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ..core.checks import check_positive_int
from ..toy.metrics import frechet_gaussians, gaussian_fit
from ..toy.metrics import inception_score as metrics_inception_score

FeatureExtractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and covariance (D, D) of a feature set, float64."""

    mean: torch.Tensor
    cov: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor) -> "GaussianStats":
        return cls(*gaussian_fit(features.detach().cpu()))


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """FID = ‖m_a − m_b‖² + tr(C_a + C_b − 2 (C_a^½ C_b C_a^½)^½) (cfgedu.toy.metrics, shared with the 2D toy)."""
    return frechet_gaussians(a.mean, a.cov, b.mean, b.cov)


def inception_score(logits: torch.Tensor) -> float:
    """IS = exp(E_x KL(p(y|x) ‖ p̂(y))) of the classifier's softmax, p̂(y) its mean over the set (one split)."""
    return metrics_inception_score(torch.softmax(logits.double(), dim=1))


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    """The fraction of images classified as their requested label, overall and per class."""
    hit = (logits.argmax(1) == labels).double()
    per_class = [hit[labels == k].mean().item() if (labels == k).any() else float("nan") for k in range(num_classes)]
    return hit.mean().item(), per_class


def fid_floor(pool_features: torch.Tensor, reference: GaussianStats, n: int, repeats: int,
              generator: torch.Generator) -> tuple[float, float]:
    """Mean and std of the FID of `repeats` random n-image subsets of real features against `reference`.

    This is the real-data floor with the same sample-size bias as an n-sample FID (subsets are drawn without
    replacement when the pool is large enough).
    """
    n, repeats = check_positive_int("n", n), check_positive_int("repeats", repeats)
    size = len(pool_features)

    def subset() -> torch.Tensor:
        index = torch.randperm(size, generator=generator)[:n] if n <= size else torch.randint(size, (n,), generator=generator)
        return pool_features[index]

    draws = [frechet_distance(GaussianStats.of(subset()), reference) for _ in range(repeats)]
    return float(np.mean(draws)), float(np.std(draws))


@dataclass(frozen=True)
class EvalProtocol:
    """What FID/IS are measured with: a feature extractor, the reference images and a pool of real images
    for the floor (digits: the CNN, the validation split and the training split)."""

    extract: FeatureExtractor
    reference: torch.Tensor  # (N_ref, C, H, W)
    pool: torch.Tensor  # (N_pool, C, H, W)
    num_classes: int


@dataclass(frozen=True)
class ImageScores:
    w: float
    accuracy: float
    min_class_accuracy: float
    fid: float
    is_: float
    per_class_accuracy: tuple[float, ...]

    def row(self) -> dict:
        """The eval.json row: {"w", "accuracy", "min_class_accuracy", "fid", "is", "per_class_accuracy"}."""
        row = asdict(self)
        row["is"] = row.pop("is_")
        row["per_class_accuracy"] = list(self.per_class_accuracy)
        return row


def score_images(extract: FeatureExtractor, images: torch.Tensor, labels: torch.Tensor, reference: GaussianStats,
                 num_classes: int, w: float = float("nan")) -> ImageScores:
    """Accuracy against the requested labels, FID against `reference` and IS of a generated set."""
    features, logits = extract(images)
    accuracy, per_class = class_accuracy(logits, labels.cpu(), num_classes)
    return ImageScores(w=float(w), accuracy=accuracy, min_class_accuracy=float(np.nanmin(per_class)),
                       fid=frechet_distance(GaussianStats.of(features), reference), is_=inception_score(logits),
                       per_class_accuracy=tuple(per_class))


def markdown_table(rows: list[dict], fid_floor_value: float) -> str:
    """The rows of eval.json as a Markdown table (w, s = 1 + w, accuracy, min class accuracy, FID, FID/floor, IS)."""
    lines = ["| w | s = 1 + w | accuracy | min class acc. | FID | FID / floor | IS |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['w']:g} | {1 + r['w']:g} | {r['accuracy']:.3f} | {r['min_class_accuracy']:.3f} | "
                     f"{r['fid']:.2f} | {r['fid'] / fid_floor_value:.2f} | {r['is']:.2f} |")
    return "\n".join(lines) + f"\n\nFID floor (real training subsets of the same size): {fid_floor_value:.2f}\n"


def evaluate_guidance(model: torch.nn.Module, ws: list[float], protocol: EvalProtocol, *, per_class: int = 100,
                      steps: int = 128, seed: int = 0, method: str = "ancestral", batch_size: int = 500,
                      floor_repeats: int = 5, progress: bool = True) -> tuple[dict, dict[float, torch.Tensor]]:
    """Sample per_class images of every class at each w and score them: ({"fid_floor", "rows"}, {w: images}).

    Every w uses the same seed, so the rows differ only by guidance.
    """
    from tqdm.auto import tqdm

    from .sampling import class_labels, sample_images

    if model.num_classes != protocol.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes but the protocol {protocol.num_classes}")
    reference = GaussianStats.of(protocol.extract(protocol.reference)[0])
    labels = class_labels(protocol.num_classes, per_class)
    floor, floor_std = fid_floor(protocol.extract(protocol.pool)[0], reference, len(labels), floor_repeats,
                                 torch.Generator().manual_seed(seed))
    rows, samples = [], {}
    for w in tqdm(ws, desc="guidance strengths", disable=not progress):
        samples[w] = sample_images(model, labels, w, steps=steps, seed=seed, method=method, batch_size=batch_size)
        rows.append(score_images(protocol.extract, samples[w], labels, reference, protocol.num_classes, w).row())
    return {"fid_floor": floor, "fid_floor_std": floor_std, "steps": steps, "method": method, "seed": seed,
            "per_class": per_class, "rows": rows}, samples
