"""Class-conditional image sampling with CFG: Algorithm 2 (or DDIM) in batches, and class-by-row grids.

Each sampling step runs one doubled batch (cond + null) through the network (guidance.guided); x̂ is
clipped to the data range [−1, 1] at every step, as ADM does (`clip_denoised=True`). At precision "bf16" only the
network runs under autocast, as in training: the sampler's state (z, the λ grid, the Gaussian updates) and ε stay
float32.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..core.checks import check_choice, check_finite, check_positive_int
from ..core.guidance import guided
from ..core.samplers import sample
from ..core.schedule import LogSNRSchedule
from ..core.tensors import at_precision
from ..engine.config import PRECISIONS

DEFAULT_SCHEDULE = LogSNRSchedule()  # λ on [−20, 20]


def class_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """(num_classes·per_class,) labels 0,0,..,1,1,..: row k of a grid holds class k."""
    return torch.arange(check_positive_int("num_classes", num_classes)).repeat_interleave(
        check_positive_int("per_class", per_class))


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """(n,) labels in class blocks, class k holding ⌊n/K⌋ or ⌈n/K⌉ of them: class_labels(K, n / K) when K divides n."""
    n, num_classes = check_positive_int("n", n), check_positive_int("num_classes", num_classes)
    return torch.arange(n) * num_classes // n


def sample_batches(model: torch.nn.Module, labels: torch.Tensor, w: float, *, generator: torch.Generator,
                   steps: int = 128, method: str = "ancestral", v: float = 0.3, batch_size: int = 500,
                   clip_x: float | None = 1.0, schedule: LogSNRSchedule = DEFAULT_SCHEDULE, precision: str = "fp32",
                   progress: bool = False) -> Iterator[torch.Tensor]:
    """Guided samples (B, C, H, W) on the CPU for labels.split(batch_size) in turn, all drawing from `generator`,
    with the network at `precision` (cfgedu.core.tensors.at_precision): the sampler itself stays float32."""
    w, batch_size = check_finite("w", w), check_positive_int("batch_size", batch_size)
    check_choice("precision", precision, PRECISIONS)
    eps_model = guided(at_precision(model, precision), w, null_label=model.num_classes)
    for chunk in labels.split(batch_size):
        with torch.inference_mode():
            images = sample(eps_model, model.config.data_shape, chunk, generator=generator, schedule=schedule,
                            steps=steps, v=v, method=method, clip_x=clip_x, progress=progress)
        yield images.to("cpu", copy=True)  # a copy made outside inference mode: an ordinary tensor


def sample_images(model: torch.nn.Module, labels: torch.Tensor, w: float, *, seed: int = 0,
                  **options) -> torch.Tensor:
    """Guided samples for `labels` (N,) with strength w (s = 1 + w), on the model's device; returns (N, C, H, W) on CPU.

    Batches of `batch_size` images draw in turn from one generator seeded with `seed`: a call with the same
    seed and batch_size repeats exactly. `options` are sample_batches'.
    """
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(int(seed))
    return torch.cat(list(sample_batches(model, labels, w, generator=generator, **options)))


def image_grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """Tile (N, C, H, W) images in [−1, 1] into a (rows·H, cols·W[, 3]) array in [0, 1], row-major."""
    n, ch, h, wd = images.shape
    if n % rows:
        raise ValueError(f"{n} images do not fill {rows} rows")
    tiles = ((images.clamp(-1, 1) + 1) / 2).reshape(rows, n // rows, ch, h, wd)
    grid = tiles.permute(0, 3, 1, 4, 2).reshape(rows * h, (n // rows) * wd, ch).numpy()
    return grid[..., 0] if ch == 1 else grid
