"""ipywidgets front ends for the notebooks: sliders that update matplotlib artists in place.

Every guidance slider shows the paper's w and the scale s = 1 + w used by diffusers and Imagen.

How a figure updates: each panel draws into a matplotlib `Figure` rendered off-screen by Agg (no pyplot,
so the inline backend never shows a second copy) and is shown as PNG bytes in an `ipywidgets.Image`.
A slider change updates the artists in place (`set_data`, `set_offsets`, `set_UVC`) and re-renders those
bytes. This behaves the same in JupyterLab, under nbval and without any kernel (the unit tests).

Conventions the browser test relies on: the w slider carries the CSS class `cfgedu-w-slider`, its readout
`cfgedu-w-readout`, and every figure `cfgedu-figure` (use `w_slider`, `GuidanceReadout` and `FigureView`).
Every slider panel registers a small factory in `BENCHMARKS` so `python -m cfgedu bench-widgets` times it.
tests/test_browser.py drives every notebook whose source calls a `...Slider(`, `..._slider(` or `...Widget(`.
"""
from .base import (
    BENCHMARKS,
    FigureView,
    GuidanceReadout,
    SliderPanel,
    guidance_label,
    lam_slider,
    level_label,
    single_threaded,
    slider_values,
    time_sliders,
    w_slider,
)
from .images import LossCurve, SampleGridSlider, SampleGridWidget
from .methods import GuidanceMethodsWidget
from .toy import (
    CFGFieldWidget,
    Figure2Widget,
    ForwardProcessWidget,
    GuidanceFieldsWidget,
    GuidanceIntervalWidget,
    ScoreFieldWidget,
)

__all__ = ["BENCHMARKS", "CFGFieldWidget", "Figure2Widget", "FigureView", "ForwardProcessWidget",
           "GuidanceFieldsWidget", "GuidanceIntervalWidget", "GuidanceMethodsWidget", "GuidanceReadout", "LossCurve",
           "SampleGridSlider", "SampleGridWidget", "ScoreFieldWidget", "SliderPanel", "guidance_label", "lam_slider",
           "level_label", "single_threaded", "slider_values", "time_sliders", "w_slider"]
