"""The building blocks of every slider panel: a figure shown as an image widget, the w slider and its readout,
the λ slider, and the registry that `python -m cfgedu bench-widgets` times."""
from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from contextlib import contextmanager

import ipywidgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ...core.guidance import scale_from_w
from ...core.schedule import alpha_sigma


def guidance_label(w: float) -> str:
    """The readout of a w slider: 'w = 0.3 (s = 1 + w = 1.3)'."""
    return f"w = {w:g} (s = 1 + w = {scale_from_w(w):g})"


class FigureView:
    """A matplotlib Figure with `ncols` axes, shown as PNG bytes in `self.image` (an ipywidgets.Image)."""

    def __init__(self, ncols: int, panel_inches: float = 2.8, dpi: int = 90, zoom: float = 1.25):
        self.figure = Figure(figsize=(panel_inches * ncols, panel_inches + 0.3), dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.subplots(1, ncols, squeeze=False)[0]
        width, _ = self.figure.canvas.get_width_height()  # shown `zoom` times larger: rendering costs pixels
        self.image = ipywidgets.Image(format="png", layout=ipywidgets.Layout(width=f"{round(zoom * width)}px"))
        self.image.add_class("cfgedu-figure")

    def refresh(self) -> None:
        """Render the figure (whose artists were updated in place) into the image widget."""
        buffer = io.BytesIO()
        self.figure.canvas.print_png(buffer, pil_kwargs={"compress_level": 1})  # fast zlib: ~2x quicker
        self.image.value = buffer.getvalue()


def png_base64(view: FigureView) -> str:
    """The view's current figure as base64 PNG text, as a notebook stores an image output."""
    return base64.b64encode(bytes(view.image.value)).decode()


def w_slider(value: float = 1.0, low: float = -1.0, high: float = 16.0, step: float = 0.25,
             continuous_update: bool = True):
    """The guidance slider: the paper's w (w = 0 conditional, w = −1 unconditional), CSS class cfgedu-w-slider."""
    if not low <= value <= high:
        raise ValueError(f"w slider needs low <= value <= high, got {low}, {value}, {high}")
    slider = ipywidgets.FloatSlider(value=value, min=low, max=high, step=step, description="w",
                                    continuous_update=continuous_update, readout_format=".2f")
    slider.add_class("cfgedu-w-slider")
    return slider


class GuidanceReadout:
    """A label that always shows `guidance_label(slider.value)`: w and s = 1 + w, never out of step."""

    def __init__(self, slider):
        self.slider = slider
        self.label = ipywidgets.Label()
        self.label.add_class("cfgedu-w-readout")
        slider.observe(self._show, "value")
        self._show()

    def _show(self, _change=None) -> None:
        self.label.value = guidance_label(self.slider.value)


@contextmanager
def single_threaded():
    """Run torch on one thread inside the block and restore the caller's setting after it.

    A slider update works on tensors of ~10^4-10^5 elements, too small to gain from threads; on a busy
    machine their spin-waits made each update 5-10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SliderPanel:
    """Sliders above a FigureView. Subclasses draw once in __init__ and implement `update()` in place.

    `sliders` maps a name to its slider (the benchmark moves each one); display the panel itself.
    """

    def __init__(self, sliders: dict, view: FigureView, readout=None):
        self.sliders, self.view, self.readout = sliders, view, readout
        self.update_seconds = 0.0
        controls = [*sliders.values(), *([readout] if readout is not None else [])]
        self.widget = ipywidgets.VBox([ipywidgets.HBox(controls), view.image])
        for slider in sliders.values():
            slider.observe(self._on_change, "value")

    def _on_change(self, _change=None) -> None:
        start = time.perf_counter()
        with single_threaded():
            self.update()
            self.view.refresh()
        self.update_seconds = time.perf_counter() - start

    def update(self) -> None:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        """The live widget, and its current figure as a PNG for viewers without a kernel (a code host's notebook
        view); JupyterLab renders the widget."""
        return {**self.widget._repr_mimebundle_(**kwargs), "image/png": png_base64(self.view)}


def lam_slider(value: float = 0.0, low: float = -10.0, high: float = 10.0, step: float = 0.25):
    """A log-SNR slider: λ = log(α²/σ²), high λ is clean data, low λ is noise."""
    return ipywidgets.FloatSlider(value=value, min=low, max=high, step=step, description="λ", readout_format=".2f")


def level_label(lam: float) -> str:
    """'λ = 1 (α = 0.85, σ = 0.52)'."""
    alpha, sigma = alpha_sigma(torch.tensor(float(lam), dtype=torch.float64))
    return f"λ = {lam:g} (α = {alpha.item():.3f}, σ = {sigma.item():.3f})"


def _full(n: int, value: float) -> torch.Tensor:
    return torch.full((n,), float(value), dtype=torch.float64)


# panel name -> a factory of a ready panel; the toy and image modules register theirs
BENCHMARKS: dict[str, Callable[[], SliderPanel]] = {}


def slider_options(slider, moves: int) -> list:
    """The values slider_values cycles over: a chooser's options, or up to five ticks across a slider's range."""
    if hasattr(slider, "options"):
        return list(slider.options)
    ticks = torch.linspace(slider.min, slider.max, min(moves, 4) + 1).tolist()
    ticks = sorted({round(t / slider.step) * slider.step for t in ticks})
    if isinstance(slider.value, tuple):
        return [(ticks[0], t) for t in ticks[1:]]
    return [type(slider.value)(t) for t in ticks]


def slider_values(slider, moves: int) -> list:
    """`moves` values cycling over the slider's range, each different from the one before (from its value).

    A range slider (tuple value) gets intervals that widen from the bottom of its range; a chooser (ToggleButtons,
    Dropdown) its options in turn."""
    values, previous, options = [], slider.value, slider_options(slider, moves)
    while len(values) < moves:
        previous = next(t for t in options[len(values) % len(options):] + options if t != previous)
        values.append(previous)
    return values


def time_sliders(panel: SliderPanel, moves: int = 5) -> dict[str, list[float]]:
    """Seconds per update (compute + render) for each slider of a panel, moving it through its range."""
    timings = {}
    for name, slider in panel.sliders.items():
        timings[name] = []
        for value in slider_values(slider, moves):
            slider.value = value
            timings[name].append(panel.update_seconds)
    return timings
