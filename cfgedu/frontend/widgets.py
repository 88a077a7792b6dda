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
from __future__ import annotations

import io
import time
from contextlib import contextmanager
from typing import Callable

import ipywidgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..toy.mixture import GaussianMixture
from ..toy.grid import Grid2D, mix, normalize
from ..core.guidance import scale_from_w
from .plotting import density_image
from ..core.schedule import alpha_sigma, q_sample
from ..core.tensors import make_generator


def guidance_label(w: float) -> str:
    """The readout of a w slider: 'w = 0.3 (s = 1 + w = 1.3)'."""
    return f"w = {w:g} (s = 1 + w = {scale_from_w(w):g})"


# ---- building blocks: a figure shown as an image widget, the w slider and its readout ----

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
        return self.widget._repr_mimebundle_(**kwargs)


def lam_slider(value: float = 0.0, low: float = -10.0, high: float = 10.0, step: float = 0.25):
    """A log-SNR slider: λ = log(α²/σ²), high λ is clean data, low λ is noise."""
    return ipywidgets.FloatSlider(value=value, min=low, max=high, step=step, description="λ", readout_format=".2f")


def level_label(lam: float) -> str:
    """'λ = 1 (α = 0.85, σ = 0.52)'."""
    alpha, sigma = alpha_sigma(torch.tensor(float(lam), dtype=torch.float64))
    return f"λ = {lam:g} (α = {alpha.item():.3f}, σ = {sigma.item():.3f})"


def _full(n: int, value: float) -> torch.Tensor:
    return torch.full((n,), float(value), dtype=torch.float64)


# ---- notebook 01: the exact three-Gaussian toy ----

class ForwardProcessWidget(SliderPanel):
    """The forward process z_λ = α x + σ ε on the toy: fixed draws (x, ε) moved by λ, and the exact p_λ(z)."""

    def __init__(self, mixture: GaussianMixture, grid: Grid2D | None = None, lam: float = 2.0,
                 points_per_class: int = 200, seed: int = 0):
        self.mixture, self.grid = mixture, grid or Grid2D.covering(mixture, n=128)
        generator = make_generator(seed)
        self.labels = torch.arange(mixture.num_classes).repeat_interleave(points_per_class)  # (N,)
        self.x = torch.cat([mixture.sample(points_per_class, c, generator) for c in range(mixture.num_classes)])
        self.noise = torch.randn(self.x.shape, generator=generator, dtype=torch.float64)  # (N, 2)
        self.readout = ipywidgets.Label()
        super().__init__({"λ": lam_slider(lam)}, FigureView(2), self.readout)
        ax_points, ax_density = self.view.axes
        self.points = ax_points.scatter(*self.x.T.numpy(), c=self.labels.numpy(), cmap="viridis", s=4)
        h = self.grid.half_width
        ax_points.set(xlim=(-h, h), ylim=(-h, h), aspect="equal", xticks=[], yticks=[])
        ax_points.set_title("draws z_λ = α x + σ ε", fontsize=9)
        self.image = density_image(ax_density, self.grid, self.density(), title="exact density p_λ(z)")
        self.view.figure.tight_layout()
        self._on_change()

    def density(self) -> torch.Tensor:
        """p_λ(z) on the grid at the slider's λ, (n, n) [y, x]."""
        points = self.grid.points()
        return self.mixture.log_prob(points, _full(len(points), self.sliders["λ"].value)).exp().reshape(self.grid.n, -1)

    def update(self) -> None:
        lam = self.sliders["λ"].value
        z = q_sample(self.x, _full(len(self.x), lam), self.noise)
        self.points.set_offsets(z.numpy())
        density = self.density()
        self.image.set_data(density.numpy())
        self.image.set_clim(0, density.max().item())
        self.readout.value = level_label(lam)


class ScoreFieldWidget(SliderPanel):
    """Arrows of the exact scores at level λ for class c: ∇log p_λ(z|c), ∇log p_λ(z) and the implicit
    classifier ∇log p_λ(c|z) = −(ε*(z,c) − ε*(z))/σ, over p_λ(z|c), p_λ(z) and p_λ(c|z)."""

    TITLES = ("∇log p_λ(z|c) on p_λ(z|c)", "∇log p_λ(z) on p_λ(z)", "∇log p_λ(c|z) on p_λ(c|z)")

    def __init__(self, mixture: GaussianMixture, grid: Grid2D | None = None, lam: float = 0.0, c: int = 0,
                 arrows: int = 17):
        self.mixture, self.grid = mixture, grid or Grid2D.covering(mixture, n=96)
        self.arrow_grid = Grid2D(self.grid.half_width * (1 - 1 / arrows), arrows)
        classes = ipywidgets.IntSlider(value=c, min=0, max=mixture.num_classes - 1, description="class c")
        self.readout = ipywidgets.Label()
        super().__init__({"λ": lam_slider(lam), "c": classes}, FigureView(3), self.readout)
        tail = self.arrow_grid.points().numpy()
        self.images, self.quivers = [], []
        for ax, title in zip(self.view.axes, self.TITLES):
            self.images.append(density_image(ax, self.grid, torch.zeros(self.grid.n, self.grid.n), title=title,
                                              cmap="Greys"))
            self.quivers.append(ax.quiver(tail[:, 0], tail[:, 1], 0 * tail[:, 0], 0 * tail[:, 1], color="tab:red",
                                          angles="xy", scale_units="xy", scale=1, width=0.006))
        self.view.figure.tight_layout()
        self._on_change()

    def fields(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """∇log p_λ(z|c), ∇log p_λ(z), ∇log p_λ(c|z) at points (N, 2), each (N, 2)."""
        lam, c = _full(len(points), self.sliders["λ"].value), torch.full((len(points),), self.sliders["c"].value)
        null = torch.full_like(c, self.mixture.num_classes)
        return (self.mixture.score(points, lam, c), self.mixture.score(points, lam, null),
                self.mixture.implicit_classifier_gradient(points, lam, c))

    def backgrounds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p_λ(z|c), p_λ(z) and p_λ(c|z) on the grid, each (n, n)."""
        points = self.grid.points()
        lam, c = _full(len(points), self.sliders["λ"].value), self.sliders["c"].value
        shape = (self.grid.n, self.grid.n)
        return (self.mixture.log_prob(points, lam, torch.full((len(points),), c)).exp().reshape(shape),
                self.mixture.log_prob(points, lam).exp().reshape(shape),
                self.mixture.posterior(points, lam)[:, c].reshape(shape))

    def update(self) -> None:
        longest = 0.9 * self.arrow_grid.cell  # the longest arrow spans 90% of the arrow spacing
        backgrounds = self.backgrounds()
        vmax = [backgrounds[0].max().item(), backgrounds[1].max().item(), 1.0]  # p(c|z) on a fixed [0, 1] scale
        for image, quiver, background, top, field in zip(self.images, self.quivers, backgrounds, vmax,
                                                         self.fields(self.arrow_grid.points())):
            image.set_data(background.numpy())
            image.set_clim(0, top)
            field = field * longest / field.norm(dim=1).max().clamp_min(1e-12)
            quiver.set_UVC(field[:, 0].numpy(), field[:, 1].numpy())
        self.readout.value = f"{level_label(self.sliders['λ'].value)}, class c = {self.sliders['c'].value}"


class Figure2Widget(SliderPanel):
    """Figure 2 with a w slider: the unguided marginal beside Σ_c π_c π_w(x|c), π_w(x|c) ∝ p(x|c) p(c|x)^w.

    The classifier log p(c|x) and log p(x|c) are computed once on the grid, so a new w costs one exp per class.
    """

    def __init__(self, mixture: GaussianMixture, grid: Grid2D | None = None, w: float = 4.0, high: float = 16.0):
        self.mixture, self.grid = mixture, grid or Grid2D.covering(mixture, n=192)
        points = self.grid.points()
        self.log_conditional = mixture.log_prob_components(points).T  # (K, n*n): log p(x|c)
        self.log_classifier = mixture.posterior(points).log().T  # (K, n*n): log p(c|x)
        slider = w_slider(w, high=high)
        super().__init__({"w": slider}, FigureView(2), GuidanceReadout(slider).label)
        unguided = mix(mixture, self.conditionals(0.0))
        density_image(self.view.axes[0], self.grid, unguided, title="unguided marginal p(x)")
        self.image = density_image(self.view.axes[1], self.grid, unguided, title="")
        self.view.figure.tight_layout()
        self._on_change()

    def conditionals(self, w: float) -> torch.Tensor:
        """π_w(x|c) for every class, normalised on the grid, (K, n, n)."""
        log_tilted = self.log_conditional + w * self.log_classifier  # (K, n*n)
        return torch.stack([normalize(row, self.grid.cell).reshape(self.grid.n, self.grid.n) for row in log_tilted])

    def update(self) -> None:
        w = self.sliders["w"].value
        target = mix(self.mixture, self.conditionals(w))
        self.image.set_data(target.numpy())
        self.image.set_clim(0, target.max().item())
        self.image.axes.set_title(f"guided: {guidance_label(w)}", fontsize=9)


# ---- timing every slider (python -m cfgedu bench-widgets) ----

BENCHMARKS: dict[str, Callable[[], SliderPanel]] = {
    "forward process (exact toy)": lambda: ForwardProcessWidget(GaussianMixture.three_gaussians()),
    "scores and implicit classifier (exact toy)": lambda: ScoreFieldWidget(GaussianMixture.three_gaussians()),
    "Figure 2 (exact toy)": lambda: Figure2Widget(GaussianMixture.three_gaussians()),
}


def slider_values(slider, moves: int) -> list:
    """`moves` values cycling over the slider's range, each different from the one before (from its value).

    A range slider (tuple value) gets intervals that widen from the bottom of its range."""
    ticks = torch.linspace(slider.min, slider.max, min(moves, 4) + 1).tolist()
    ticks = sorted({round(t / slider.step) * slider.step for t in ticks})
    if isinstance(slider.value, tuple):
        options = [(ticks[0], t) for t in ticks[1:]]
    else:
        options = [type(slider.value)(t) for t in ticks]
    values, previous = [], slider.value
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


# ---- image samples: CFG samples of any image eps_model as a grid, moved by the w slider ----

class SampleGridWidget(SliderPanel):
    """Algorithm 2 samples of an image eps_model with CFG strength w, one row per class and the same noise
    for every w, so that moving the slider shows what guidance alone changes."""

    def __init__(self, model, classes: list[int], per_class: int = 4, *, steps: int = 32, v: float = 0.3,
                 seed: int = 0, w: float = 0.3, high: float = 4.0):
        from ..images.sampling import image_grid

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
        from ..images.sampling import image_grid, sample_images

        return image_grid(sample_images(self.model, self.labels, w, clip_x=1.0, **self.settings), self.rows)

    def update(self) -> None:
        w = self.sliders["w"].value
        self.picture.set_data(self.samples(w))
        self.picture.axes.set_title(f"rows = classes, {guidance_label(w)}", fontsize=9)


# ---- notebooks 02 and 03: learned toy scores, the loss as it comes, and the non-conservative CFG field ----

class LossCurve:
    """An `on_log` callback for cfgedu.engine.loop.train that plots the loss as the records arrive (in place)."""

    def __init__(self, title: str = "Algorithm 1 loss (ε-MSE)"):
        self.view = FigureView(1, panel_inches=3.4)
        ax = self.view.axes[0]
        (self.line,) = ax.plot([], [], color="tab:blue")
        ax.set(yscale="log", xlabel="step", title=title)
        self.steps, self.losses = [], []
        self.view.figure.tight_layout()

    def __call__(self, record: dict) -> None:
        self.steps.append(record["step"])
        self.losses.append(record["loss"])
        self.line.set_data(self.steps, self.losses)
        self.line.axes.relim()
        self.line.axes.autoscale_view()
        self.view.refresh()

    def _repr_mimebundle_(self, **kwargs):
        return self.view.image._repr_mimebundle_(**kwargs)


class CFGFieldWidget(SliderPanel):
    """A learned model's CFG field ε̃ = (1 + w)ε(z, c) − wε(z, ∅) at level λ: its curl (colour) under arrows of
    the guided score −ε̃/σ, beside the implicit classifier −(ε(z, c) − ε(z, ∅))/σ of the model (red) and the
    exact ∇log p_λ(c|z) (blue). The readout gives w, s = 1 + w, λ and the relative curl."""

    def __init__(self, eps_model, mixture: GaussianMixture, grid: Grid2D | None = None, w: float = 3.0,
                 lam: float = 0.0, c: int = 0, arrows: int = 15):
        from ..toy.fields import as_float64

        self.model, self.mixture, self.c = as_float64(eps_model), mixture, c
        self.grid = grid or Grid2D(3.0, 48)
        self.arrow_grid = Grid2D(self.grid.half_width * (1 - 1 / arrows), arrows)
        slider = w_slider(w, high=8.0)
        self.readout = ipywidgets.Label()
        super().__init__({"w": slider, "λ": lam_slider(lam, -8.0, 8.0)}, FigureView(2, panel_inches=3.2),
                         self.readout)
        ax_curl, ax_classifier = self.view.axes
        h, tail = self.grid.half_width, self.arrow_grid.points().numpy()
        self.curl_image = ax_curl.imshow(torch.zeros(self.grid.n, self.grid.n).numpy(), origin="lower",
                                         extent=(-h, h, -h, h), cmap="RdBu_r")
        arrow = {"angles": "xy", "scale_units": "xy", "scale": 1, "width": 0.006}
        self.field_arrows = ax_curl.quiver(tail[:, 0], tail[:, 1], 0 * tail[:, 0], 0 * tail[:, 1], **arrow)
        self.exact_arrows = ax_classifier.quiver(tail[:, 0], tail[:, 1], 0 * tail[:, 0], 0 * tail[:, 1],
                                                 color="tab:blue", **arrow)
        self.learned_arrows = ax_classifier.quiver(tail[:, 0], tail[:, 1], 0 * tail[:, 0], 0 * tail[:, 1],
                                                   color="tab:red", **arrow)
        for ax, title in ((ax_curl, "curl of ε̃ and the guided score"),
                          (ax_classifier, "implicit classifier: model (red), exact (blue)")):
            ax.set(xlim=(-h, h), ylim=(-h, h), aspect="equal", xticks=[], yticks=[])
            ax.set_title(title, fontsize=9)
        self.view.figure.tight_layout()
        self._on_change()

    def _arrows(self, values: torch.Tensor, longest: float) -> tuple:
        return (values[:, 0] * longest).numpy(), (values[:, 1] * longest).numpy()

    def update(self) -> None:
        from ..toy.fields import cfg_field, curl_from_jacobian, implicit_classifier_gradient, jacobian, relative_curl

        w, lam = self.sliders["w"].value, self.sliders["λ"].value
        field = cfg_field(self.model, lam, self.c, w, self.mixture.num_classes)
        jac = jacobian(field, self.grid.points())
        curl = curl_from_jacobian(jac).reshape(self.grid.n, self.grid.n)
        limit = max(curl.abs().max().item(), 1e-12)
        self.curl_image.set_data(curl.numpy())
        self.curl_image.set_clim(-limit, limit)
        points, longest = self.arrow_grid.points(), 0.9 * self.arrow_grid.cell
        with torch.no_grad():
            score = -field(points)
        self.field_arrows.set_UVC(*self._arrows(score / score.norm(dim=1).max(), longest))
        lam_batch, labels = _full(len(points), lam), torch.full((len(points),), self.c)
        exact = self.mixture.implicit_classifier_gradient(points, lam_batch, labels)
        learned = implicit_classifier_gradient(self.model, points, lam_batch, labels, self.mixture.num_classes)
        scale = exact.norm(dim=1).max().clamp_min(1e-12)
        self.exact_arrows.set_UVC(*self._arrows(exact / scale, longest))
        self.learned_arrows.set_UVC(*self._arrows(learned / scale, longest))
        self.readout.value = f"{guidance_label(w)}, {level_label(lam)}, relative curl {relative_curl(jac):.2e}"


def _untrained_toy_mlp():
    from ..nets.mlp import EpsMLP, MLPConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return EpsMLP(MLPConfig())


BENCHMARKS["learned CFG field curl (toy MLP)"] = lambda: CFGFieldWidget(_untrained_toy_mlp(),
                                                                        GaussianMixture.three_gaussians())


# ---- digits: sample grids at precomputed guidance strengths ----

class SampleGridSlider(SliderPanel):
    """A class-by-row grid of image samples for each precomputed w; the w slider snaps to the nearest one.

    samples: {w: images (rows·cols, C, H, W) in [−1, 1]}, row k holding class k (cfgedu.images.sampling).
    """

    def __init__(self, samples: dict[float, torch.Tensor], rows: int):
        from ..images.sampling import image_grid

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


# ---- notebook 04: guidance on a λ interval, against the tilted target ----

class GuidanceIntervalWidget(SliderPanel):
    """Exact-score CFG samples (Algorithm 2, v = 0.3) with guidance w applied only for λ in an interval
    (Kynkäänniemi et al. 2024), beside the tilted target Σ_c π_c π_w(x|c); the title reports the TV to
    π_w, the Bayes IS and the Fréchet distance to the data. The full interval [−20, 20] is plain CFG."""

    def __init__(self, mixture: GaussianMixture, w: float = 3.0, interval: tuple[float, float] = (-20.0, 20.0),
                 per_class: int = 400, steps: int = 24, bins: int = 48, seed: int = 0):
        from ..toy.grid import HistogramTV, tilted_densities

        self.mixture, self.per_class, self.steps, self.seed = mixture, per_class, steps, seed
        self.grid = Grid2D.covering(mixture, n=bins * 4)
        self.histogram = HistogramTV(self.grid, bins)
        self.targets = {}
        self._tilted = lambda value: tilted_densities(mixture, self.grid, value)
        slider = w_slider(w, low=0.0, high=8.0)
        interval_slider = ipywidgets.FloatRangeSlider(value=interval, min=-20.0, max=20.0, step=0.5,
                                                      description="λ interval", readout_format=".1f")
        super().__init__({"w": slider, "interval": interval_slider}, FigureView(2), GuidanceReadout(slider).label)
        target = mix(mixture, self.target(w))
        self.target_image = density_image(self.view.axes[0], self.grid, target, title="")
        self.sample_image = density_image(self.view.axes[1], Grid2D(self.grid.half_width, bins), target, title="")
        self.view.figure.tight_layout()
        self._on_change()

    def target(self, w: float) -> torch.Tensor:
        if w not in self.targets:
            self.targets[w] = self._tilted(w)
        return self.targets[w]

    def samples(self, w: float, low: float, high: float) -> torch.Tensor:
        """(K, N, 2) CFG samples with guidance w on [low, high] and none outside."""
        from ..core.guidance import interval_weight
        from ..toy.tradeoff import SAMPLERS, draw

        weight = interval_weight(w, low, high) if low < high else 0.0
        return draw(self.mixture, self.mixture.num_classes, weight, self.per_class, self.steps,
                    SAMPLERS["ancestral-v0.3"], self.seed)

    def update(self) -> None:
        from ..toy.metrics import bayes_inception_score, frechet_pooled
        from .plotting import histogram_density

        w, (low, high) = self.sliders["w"].value, self.sliders["interval"].value
        targets, samples = self.target(w), self.samples(w, low, high)
        target = mix(self.mixture, targets)
        self.target_image.set_data(target.numpy())
        self.target_image.set_clim(0, target.max().item())
        self.target_image.axes.set_title(f"target Σπ_c π_w(x|c), {guidance_label(w)}", fontsize=8)
        shown = histogram_density(self.grid, samples, self.histogram.bins, self.mixture.weights)
        self.sample_image.set_data(shown.numpy())
        self.sample_image.set_clim(0, shown.max().item())
        tv = sum(self.histogram(s, d) for s, d in zip(samples, targets)) / len(targets)
        pooled = samples.reshape(-1, 2)
        self.sample_image.axes.set_title(
            f"CFG on λ∈[{low:g}, {high:g}]: TV {tv:.2f}, IS {bayes_inception_score(self.mixture, pooled):.2f}, "
            f"FD {frechet_pooled(self.mixture, pooled):.2f}", fontsize=8)


BENCHMARKS["guidance interval vs tilted target (exact toy)"] = lambda: GuidanceIntervalWidget(
    GaussianMixture.three_gaussians())
