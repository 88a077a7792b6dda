"""Slider panels of the exact and learned 2D toy (notebooks 01-04): the forward process, exact scores and the
implicit classifier, Figure 2, the curl of a learned CFG field, and guidance on a λ interval."""
from __future__ import annotations

import ipywidgets
import torch

from ...core.guidance import classifier_guided, guided, interval_weight
from ...core.schedule import q_sample
from ...core.tensors import make_generator
from ...nets.mlp import EpsMLP, MLPConfig
from ...toy.fields import (
    as_float64,
    cfg_field,
    implicit_classifier_gradient,
    level_field,
)
from ...toy.grid import Grid2D, HistogramTV, TiltedTargets, mix, normalize
from ...toy.metrics import bayes_inception_score, frechet_pooled, mode_shares
from ...toy.mixture import GaussianMixture
from ...toy.sampling import class_samples
from ..plotting import density_image, histogram_density, normalised_curl
from .base import (
    BENCHMARKS,
    FigureView,
    GuidanceReadout,
    SliderPanel,
    _full,
    guidance_label,
    lam_slider,
    level_label,
    w_slider,
)


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
        for ax, title in zip(self.view.axes, self.TITLES, strict=True):
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
                                                         self.fields(self.arrow_grid.points()), strict=True):
            image.set_data(background.numpy())
            image.set_clim(0, top)
            field = field * longest / field.norm(dim=1).max().clamp_min(1e-12)
            quiver.set_UVC(field[:, 0].numpy(), field[:, 1].numpy())
        self.readout.value = f"{level_label(self.sliders['λ'].value)}, class c = {self.sliders['c'].value}"


class Figure2Widget(SliderPanel):
    """Figure 2 with a w slider: the unguided marginal, the target Σ_c π_c π_w(x|c) with π_w(x|c) ∝ p(x|c) p(c|x)^w,
    and what exact-score CFG (Algorithm 2) samples at the precomputed w nearest the slider, with its TV to the target
    and the TV of exact draws from the target (the noise floor).

    log p(x|c) and log p(c|x) are computed once on the grid, so a new w costs one exp per class; the samples are drawn
    once per `sample_ws` when the panel is built.
    """

    def __init__(self, mixture: GaussianMixture, grid: Grid2D | None = None, w: float = 4.0, high: float = 16.0,
                 sample_ws: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0), per_class: int = 1000,
                 steps: int = 32, bins: int = 32, seed: int = 0):
        self.mixture, self.grid = mixture, grid or Grid2D.covering(mixture, n=6 * bins)
        points = self.grid.points()
        self.log_conditional = mixture.log_prob_classes(points).T  # (K, n*n): log p(x|c)
        self.log_classifier = mixture.posterior(points).log().T  # (K, n*n): log p(c|x)
        self.histogram, self.bins = HistogramTV(self.grid, bins), 2 * bins
        self.drawn = {w_: self._draw(w_, per_class, steps, seed) for w_ in sample_ws}  # w -> (samples, TV, floor)
        slider = w_slider(w, high=high)
        super().__init__({"w": slider}, FigureView(3), GuidanceReadout(slider).label)
        unguided = mix(mixture, self.conditionals(0.0))
        density_image(self.view.axes[0], self.grid, unguided, title="unguided marginal p(x)")
        self.image = density_image(self.view.axes[1], self.grid, unguided, title="")
        self.sample_image = density_image(self.view.axes[2], Grid2D(self.grid.half_width, self.bins), unguided)
        self.view.figure.tight_layout()
        self._on_change()

    def conditionals(self, w: float) -> torch.Tensor:
        """π_w(x|c) for every class, normalised on the grid, (K, n, n)."""
        log_tilted = self.log_conditional + w * self.log_classifier  # (K, n*n)
        return torch.stack([normalize(row, self.grid.cell).reshape(self.grid.n, self.grid.n) for row in log_tilted])

    def _draw(self, w: float, per_class: int, steps: int, seed: int) -> tuple[torch.Tensor, float, float]:
        """Exact-score CFG samples (K, N, 2) at w, their mean TV to π_w and the mean noise floor."""
        generator = make_generator(seed)
        samples = class_samples(self.mixture, self.mixture.num_classes, w, per_class, generator=generator, steps=steps)
        targets = self.conditionals(w)
        tv = sum(map(self.histogram, samples, targets)) / len(targets)
        floor = sum(self.histogram.noise_floor(target, per_class, generator) for target in targets) / len(targets)
        return samples, tv, floor

    def update(self) -> None:
        w = self.sliders["w"].value
        target = mix(self.mixture, self.conditionals(w))
        self.image.set_data(target.numpy())
        self.image.set_clim(0, target.max().item())
        self.image.axes.set_title(f"target Σπ_c π_w(x|c), {guidance_label(w)}", fontsize=8)
        nearest = min(self.drawn, key=lambda drawn_w: abs(drawn_w - w))
        samples, tv, floor = self.drawn[nearest]
        shown = histogram_density(self.grid, samples, self.bins, self.mixture.class_weights)
        self.sample_image.set_data(shown.numpy())
        self.sample_image.set_clim(0, shown.max().item())
        self.sample_image.axes.set_title(f"exact-score CFG at w = {nearest:g}: TV {tv:.2f} (floor {floor:.2f})",
                                         fontsize=8)


class CurlPanel:
    """One axes of a field's normalised curl (colour, a fixed symmetric scale) under arrows of the guided score."""

    def __init__(self, ax, grid: Grid2D, arrow_grid: Grid2D, limit: float, title: str):
        h, tail = grid.half_width, arrow_grid.points().numpy()
        self.grid, self.arrow_grid = grid, arrow_grid
        self.image = ax.imshow(torch.zeros(grid.n, grid.n).numpy(), origin="lower", extent=(-h, h, -h, h),
                               cmap="RdBu_r", vmin=-limit, vmax=limit)
        self.arrows = ax.quiver(tail[:, 0], tail[:, 1], 0 * tail[:, 0], 0 * tail[:, 1], angles="xy",
                                scale_units="xy", scale=1, width=0.006)
        ax.set(xlim=(-h, h), ylim=(-h, h), aspect="equal", xticks=[], yticks=[])
        ax.set_title(title, fontsize=9)

    def show(self, field) -> float:
        """Draw the field's normalised curl and its guided score −field/σ as arrows; returns its relative curl."""
        curl, relative = normalised_curl(field, self.grid)
        self.image.set_data(curl.numpy())
        with torch.no_grad():
            score = -field(self.arrow_grid.points())
        self.arrows.set_UVC(*unit_arrows(score, 0.9 * self.arrow_grid.cell))
        return relative


def unit_arrows(values: torch.Tensor, longest: float) -> tuple:
    """Arrow components (U, V) scaled so that the longest arrow is `longest` long."""
    values = values * longest / values.norm(dim=1).max().clamp_min(1e-12)
    return values[:, 0].numpy(), values[:, 1].numpy()


def curl_limit(field, grid: Grid2D) -> float:
    """A colour scale for normalised curls: the largest |curl| / mean‖J‖_F of the field."""
    return max(normalised_curl(field, grid)[0].abs().max().item(), 1e-12)


class CFGFieldWidget(SliderPanel):
    """A learned model's CFG field ε̃ = (1 + w)ε(z, c) − wε(z, ∅) at level λ: its curl over mean‖J‖_F (colour, one
    scale for every w and λ, set by the largest w at the initial λ) under arrows of the guided score −ε̃/σ, beside
    the implicit classifier −(ε(z, c) − ε(z, ∅))/σ of the model (red) and the exact ∇log p_λ(c|z) (blue). The
    readout gives w, s = 1 + w, λ and the relative curl."""

    def __init__(self, eps_model, mixture: GaussianMixture, grid: Grid2D | None = None, w: float = 3.0,
                 lam: float = 0.0, c: int = 0, arrows: int = 15, high: float = 8.0):
        self.model, self.mixture, self.c = as_float64(eps_model), mixture, c
        self.grid = grid or Grid2D(3.0, 48)
        arrow_grid = Grid2D(self.grid.half_width * (1 - 1 / arrows), arrows)
        slider = w_slider(w, high=high)
        self.readout = ipywidgets.Label()
        super().__init__({"w": slider, "λ": lam_slider(lam, -8.0, 8.0)}, FigureView(2, panel_inches=3.2),
                         self.readout)
        ax_curl, ax_classifier = self.view.axes
        limit = curl_limit(cfg_field(self.model, lam, c, high, mixture.num_classes), self.grid)
        self.curl = CurlPanel(ax_curl, self.grid, arrow_grid, limit, "curl / mean‖J‖ of ε̃, guided score")
        self.classifier = CurlPanel(ax_classifier, self.grid, arrow_grid, limit,
                                    "implicit classifier: model (red), exact (blue)")
        self.classifier.image.set_visible(False)
        self.exact_arrows = ax_classifier.quiver(*arrow_grid.points().T.numpy(), *torch.zeros(2, arrows**2).numpy(),
                                                 color="tab:blue", angles="xy", scale_units="xy", scale=1, width=0.006)
        self.classifier.arrows.set_color("tab:red")
        self.view.figure.colorbar(self.curl.image, ax=ax_curl, shrink=0.8)
        self.view.figure.tight_layout()
        self._on_change()

    def update(self) -> None:
        w, lam = self.sliders["w"].value, self.sliders["λ"].value
        relative = self.curl.show(cfg_field(self.model, lam, self.c, w, self.mixture.num_classes))
        points = self.classifier.arrow_grid.points()
        lam_batch, labels = _full(len(points), lam), torch.full((len(points),), self.c)
        exact = self.mixture.implicit_classifier_gradient(points, lam_batch, labels)
        learned = implicit_classifier_gradient(self.model, points, lam_batch, labels, self.mixture.num_classes)
        longest = 0.9 * self.classifier.arrow_grid.cell / exact.norm(dim=1).max().clamp_min(1e-12).item()
        self.exact_arrows.set_UVC(*(exact * longest).T.numpy())
        self.classifier.arrows.set_UVC(*(learned * longest).T.numpy())
        self.readout.value = f"{guidance_label(w)}, {level_label(lam)}, relative curl {relative:.2e}"


class GuidanceFieldsWidget(SliderPanel):
    """CFG beside classifier guidance, both built on the same learned conditional model ε_θ(z, c) at level λ: the CFG
    field (1 + w)ε_θ(z, c) − wε_θ(z, ∅) and classifier guidance ε_θ(z, c) − wσ∇log p_φ(c|z) with a trained noisy
    classifier. Colour: curl / mean‖J‖_F on one scale for both; arrows: the guided score. The classifier's term is a
    gradient, so only CFG's curl grows with w."""

    def __init__(self, eps_model, classifier, mixture: GaussianMixture, grid: Grid2D | None = None, w: float = 3.0,
                 lam: float = 0.0, c: int = 0, arrows: int = 15, high: float = 8.0):
        model, classifier = as_float64(eps_model), as_float64(classifier)
        self.guidances = {"CFG": lambda w_: guided(model, w_, mixture.num_classes),
                          "classifier guidance": lambda w_: classifier_guided(model, classifier, w_,
                                                                              mixture.num_classes)}
        self.c, self.grid = c, grid or Grid2D(3.0, 48)
        arrow_grid = Grid2D(self.grid.half_width * (1 - 1 / arrows), arrows)
        slider = w_slider(w, low=0.0, high=high)
        self.readout = ipywidgets.Label()
        super().__init__({"w": slider, "λ": lam_slider(lam, -8.0, 8.0)}, FigureView(2, panel_inches=3.2),
                         self.readout)
        limit = curl_limit(level_field(self.guidances["CFG"](high), lam, c), self.grid)
        self.panels = {name: CurlPanel(ax, self.grid, arrow_grid, limit, name)
                       for name, ax in zip(self.guidances, self.view.axes, strict=True)}
        self.view.figure.colorbar(self.panels["CFG"].image, ax=self.view.axes, shrink=0.8)
        self._on_change()

    def update(self) -> None:
        w, lam = self.sliders["w"].value, self.sliders["λ"].value
        curls = {name: panel.show(level_field(self.guidances[name](w), lam, self.c))
                 for name, panel in self.panels.items()}
        self.readout.value = (f"{guidance_label(w)}, {level_label(lam)}; relative curl: "
                              + ", ".join(f"{name} {curl:.1e}" for name, curl in curls.items()))


def _untrained_toy_mlp():

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return EpsMLP(MLPConfig())


class GuidanceIntervalWidget(SliderPanel):
    """Exact-score CFG samples (Algorithm 2, v = 0.3) with guidance w applied only for λ in an interval
    (Kynkäänniemi et al. 2024), beside the tilted target Σ_c π_c π_w(x|c); the title reports the TV to
    π_w, the Bayes IS and the Fréchet distance to the data. The full interval [−20, 20] is plain CFG.
    When class 0 has several modes (GaussianMixture.two_modes), the titles give the share of class 0 at each."""

    def __init__(self, mixture: GaussianMixture, w: float = 3.0, interval: tuple[float, float] = (-20.0, 20.0),
                 per_class: int = 400, steps: int = 24, bins: int = 48, seed: int = 0):

        self.mixture, self.per_class, self.steps, self.seed = mixture, per_class, steps, seed
        self.grid = Grid2D.covering(mixture, n=bins * 4)
        self.histogram = HistogramTV(self.grid, bins)
        self.target = TiltedTargets(mixture, self.grid)
        slider = w_slider(w, low=0.0, high=8.0)
        interval_slider = ipywidgets.FloatRangeSlider(value=interval, min=-20.0, max=20.0, step=0.5,
                                                      description="λ interval", readout_format=".1f")
        super().__init__({"w": slider, "interval": interval_slider}, FigureView(2), GuidanceReadout(slider).label)
        target = mix(mixture, self.target(w))
        self.target_image = density_image(self.view.axes[0], self.grid, target, title="")
        self.sample_image = density_image(self.view.axes[1], Grid2D(self.grid.half_width, bins), target, title="")
        self.update()  # the titles first, so that the layout leaves room for them
        self.view.figure.tight_layout()
        self._on_change()

    def samples(self, w: float, low: float, high: float) -> torch.Tensor:
        """(K, N, 2) CFG samples with guidance w on [low, high] and none outside."""
        weight = interval_weight(w, low, high) if low < high else 0.0
        return class_samples(self.mixture, self.mixture.num_classes, weight, self.per_class,
                             generator=make_generator(self.seed), steps=self.steps)

    def update(self) -> None:
        w, (low, high) = self.sliders["w"].value, self.sliders["interval"].value
        targets, samples = self.target(w), self.samples(w, low, high)
        target = mix(self.mixture, targets)
        self.target_image.set_data(target.numpy())
        self.target_image.set_clim(0, target.max().item())
        self.target_image.axes.set_title(f"target Σπ_c π_w(x|c), {guidance_label(w)}"
                                         f"{self._modes(self.grid.points(), targets[0].reshape(-1))}", fontsize=8)
        shown = histogram_density(self.grid, samples, self.histogram.bins, self.mixture.class_weights)
        self.sample_image.set_data(shown.numpy())
        self.sample_image.set_clim(0, shown.max().item())
        tv = sum(self.histogram(s, d) for s, d in zip(samples, targets, strict=True)) / len(targets)
        pooled = samples.reshape(-1, 2)
        self.sample_image.axes.set_title(
            f"CFG on λ∈[{low:g}, {high:g}]: TV {tv:.2f}, IS {bayes_inception_score(self.mixture, pooled):.2f}, "
            f"FD {frechet_pooled(self.mixture, pooled):.2f}{self._modes(samples[0])}", fontsize=8)

    def _modes(self, points: torch.Tensor, weights: torch.Tensor | None = None) -> str:
        """'\nclass 0 at its modes: 49% / 51%' when class 0 has several modes, else ''."""
        if self.mixture.members[0].sum() < 2:
            return ""
        shares = mode_shares(self.mixture, 0, points, weights)
        return "\nclass 0 at its modes: " + " / ".join(f"{share:.0%}" for share in shares.tolist())


BENCHMARKS["forward process (exact toy)"] = lambda: ForwardProcessWidget(GaussianMixture.three_gaussians())
BENCHMARKS["scores and implicit classifier (exact toy)"] = lambda: ScoreFieldWidget(GaussianMixture.three_gaussians())
BENCHMARKS["Figure 2 (exact toy)"] = lambda: Figure2Widget(GaussianMixture.three_gaussians())
BENCHMARKS["learned CFG field curl (toy MLP)"] = lambda: CFGFieldWidget(_untrained_toy_mlp(),
                                                                        GaussianMixture.three_gaussians())
BENCHMARKS["guidance interval vs tilted target (exact toy)"] = lambda: GuidanceIntervalWidget(
    GaussianMixture.two_modes())
