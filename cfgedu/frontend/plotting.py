"""Matplotlib helpers: each takes an ax and data and returns the ax (or the artist it draws)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ..core.guidance import EpsModel
from ..core.io import atomic_write
from ..images.sampling import image_grid
from ..toy.fields import as_float64, cfg_field, curl_from_jacobian, jacobian, relative_curl
from ..toy.figure2 import Figure2
from ..toy.grid import Grid2D, grid_values, mix
from ..toy.helmholtz import HelmholtzHodge
from ..toy.metrics import radial_distances
from ..toy.mixture import GaussianMixture
from ..toy.tradeoff import NFE_SAMPLERS, Sweep


def save_grid(images: torch.Tensor, rows: int, path: Path) -> Path:
    """Write image_grid(images, rows) atomically in the format of path's suffix (grey for one channel)."""
    grid, path = image_grid(images, rows), Path(path)
    cmap = "gray" if grid.ndim == 2 else None
    return atomic_write(path, lambda handle: plt.imsave(handle, grid, cmap=cmap, vmin=0, vmax=1,
                                                        format=path.suffix[1:].lower()))


def _bare(ax, title: str | None):
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def density_image(ax, grid: Grid2D, density: torch.Tensor, title: str | None = None, cmap: str = "magma",
                  vmax: float | None = None):
    """Show a grid density (n, n) [y, x] as an image over the grid's extent; returns the AxesImage."""
    h = grid.half_width
    image = ax.imshow(density.numpy(), origin="lower", extent=(-h, h, -h, h), cmap=cmap, vmin=0, vmax=vmax,
                      interpolation="bilinear")
    _bare(ax, title)
    return image


def histogram_density(grid: Grid2D, samples: torch.Tensor, bins: int,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """A (bins, bins) [y, x] histogram density of 2D samples over the grid's extent.

    samples: (N, 2), or (K, N, 2) with `weights` (K,) mixing the per-class histograms.
    """
    h = grid.half_width
    if samples.ndim == 3:
        return sum(wk * histogram_density(grid, s, bins) for wk, s in zip(weights.tolist(), samples, strict=True))
    counts, _ = torch.histogramdd(samples[:, [1, 0]].double(), bins=[bins, bins], range=[-h, h, -h, h])
    return counts / (samples.shape[0] * (2 * h / bins) ** 2)


def sample_histogram(ax, grid: Grid2D, samples: torch.Tensor, bins: int = 128, weights=None,
                     title: str | None = None, cmap: str = "magma"):
    """Show samples (N, 2) or (K, N, 2) as a histogram image on the grid's extent; returns the AxesImage."""
    coarse = Grid2D(grid.half_width, bins)
    return density_image(ax, coarse, histogram_density(grid, samples, bins, weights), title=title, cmap=cmap)


# ---- the toy's figures ----

def plot_figure2(result: Figure2, display_bins: int = 128):
    """Row 1: the unguided marginal and the mixtures of normalised guided conditionals (the paper's figure).
    Further rows: histograms of CFG samples from each sampler, annotated with the mean TV to the target."""
    names = list(result.panels[0].samples)
    fig, axes = plt.subplots(1 + len(names), len(result.panels),
                             figsize=(3.2 * len(result.panels), 3.2 * (1 + len(names))), squeeze=False)
    for j, panel in enumerate(result.panels):
        target = mix(result.mixture, panel.densities)
        title = "unguided marginal" if j == 0 else f"w = {panel.w:g} (s = {1 + panel.w:g})"
        density_image(axes[0, j], result.grid, target, title=f"target: {title}")
        for i, name in enumerate(names, start=1):
            tv = sum(result.histogram(panel.samples[name][c], panel.densities[c])
                     for c in range(result.mixture.num_classes)) / result.mixture.num_classes
            floor = sum(result.noise_floors[j]) / len(result.noise_floors[j])
            sample_histogram(axes[i, j], result.grid, panel.samples[name], display_bins,
                             weights=result.mixture.class_weights, title=f"{name} CFG: TV {tv:.3f} (floor {floor:.3f})")
    fig.tight_layout()
    return fig


def normalised_curl(field, grid: Grid2D) -> tuple[torch.Tensor, float]:
    """curl f / mean‖J‖_F on the grid (n, n) [y, x] by autograd, and the relative curl (its mean |value|): a map
    whose scale does not depend on the field's size, so panels of different λ share one colour scale."""
    jac = jacobian(field, grid.points())
    return curl_from_jacobian(jac).reshape(grid.n, grid.n) / jac.flatten(1).norm(dim=1).mean(), relative_curl(jac)


def plot_curl_panels(eps_model: EpsModel, ws, lams, c: int = 0, grid: Grid2D = Grid2D(3.0, 96), title: str = "",
                     mixture: GaussianMixture | None = None):
    """Rows λ, columns w: the curl of the CFG field over mean‖J‖_F (normalised_curl) on one diverging colour scale
    with a colour bar, the streamlines of the guided score −ε̃/σ on top, and the class means (+) when a mixture is
    given; each title gives the relative curl."""
    model = as_float64(eps_model)
    fields = {(lam, w): cfg_field(model, lam, c, w) for lam in lams for w in ws}
    curls = {key: normalised_curl(field, grid) for key, field in fields.items()}
    limit = max(max(curl.abs().max().item() for curl, _ in curls.values()), 1e-12)
    fig, axes = plt.subplots(len(lams), len(ws), figsize=(3.2 * len(ws) + 0.8, 3.2 * len(lams)), squeeze=False)
    h, axis = grid.half_width, grid.axis.numpy()
    for (i, lam), (j, w) in ((row, column) for row in enumerate(lams) for column in enumerate(ws)):
        (curl, relative), values = curls[(lam, w)], -grid_values(fields[(lam, w)], grid).numpy()  # toward the modes
        ax = axes[i, j]
        image = ax.imshow(curl.numpy(), origin="lower", extent=(-h, h, -h, h), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.streamplot(axis, axis, values[..., 0], values[..., 1], color="k", linewidth=0.5, density=0.8)
        if mixture is not None:
            ax.plot(*mixture.means.T.numpy(), "+", color="tab:green", ms=9, mew=2)
        _bare(ax, f"λ = {lam:g}, w = {w:g} (s = {1 + w:g})\nrelative curl {relative:.1e}")
    fig.colorbar(image, ax=axes, shrink=0.8, label="curl / mean‖J‖_F")
    fig.suptitle(title or "curl of the CFG field (colour) and its streamlines", fontsize=10)
    return fig


def plot_helmholtz(split: HelmholtzHodge, title: str = ""):
    """The field, its gradient part ∇φ and its rotational part ∇^⊥ψ as streamlines; ψ shaded under the last."""
    h, axis = split.grid.half_width, split.grid.axis.numpy()
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    parts = (("field $f$", split.field), (r"gradient part $\nabla\varphi$", split.gradient),
             (r"rotational part $\nabla^\perp\psi$ over $\psi$", split.rotational))
    for ax, (name, values) in zip(axes, parts, strict=True):
        values = values.numpy()
        if ax is axes[2]:
            ax.imshow(split.stream.numpy(), origin="lower", extent=(-h, h, -h, h), cmap="PuOr")
        ax.streamplot(axis, axis, values[..., 0], values[..., 1], color="k", linewidth=0.5, density=0.8)
        ax.set_xlim(-h, h)
        ax.set_ylim(-h, h)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
    fig.suptitle(title or f"Helmholtz–Hodge: rotational energy fraction {split.rotational_energy_fraction:.1e}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_fid_is(ax, curves: dict[str, list[tuple[float, float, float]]], *, annotate: bool = True,
                xlabel: str = "IS (higher: more class-typical)", ylabel: str = "FID (lower: closer to the data)"):
    """The paper's trade-off picture: one curve per label through its (w, FID, IS) points, FID against IS, each
    point annotated with its w; returns the ax."""
    for label, points in curves.items():
        ws, fids, scores = zip(*points, strict=True)
        ax.plot(scores, fids, "o-", ms=4, label=label)
        for w, fid, score in points if annotate else ():
            ax.annotate(f"w={w:g}", (score, fid), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return ax


def plot_distance_histograms(ax, distances: dict[str, torch.Tensor], xlabel: str, bins: int = 30):
    """One step histogram (density, log scale) per named set of distances, on shared bins; returns the ax."""
    upper = max(d.max().item() for d in distances.values())
    for name, d in distances.items():
        ax.hist(d.numpy(), bins=bins, range=(0, upper), histtype="step", density=True, label=name)
    ax.set(yscale="log", xlabel=xlabel, ylabel="density")
    ax.legend(fontsize=8)
    return ax


def plot_tradeoff(sweep: Sweep, ax=None):
    """FD against IS (Bayes) of the toy sweep: one curve per p_uncond (learned, largest T) and the exact-ε* curve,
    w increasing along each; the guidance interval and the linear w schedule as extra points."""
    ax = ax or plt.subplots(figsize=(6, 4.5))[1]
    T = max(sweep.config.steps)
    rows = {f"learned p_uncond={p:g}": sweep.select(model="learned", p_uncond=p, T=T, kind="cfg")
            for p in sweep.config.p_unconds}
    rows["exact ε*"] = sweep.select(model="exact", sampler="ancestral-v0.3", T=T, kind="cfg")
    rows["exact, guidance interval"] = sweep.select(model="exact", sampler="interval")
    rows["exact, linear w schedule"] = sweep.select(model="exact", sampler="schedule")
    curves = {label: [(r["w"], r["fd"], r["is_bayes"]) for r in found] for label, found in rows.items() if found}
    plot_fid_is(ax, curves, annotate=False, xlabel="IS with the exact Bayes posterior (higher: more class-typical)",
                ylabel="Fréchet distance to the data (lower: closer)")
    ax.set_title(f"Guidance trade-off on the toy (w from {min(sweep.config.ws):g} to {max(sweep.config.ws):g})")
    return ax


def plot_boundary_push(sweep: Sweep, mixture: GaussianMixture, c: int = 0, ax=None):
    """Histograms of ‖x − μ_c‖ for class c: the target π_w against each sampler (SPEC 4.5, item 4)."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    bins = torch.linspace(0, 3, 61)
    for label, samples in sweep.boundary.items():
        r = radial_distances(samples[c], mixture.class_moments(c)[0])
        ax.hist(r.numpy(), bins=bins.numpy(), density=True, histtype="step", lw=2 if label == "target" else 1,
                color="k" if label == "target" else None, label=f"{label} (mean {r.mean():.2f})")
    ax.set_xlabel(f"distance from the class-{c} mean μ_{c}")
    ax.set_ylabel("density")
    ax.set_title(f"Boundary push at w = {sweep.config.boundary_w:g}")
    ax.legend(fontsize=7)
    return ax


def plot_tv_against_nfe(sweep: Sweep, fig=None):
    """TV to π_w against the number of network evaluations with exact ε*, one panel per w of the NFE rows and one line
    per sampler, with the noise floor: which sampler reaches it first, and where each converges under guidance."""
    fig = fig or plt.figure(figsize=(10, 4))
    axes = fig.subplots(1, len(sweep.config.nfe_ws), squeeze=False)[0]
    for ax, w in zip(axes, sweep.config.nfe_ws, strict=True):
        for name in NFE_SAMPLERS:
            rows = sorted(sweep.select(model="exact", sampler=name, w=w, kind="cfg"), key=lambda r: r["nfe"])
            rows = [r for r in rows if r["nfe"] in sweep.config.nfes]
            ax.plot([r["nfe"] for r in rows], [r["tv_to_target"] for r in rows], "o-", label=name)
        floor = [r["tv_noise_floor"] for r in sweep.select(model="exact", w=w, kind="cfg", sampler="ddim")][:1]
        if floor:
            ax.axhline(floor[0], color="k", ls=":", label="noise floor")
        ax.set(xscale="log", xlabel="network evaluations (NFE)", ylabel=f"TV to π_w, w = {w:g}", ylim=(0, 1.02),
               title=f"w = {w:g}" + (" (the data)" if w == 0 else ""))
        ax.set_xticks(sweep.config.nfes, [str(n) for n in sweep.config.nfes])
        ax.legend(fontsize=8)
    return fig


def plot_paths(ax, grid: Grid2D, background: torch.Tensor, points: torch.Tensor, lines: int = 12,
               title: str | None = None):
    """Sample paths (F, K, n, 2) over a grid density (n, n): the first `lines` paths of each class as lines from
    their start in the noise (a black ring) to the data, and every endpoint as a dot in its class colour; returns
    the ax."""
    density_image(ax, grid, background, title=title, cmap="Greys")
    for c in range(points.shape[1]):
        colour = f"C{c}"
        for path in points[:, c, :lines].transpose(0, 1):  # (F, 2) each
            ax.plot(path[:, 0], path[:, 1], color=colour, lw=0.6, alpha=0.6)
        ax.scatter(points[0, c, :lines, 0], points[0, c, :lines, 1], s=12, facecolors="none", edgecolors="k", lw=0.6)
        ax.scatter(points[-1, c, :, 0], points[-1, c, :, 1], s=3, color=colour, alpha=0.5, lw=0)
    h = grid.half_width
    ax.set(xlim=(-h, h), ylim=(-h, h))
    return ax


def paths_animation(grid: Grid2D, paths, backgrounds: list[torch.Tensor], trail: int = 4):
    """A matplotlib animation of the samples moving from noise to data, one panel per w of `paths`
    (cfgedu.toy.trajectories.Paths) over its noised densities `backgrounds` (F, n, n) each, with the last `trail`
    frames drawn as tails. Show it in a notebook with IPython.display.HTML(animation.to_jshtml())."""
    from matplotlib.animation import FuncAnimation

    frames, K = paths.points.shape[1], paths.points.shape[2]
    fig, axes = plt.subplots(1, len(paths.ws), figsize=(3.6 * len(paths.ws), 3.8), squeeze=False)
    artists = []
    for ax, w, background in zip(axes[0], paths.ws, backgrounds, strict=True):
        image = density_image(ax, grid, background[0], cmap="Greys", vmax=background.max().item())
        dots = [ax.scatter([], [], s=4, color=f"C{c}", lw=0) for c in range(K)]
        tails = [ax.plot([], [], color=f"C{c}", lw=0.4, alpha=0.5)[0] for c in range(K)]
        artists.append((ax, w, background, image, dots, tails))

    def draw(frame: int):
        changed = []
        for (ax, w, background, image, dots, tails), points in zip(artists, paths.points, strict=True):
            image.set_data(background[frame].numpy())
            start = max(0, frame - trail)
            for c in range(K):
                dots[c].set_offsets(points[frame, c].numpy())
                tail = points[start:frame + 1, c, :12]  # (trail, 12, 2): NaN rows break the line between samples
                gap = torch.full((1, tail.shape[1], 2), float("nan"), dtype=tail.dtype)
                xy = torch.cat([tail, gap]).transpose(0, 1).reshape(-1, 2)
                tails[c].set_data(xy[:, 0].numpy(), xy[:, 1].numpy())
            ax.set_title(f"w = {w:g} (s = {1 + w:g}), λ = {paths.levels[frame].item():.1f}", fontsize=9)
            changed += [image, *dots, *tails]
        return changed

    fig.tight_layout()
    return FuncAnimation(fig, draw, frames=frames, interval=150, blit=False)


def plot_path_frames(grid: Grid2D, paths, backgrounds: list[torch.Tensor], frames: list[int]):
    """Snapshots of the samples at the given frames, one row per w of `paths` (cfgedu.toy.trajectories.Paths), each
    over its noised density (F, n, n) at that frame: the animation as a still figure; returns the figure."""
    fig, axes = plt.subplots(len(paths.ws), len(frames), figsize=(2.1 * len(frames), 2.3 * len(paths.ws)),
                             squeeze=False)
    h = grid.half_width
    for row, w, points, background in zip(axes, paths.ws, paths.points, backgrounds, strict=True):
        for ax, frame in zip(row, frames, strict=True):
            density_image(ax, grid, background[frame], cmap="Greys",
                          title=f"w = {w:g}, λ = {paths.levels[frame].item():.1f}")
            for c in range(points.shape[1]):
                ax.scatter(points[frame, c, :, 0], points[frame, c, :, 1], s=2, color=f"C{c}", lw=0, alpha=0.6)
            ax.set(xlim=(-h, h), ylim=(-h, h))
    fig.tight_layout()
    return fig
