"""scikit-learn's bundled digits (1,797 images of 8x8, 10 classes) as images in [−1, 1] at 16x16 or 32x32.

The train/validation split is fixed (stratified, seed 0, 20% validation), so every model, the classifier
and the FID reference all see the same images.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .source import TensorData

NUM_CLASSES = 10
SPLITS = ("train", "val")
SIZES = (8, 16, 32)
VAL_FRACTION = 0.2
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
    """Images (1797, 1, 8, 8) in [−1, 1], labels (1797,) and the index of each split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16 * 2 - 1  # levels 0..16 -> [−1, 1]
    c = torch.tensor(digits.target, dtype=torch.long)
    train, val = train_test_split(np.arange(len(c)), test_size=VAL_FRACTION, random_state=SPLIT_SEED,
                                  stratify=digits.target)
    return x, c, {"train": np.sort(train), "val": np.sort(val)}


def load_digits_split(split: str = "train", size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, size, size) in [−1, 1] (bilinear upsampling of the 8x8 originals) and labels (N,)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if size not in SIZES:
        raise ValueError(f"digits image size must be one of {SIZES}; got {size!r}")
    x, c, index = _raw_digits()
    x, c = x[index[split]], c[index[split]]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x, c


@dataclass(frozen=True)
class DigitsData:
    """The digits training split as a data config: build(seed) gives the engine's TensorData DataSource,
    a fresh seeded permutation per step sliced by (micro, rank)."""

    size: int = 16

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"digits image size must be one of {SIZES}; got {self.size!r}")

    def build(self, seed: int = 0) -> TensorData:
        x, c = load_digits_split("train", self.size)
        return TensorData(x, c, NUM_CLASSES, seed)
