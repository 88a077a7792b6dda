"""CFG samples of the 2D toy, class by class: what Figure 2, the fields notebook, the trade-off sweep and the widgets
all draw."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.guidance import EpsModel, GuidanceWeight
from ..core.guidance_methods import Guidance
from ..core.samplers import Corrector, sample
from ..core.schedule import LogSNRSchedule


def class_samples(eps_model: EpsModel, num_classes: int, w: GuidanceWeight, per_class: int,
                  **options) -> torch.Tensor:
    """`per_class` samples of every class in one batch guided with strength w (a float, or a function of λ for CFG),
    drawn without autograd; float64 (K, per_class, *data_shape). `options` as in panel_samples."""
    return panel_samples(eps_model, num_classes, [w], per_class, **options)[0]


def panel_samples(eps_model: EpsModel, num_classes: int, ws: Sequence[GuidanceWeight], per_class: int, *,
                  generator: torch.Generator, steps: int, v: float = 0.3, method: str = "ancestral",
                  dtype: torch.dtype = torch.float64, schedule: LogSNRSchedule = LogSNRSchedule(),
                  corrector: Corrector | None = None, data_shape: tuple[int, ...] = (2,),
                  guidance: Guidance = Guidance()) -> torch.Tensor:
    """class_samples for every w in `ws` (floats, or a single function of λ) drawn together: one batch of
    len(ws)·K·per_class samples, so each step is one call of the guided model; float64 (len(ws), K, per_class,
    *data_shape). `guidance` picks the method that w is the strength of (CFG by default; core.guidance_methods)."""
    labels = torch.arange(num_classes).repeat_interleave(per_class).repeat(len(ws))  # [w][class][sample]
    w = ws[0] if len(ws) == 1 else torch.tensor(ws, dtype=dtype).repeat_interleave(num_classes * per_class)
    model, options = guidance.wrap(eps_model, w, null_label=num_classes)
    with torch.no_grad():  # a learned network would otherwise keep the graph of every step
        x = sample(model, data_shape, labels, generator=generator, schedule=schedule, steps=steps, v=v,
                   method=method, dtype=dtype, corrector=corrector, **options)
    return x.to(torch.float64).reshape(len(ws), num_classes, per_class, *data_shape)
