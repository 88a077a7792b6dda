"""CFG samples of the 2D toy, class by class: what Figure 2, the fields notebook, the trade-off sweep and the widgets
all draw."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.guidance import EpsModel, GuidanceWeight, guided
from ..core.samplers import Corrector, sample
from ..core.schedule import LogSNRSchedule


def class_samples(eps_model: EpsModel, num_classes: int, w: GuidanceWeight, per_class: int,
                  **options) -> torch.Tensor:
    """`per_class` samples of every class in one batch with CFG of strength w (a float, or a function of λ), drawn
    by Algorithm 2 (or DDIM) without autograd; float64 (K, per_class, *data_shape). `options` as in panel_samples."""
    return panel_samples(eps_model, num_classes, [w], per_class, **options)[0]


def panel_samples(eps_model: EpsModel, num_classes: int, ws: Sequence[GuidanceWeight], per_class: int, *,
                  generator: torch.Generator, steps: int, v: float = 0.3, method: str = "ancestral",
                  dtype: torch.dtype = torch.float64, schedule: LogSNRSchedule = LogSNRSchedule(),
                  corrector: Corrector | None = None, data_shape: tuple[int, ...] = (2,)) -> torch.Tensor:
    """class_samples for every w in `ws` (floats, or a single function of λ) drawn together: one batch of
    len(ws)·K·per_class samples, so each step is one call of the guided model; float64 (len(ws), K, per_class,
    *data_shape)."""
    labels = torch.arange(num_classes).repeat_interleave(per_class).repeat(len(ws))  # [w][class][sample]
    w = ws[0] if len(ws) == 1 else torch.tensor(ws, dtype=dtype).repeat_interleave(num_classes * per_class)
    with torch.no_grad():  # a learned network would otherwise keep the graph of every step
        x = sample(guided(eps_model, w, null_label=num_classes), data_shape, labels, generator=generator,
                   schedule=schedule, steps=steps, v=v, method=method, dtype=dtype, corrector=corrector)
    return x.to(torch.float64).reshape(len(ws), num_classes, per_class, *data_shape)
