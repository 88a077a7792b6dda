"""Slider panels of image models (notebooks 06-07): class-by-row sample grids moved by w, and a live loss curve."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from ...core.tensors import make_generator
from ...engine.launch import read_new_metrics
from ...images.sampling import image_grid, sample_images
from .base import BENCHMARKS, FigureView, GuidanceReadout, SliderPanel, guidance_label, png_base64, w_slider


class SampleGridWidget(SliderPanel):
    """Algorithm 2 samples of an image eps_model with CFG strength w, one row per class and the same noise
    for every w, so that moving the slider shows what guidance alone changes."""

    def __init__(self, model, classes: list[int], per_class: int = 4, *, steps: int = 32, v: float = 0.3,
                 seed: int = 0, w: float = 0.3, high: float = 4.0):

        self.model, self.settings = model, {"steps": steps, "v": v, "seed": seed}
        self.labels = torch.as_tensor(classes).repeat_interleave(per_class)  # (rows·per_class,)
        self.rows = len(classes)
        slider = w_slider(w, low=0.0, high=high, step=0.1, continuous_update=False)
        super().__init__({"w": slider}, FigureView(1, panel_inches=max(2.8, 0.7 * per_class)),
                         GuidanceReadout(slider).label)
        blank = image_grid(torch.zeros(len(self.labels), *model.config.data_shape), self.rows)  # grey, right shape
        self.picture = self.view.axes[0].imshow(blank, cmap="gray", vmin=0, vmax=1)
        self.view.axes[0].set_axis_off()
        self._on_change()  # draws the samples

    def samples(self, w: float):
        """The grid of samples at guidance strength w, (rows·H, cols·W[, 3]) in [0, 1]."""
        return image_grid(sample_images(self.model, self.labels, w, clip_x=1.0, **self.settings), self.rows)

    def update(self) -> None:
        w = self.sliders["w"].value
        self.picture.set_data(self.samples(w))
        self.picture.axes.set_title(f"rows = classes, {guidance_label(w)}", fontsize=9)


class LossCurve:
    """An `on_log` callback for cfgedu.engine.loop.train that plots the loss as the records arrive (in place).

    `show()` displays it in a notebook and keeps the displayed output up to date, so a saved notebook holds the final
    curve as a PNG too (for viewers without a kernel)."""

    def __init__(self, title: str = "Algorithm 1 loss (ε-MSE)"):
        self.view = FigureView(1, panel_inches=3.4)
        ax = self.view.axes[0]
        (self.line,) = ax.plot([], [], color="tab:blue")
        ax.set(yscale="log", xlabel="step", title=title)
        self.steps, self.losses = [], []
        self.handle = None
        self.view.figure.tight_layout()
        self.view.refresh()

    def show(self) -> LossCurve:
        """Display the curve in the notebook, updated in place as records arrive."""
        from IPython.display import display

        self.handle = display(self, display_id=True)
        return self

    def __call__(self, record: dict) -> None:
        self.steps.append(record["step"])
        self.losses.append(record["loss"])
        self.line.set_data(self.steps, self.losses)
        self.line.axes.relim()
        self.line.axes.autoscale_view()
        self.view.refresh()
        if self.handle is not None:
            self.handle.update(self)

    def follow(self, metrics: Path, running: Callable[[], bool], seconds: float, poll: float = 1.0) -> list[dict]:
        """Plot the records a run appends to its metrics.jsonl (another process) while running() and at most `seconds`
        long; returns every record read."""
        records, offset, began = [], 0, time.monotonic()
        while True:
            still_running = running()  # read before the file, so the last records are never missed
            new, offset = read_new_metrics(metrics, offset)
            for record in new:
                self(record)
            records += new
            if not still_running or time.monotonic() - began > seconds:
                return records
            time.sleep(poll)

    def _repr_mimebundle_(self, **kwargs):
        """The live image widget, and the figure as a PNG for viewers without a kernel."""
        return {**self.view.image._repr_mimebundle_(**kwargs), "image/png": png_base64(self.view)}


class SampleGridSlider(SliderPanel):
    """A class-by-row grid of image samples for each precomputed w; the w slider snaps to the nearest one.

    samples: {w: images (rows·cols, C, H, W) in [−1, 1]}, row k holding class k (cfgedu.images.sampling).
    """

    def __init__(self, samples: dict[float, torch.Tensor], rows: int):

        if not samples:
            raise ValueError("SampleGridSlider needs samples for at least one w")
        self.grids = {float(w): image_grid(images, rows) for w, images in samples.items()}
        ws = sorted(self.grids)
        slider = w_slider(value=ws[0], low=ws[0], high=max(ws[-1], ws[0] + 0.1), step=0.05)
        view = FigureView(1, panel_inches=3.6)
        self.image = view.axes[0].imshow(self.grids[ws[0]], cmap="gray", vmin=0, vmax=1)
        view.axes[0].set_xticks([])
        view.axes[0].set_yticks([])
        super().__init__({"w": slider}, view, GuidanceReadout(slider).label)
        self.update()
        view.refresh()

    def nearest_w(self) -> float:
        return min(self.grids, key=lambda w: abs(w - self.sliders["w"].value))

    def update(self) -> None:
        w = self.nearest_w()
        self.image.set_data(self.grids[w])
        self.view.axes[0].set_title(f"samples at {guidance_label(w)}; rows are classes", fontsize=9)


def _random_digit_samples() -> dict[float, torch.Tensor]:
    generator = make_generator(0)
    return {w: torch.rand(40, 1, 16, 16, generator=generator) * 2 - 1 for w in (0.0, 1.0, 4.0)}


BENCHMARKS["digits sample grids per w"] = lambda: SampleGridSlider(_random_digit_samples(), rows=10)
