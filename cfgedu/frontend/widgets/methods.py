"""The guidance methods beyond CFG on the toy (notebook 05): one strength slider that switches between CFG,
APG, CFG++ and autoguidance, with each method's samples against the data and the tilted target π_w."""
from __future__ import annotations

import ipywidgets
import torch

from ...core.guidance import EpsModel
from ...core.guidance_methods import Guidance
from ...core.tensors import make_generator
from ...toy.grid import Grid2D, HistogramTV, TiltedTargets, mix
from ...toy.metrics import bayes_inception_score, class_variance, frechet_pooled
from ...toy.mixture import GaussianMixture
from ...toy.sampling import class_samples
from ..plotting import density_image, histogram_density
from .base import BENCHMARKS, FigureView, SliderPanel, guidance_label, w_slider

# method -> (strength slider's maximum, step, starting value): CFG++'s l lives on [0, 1], the others are w
STRENGTHS = {"cfg": (8.0, 0.25, 3.0), "apg": (24.0, 0.5, 3.0), "cfg++": (1.0, 0.01, 0.3),
             "autoguidance": (8.0, 0.25, 3.0)}


def strength_label(method: str, strength: float) -> str:
    """The readout: w and s = 1 + w, or CFG++'s own strength l."""
    if method == "cfg++":
        return f"l = {strength:g} (CFG++: x̂(z, ∅) + l·(x̂(z, c) − x̂(z, ∅)), renoised with ε(z, ∅))"
    return guidance_label(strength)


class GuidanceMethodsWidget(SliderPanel):
    """Samples of one guidance method at one strength (DDIM, the same noise for all) beside the data p(x) and the
    target Σ_c π_c π_w(x|c) for the target slider's w; the title gives the TV to π_w, the label below the Bayes IS,
    the Fréchet distance to the data and the per-class variance (the data's is 0.36 on the three-Gaussian toy)."""

    def __init__(self, eps_model: EpsModel, mixture: GaussianMixture, guide: EpsModel | None = None,
                 method: str = "cfg", target_w: float = 3.0, per_class: int = 400, steps: int = 32, bins: int = 48,
                 seed: int = 0):
        self.eps_model, self.mixture, self.guide = eps_model, mixture, guide
        self.per_class, self.steps, self.seed = per_class, steps, seed
        self.grid = Grid2D.covering(mixture, n=bins * 4)
        self.histogram, self.target = HistogramTV(self.grid, bins), TiltedTargets(mixture, self.grid)
        methods = [name for name in STRENGTHS if name != "autoguidance" or guide is not None]
        chooser = ipywidgets.ToggleButtons(options=methods, value=method, description="method")
        high, step, value = STRENGTHS[method]
        strength = w_slider(value, low=0.0, high=high, step=step)
        target = ipywidgets.FloatSlider(value=target_w, min=0.0, max=8.0, step=0.5, description="target w")
        self.label = ipywidgets.Label()
        self.label.add_class("cfgedu-w-readout")
        super().__init__({"method": chooser, "w": strength, "target": target}, FigureView(3), self.label)
        data = mix(mixture, self.target(0.0))
        density_image(self.view.axes[0], self.grid, data, title="the data p(x)")
        self.target_image = density_image(self.view.axes[1], self.grid, data)
        self.sample_image = density_image(self.view.axes[2], Grid2D(self.grid.half_width, bins), data)
        chooser.observe(self._rescale, "value")
        self.update()  # the titles first, so that the layout leaves room for them
        self.view.figure.tight_layout()
        self._on_change()

    def _rescale(self, change) -> None:
        """A new method gets its own strength range, starting at its usual value."""
        high, step, value = STRENGTHS[change["new"]]
        slider = self.sliders["w"]
        with slider.hold_trait_notifications():
            slider.max, slider.step, slider.value = high, step, value

    def samples(self, method: str, strength: float) -> torch.Tensor:
        """(K, N, 2) DDIM samples of the method at this strength."""
        guidance = Guidance(method, guide=self.guide if method == "autoguidance" else None)
        return class_samples(self.eps_model, self.mixture.num_classes, strength, self.per_class,
                             generator=make_generator(self.seed), steps=self.steps, method="ddim", guidance=guidance)

    def update(self) -> None:
        method, strength, w = (self.sliders[name].value for name in ("method", "w", "target"))
        self.label.value = strength_label(method, strength)
        targets, samples = self.target(w), self.samples(method, strength)
        target = mix(self.mixture, targets)
        self.target_image.set_data(target.numpy())
        self.target_image.set_clim(0, target.max().item())
        self.target_image.axes.set_title(f"target Σπ_c π_w(x|c), w = {w:g}", fontsize=8)
        shown = histogram_density(self.grid, samples, self.histogram.bins, self.mixture.class_weights)
        self.sample_image.set_data(shown.numpy())
        self.sample_image.set_clim(0, shown.max().item())
        tv = sum(self.histogram(s, d) for s, d in zip(samples, targets, strict=True)) / len(targets)
        pooled = samples.reshape(-1, 2)
        variance = sum(class_variance(s) for s in samples) / len(samples)
        self.sample_image.axes.set_title(f"{method}, {'l' if method == 'cfg++' else 'w'} = {strength:g}: TV to π_w "
                                         f"{tv:.2f}", fontsize=8)
        self.sample_image.axes.set_xlabel(f"IS {bayes_inception_score(self.mixture, pooled):.2f}, FD "
                                          f"{frechet_pooled(self.mixture, pooled):.2f}, class variance {variance:.2f}",
                                          fontsize=8)


BENCHMARKS["guidance methods beyond CFG (exact toy)"] = lambda: GuidanceMethodsWidget(
    GaussianMixture.three_gaussians(), GaussianMixture.three_gaussians(),
    guide=GaussianMixture.three_gaussians(std=0.8))
