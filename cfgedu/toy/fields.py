"""How far is a 2D CFG field from a gradient? Curl, circulation and Helmholtz–Hodge (SPEC §5).

With exact scores the CFG field ε̃* = (1 + w)ε*(z, c) − wε*(z) = −σ∇[(1 + w) log p_λ(z|c) − w log p_λ(z)] is a
gradient (its Jacobian is symmetric, its curl zero). With learned ε_θ it is, in general, no gradient at all
(Ho & Salimans 2022, Sec. 3): these functions measure by how much, at one level λ, class c and strength w
(s = 1 + w). Fields are functions `field(points) -> values` from (N, 2) to (N, 2); grids are Grid2D (rows
are y, columns x). Learned models are evaluated in float64 so that round-off does not pass for curl.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from scipy import fft

from ..core.checks import check_finite, check_positive_int
from .figure2 import cfg_samples
from .mixture import GaussianMixture
from .grid import Grid2D, HistogramTV, tilted_densities
from ..core.guidance import EpsModel, guided
from ..core.schedule import alpha_sigma
from ..core.tensors import make_generator

Field = Callable[[torch.Tensor], torch.Tensor]


def as_float64(eps_model: EpsModel) -> EpsModel:
    """A float64 copy of a network (an nn.Module); other eps_models (the exact mixture) are returned as is."""
    return copy.deepcopy(eps_model).double() if isinstance(eps_model, torch.nn.Module) else eps_model


def check_2d(eps_model: EpsModel, num_classes: int) -> None:
    """Raise a ValueError unless eps_model maps (B, 2) points to (B, 2) ε."""
    z, lam, c = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    try:
        out = eps_model(z, lam, c)
    except Exception as error:  # the model rejected 2D input: say so in the caller's terms
        raise ValueError(f"fields need a 2D eps_model taking z of shape (B, 2); this one failed with: {error}") from None
    if tuple(out.shape) != (1, 2):
        raise ValueError(f"fields need a 2D eps_model returning ε of shape (B, 2); got {tuple(out.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


def cfg_field(eps_model: EpsModel, lam: float, c: int, w: float, num_classes: int | None = None) -> Field:
    """z ↦ ε̃(z, λ, c) = (1 + w)ε(z, λ, c) − wε(z, λ, ∅) at fixed λ, c and w (Eq. 6; s = 1 + w)."""
    lam, w = check_finite("lam", lam), check_finite("w", w)
    model = guided(eps_model, w, num_classes)
    if not 0 <= c < model.null_label:
        raise ValueError(f"class c must be in 0..{model.null_label - 1}, got {c}")

    def field(points: torch.Tensor) -> torch.Tensor:
        n = points.shape[0]
        return model(points, torch.full((n,), lam, dtype=points.dtype), torch.full((n,), int(c), dtype=torch.long))

    return field


def jacobian(field: Field, points: torch.Tensor) -> torch.Tensor:
    """J[n, i, j] = ∂f_i/∂z_j at every point by two vector-Jacobian products, (N, 2, 2).

    Valid for fields that act on each point separately (every eps_model does)."""
    z = points.detach().to(torch.float64).requires_grad_(True)
    values = field(z)  # (N, 2)
    rows = [torch.autograd.grad(values[:, i].sum(), z, retain_graph=i == 0)[0] for i in range(2)]
    return torch.stack(rows, dim=1).detach()


def curl_from_jacobian(jac: torch.Tensor) -> torch.Tensor:
    """curl f = ∂f_y/∂x − ∂f_x/∂y = J₂₁ − J₁₂, (N,)."""
    return jac[:, 1, 0] - jac[:, 0, 1]


def relative_curl(jac: torch.Tensor) -> float:
    """mean|curl| / mean‖J‖_F: 0 for a gradient field, scale free."""
    return (curl_from_jacobian(jac).abs().mean() / jac.flatten(1).norm(dim=1).mean()).item()


def grid_values(field: Field, grid: Grid2D) -> torch.Tensor:
    """The field at the grid's cell centres, float64 (n, n, 2) [y, x, component]."""
    with torch.no_grad():
        return field(grid.points()).detach().to(torch.float64).reshape(grid.n, grid.n, 2)


def jacobian_fd(values: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    """J by central differences on the grid (one-sided at the edges), (n·n, 2, 2) row-major like grid.points()."""
    d_dy, d_dx = torch.gradient(values, spacing=grid.cell, dim=(0, 1))  # (n, n, 2) each
    return torch.stack([d_dx, d_dy], dim=-1).reshape(-1, 2, 2)  # J[..., i, j] = ∂f_i/∂z_j


def circulation(field: Field, radius: float, center=(0.0, 0.0), points: int = 256) -> float:
    """Γ = ∮ f·dl counter-clockwise around a circle, by the (spectrally accurate) periodic trapezoid rule."""
    if not check_finite("radius", radius) > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    points = check_positive_int("points", points)
    theta = torch.arange(points, dtype=torch.float64) * (2 * math.pi / points)
    tangent = torch.stack([-torch.sin(theta), torch.cos(theta)], dim=1)  # (m, 2)
    on_circle = torch.tensor(center, dtype=torch.float64) + radius * torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    with torch.no_grad():
        values = field(on_circle).to(torch.float64)
    return ((values * tangent).sum() * (2 * math.pi * radius / points)).item()


# ---- Helmholtz–Hodge on a grid: f = ∇φ + ∇^⊥ψ + harmonic ----

def _faces(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal components on cell faces: f_x on x-faces (n, n+1) and f_y on y-faces (n+1, n), by averaging the
    two neighbouring centres inside and linear extrapolation on the boundary."""
    def along(v: torch.Tensor, dim: int) -> torch.Tensor:
        v = v.movedim(dim, -1)
        inner = (v[..., 1:] + v[..., :-1]) / 2
        first, last = 1.5 * v[..., :1] - 0.5 * v[..., 1:2], 1.5 * v[..., -1:] - 0.5 * v[..., -2:-1]
        return torch.cat([first, inner, last], dim=-1).movedim(-1, dim)

    return along(values[..., 0], 1), along(values[..., 1], 0)


def _poisson_neumann(rhs: torch.Tensor, cell: float) -> torch.Tensor:
    """φ with Δ_h φ = rhs, zero flux through the boundary and zero mean (5-point Laplacian, diagonal under DCT-II)."""
    n_y, n_x = rhs.shape
    eig = ((2 * torch.cos(math.pi * torch.arange(n_y, dtype=torch.float64) / n_y) - 2)[:, None]
           + (2 * torch.cos(math.pi * torch.arange(n_x, dtype=torch.float64) / n_x) - 2)[None]) / cell**2
    coeffs = torch.from_numpy(fft.dctn(rhs.numpy(), type=2, norm="ortho"))
    eig[0, 0] = 1.0  # the constant mode: fixed by the zero mean below
    coeffs = coeffs / eig
    coeffs[0, 0] = 0.0
    return torch.from_numpy(fft.idctn(coeffs.numpy(), type=2, norm="ortho"))


def _poisson_dirichlet(rhs: torch.Tensor, cell: float) -> torch.Tensor:
    """ψ with Δ_h ψ = rhs and ψ = 0 on the boundary faces (5-point Laplacian, diagonal under DST-II)."""
    n_y, n_x = rhs.shape
    eig = ((2 * torch.cos(math.pi * torch.arange(1, n_y + 1, dtype=torch.float64) / n_y) - 2)[:, None]
           + (2 * torch.cos(math.pi * torch.arange(1, n_x + 1, dtype=torch.float64) / n_x) - 2)[None]) / cell**2
    coeffs = torch.from_numpy(fft.dstn(rhs.numpy(), type=2, norm="ortho")) / eig
    return torch.from_numpy(fft.idstn(coeffs.numpy(), type=2, norm="ortho"))


@dataclass
class HelmholtzHodge:
    """f = ∇φ + ∇^⊥ψ + h on a grid, all (n, n, 2) at cell centres except the scalars φ, ψ (n, n).

    ∇φ carries all of f's divergence and its normal flux through the boundary (Δφ = div f, Neumann, by DCT);
    ∇^⊥ψ = (−∂_yψ, ∂_xψ) carries its curl (Δψ = curl f, Dirichlet, by DST); h is the harmonic rest.
    rotational_energy_fraction = ‖f − ∇φ‖²/‖f‖², measured on the cell faces where the split is exact:
    there f − ∇φ has zero discrete divergence and zero normal flux.
    """

    grid: Grid2D
    field: torch.Tensor
    potential: torch.Tensor
    gradient: torch.Tensor
    stream: torch.Tensor
    rotational: torch.Tensor
    rotational_energy_fraction: float
    face_divergence_residual: float

    @property
    def harmonic(self) -> torch.Tensor:
        return self.field - self.gradient - self.rotational


def helmholtz_hodge(values: torch.Tensor, grid: Grid2D) -> HelmholtzHodge:
    """Split a field sampled at the grid's cell centres, values (n, n, 2) [y, x, component]."""
    if values.shape != (grid.n, grid.n, 2) or grid.n < 3:
        raise ValueError(f"values must have shape ({grid.n}, {grid.n}, 2) on a grid with n >= 3, got {tuple(values.shape)}")
    values, h = values.to(torch.float64), grid.cell
    fx, fy = _faces(values)
    inner_x, inner_y = fx.clone(), fy.clone()
    inner_x[:, [0, -1]], inner_y[[0, -1], :] = 0.0, 0.0  # the boundary flux is given to ∇φ on both sides
    potential = _poisson_neumann((inner_x.diff(dim=1) + inner_y.diff(dim=0)) / h, h)
    gx, gy = fx.clone(), fy.clone()
    gx[:, 1:-1], gy[1:-1, :] = potential.diff(dim=1) / h, potential.diff(dim=0) / h
    rx, ry = fx - gx, fy - gy
    residual = ((rx.diff(dim=1) + ry.diff(dim=0)) / h).abs().max() / (values.abs().max() / h + 1e-300)
    gradient = torch.stack([(gx[:, 1:] + gx[:, :-1]) / 2, (gy[1:] + gy[:-1]) / 2], dim=-1)
    jac = jacobian_fd(values, grid).reshape(grid.n, grid.n, 2, 2)
    stream = _poisson_dirichlet(jac[..., 1, 0] - jac[..., 0, 1], h)
    d_dy, d_dx = torch.gradient(stream, spacing=h, dim=(0, 1))
    fraction = ((rx**2).sum() + (ry**2).sum()) / ((fx**2).sum() + (fy**2).sum())
    return HelmholtzHodge(grid, values, potential, gradient, stream, torch.stack([-d_dy, d_dx], dim=-1),
                          fraction.item(), residual.item())


def bilinear(grid: Grid2D, values: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate cell-centre values (n, n, C) at points (N, 2): returns (N, C) and the mask of points inside
    the square spanned by the centres (values there are clamped to the edge)."""
    u = (points.to(torch.float64) + grid.half_width) / grid.cell - 0.5  # (N, 2) fractional [x, y] indices
    inside = ((u >= 0) & (u <= grid.n - 1)).all(dim=1)
    u = u.clamp(0, grid.n - 1)
    i0 = u.floor().long().clamp(max=grid.n - 2)
    t = u - i0
    x0, y0, tx, ty = i0[:, 0], i0[:, 1], t[:, :1], t[:, 1:]
    return ((1 - tx) * (1 - ty) * values[y0, x0] + tx * (1 - ty) * values[y0, x0 + 1]
            + (1 - tx) * ty * values[y0 + 1, x0] + tx * ty * values[y0 + 1, x0 + 1]), inside


class ConservativeProjection:
    """An eps_model whose output at (z, λ, c) is the gradient part ∇φ of the Helmholtz–Hodge split of
    z ↦ eps_model(z, λ, c) on `grid`, interpolated at z (the raw field outside the grid).

    Wrap a guided model, ConservativeProjection(guided(model, w), grid), to sample with the conservative
    projection of the CFG field. Each distinct (λ, c) in a batch costs one field evaluation on the grid.
    """

    def __init__(self, eps_model: EpsModel, grid: Grid2D, num_classes: int | None = None):
        self.eps_model, self.grid = eps_model, grid
        self.num_classes = num_classes if num_classes is not None else getattr(eps_model, "num_classes", None)

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = self.eps_model(z, lam, c).clone()
        keys, which = torch.unique(torch.stack([lam.to(torch.float64), c.to(torch.float64)], dim=1), dim=0,
                                   return_inverse=True)
        for k, (lam_k, c_k) in enumerate(keys.tolist()):
            chosen = which == k
            field = lambda p: self.eps_model(p, torch.full((len(p),), lam_k, dtype=z.dtype),  # noqa: E731
                                             torch.full((len(p),), int(c_k), dtype=torch.long))
            split = helmholtz_hodge(grid_values(field, self.grid), self.grid)
            values, inside = bilinear(self.grid, split.gradient, z[chosen])
            rows = chosen.nonzero()[:, 0][inside]
            out[rows] = values[inside].to(out.dtype)
        return out


# ---- the implicit classifier ----

def implicit_classifier_gradient(eps_model: EpsModel, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor,
                                 null_label: int) -> torch.Tensor:
    """∇_z log p^i(c|z) ≈ −(ε(z, c) − ε(z, ∅))/σ_λ from any eps_model, one doubled batch, (B, 2)."""
    null = torch.full_like(c, null_label)
    with torch.no_grad():
        cond, uncond = eps_model(torch.cat([z, z]), torch.cat([lam, lam]), torch.cat([c, null])).chunk(2)
    _, sigma = alpha_sigma(lam.to(torch.float64))
    return -(cond - uncond).to(torch.float64) / sigma[:, None]


def implicit_classifier_error(eps_model: EpsModel, mixture: GaussianMixture, z: torch.Tensor, lam: torch.Tensor,
                              c: torch.Tensor) -> float:
    """Σ‖g_θ − ∇log p_λ(c|z)‖² / Σ‖∇log p_λ(c|z)‖² over the points given."""
    exact = mixture.implicit_classifier_gradient(z, lam, c)
    learned = implicit_classifier_gradient(eps_model, z, lam, c, mixture.num_classes)
    return ((learned - exact) ** 2).sum().item() / (exact**2).sum().item()


# ---- one row of the fields report ----

def field_report(eps_model: EpsModel, lam: float, c: int, w: float, grid: Grid2D = Grid2D(3.0, 96),
                 radii=(0.4, 0.8, 1.2), num_classes: int | None = None) -> dict:
    """Relative curl (autograd and finite differences), circulation around circles about the origin and the
    rotational energy fraction of the CFG field at (λ, c, w). The headline circulation is at radius 0.8."""
    model = as_float64(eps_model)
    field = cfg_field(model, lam, c, w, num_classes)
    values = grid_values(field, grid)
    circulations = [circulation(field, r) for r in radii]
    return {"w": w, "lambda": lam, "class": c,
            "relative_curl": relative_curl(jacobian(field, grid.points())),
            "relative_curl_fd": relative_curl(jacobian_fd(values, grid)),
            "circulation": circulation(field, 0.8), "circulations": dict(zip(map(str, radii), circulations)),
            "rotational_energy_fraction": helmholtz_hodge(values, grid).rotational_energy_fraction}


def fields_table(models: dict[str, EpsModel], mixture: GaussianMixture, ws=(0.0, 1.0, 3.0), lams=(-4.0, 0.0, 4.0),
                 c: int = 0, grid: Grid2D = Grid2D(3.0, 96), points: int = 4096, seed: int = 0) -> list[dict]:
    """One field_report row per model, w and λ, with the model's name and its implicit-classifier error on
    `points` draws z ~ p_λ(z)."""
    rows = []
    for name, model in models.items():
        check_2d(model, mixture.num_classes)
        model = as_float64(model)
        for lam in lams:
            generator = make_generator(seed)
            x = mixture.sample(points, None, generator)
            lam_batch = torch.full((points,), float(lam), dtype=torch.float64)
            alpha, sigma = alpha_sigma(lam_batch)
            z = alpha[:, None] * x + sigma[:, None] * torch.randn(points, 2, generator=generator, dtype=torch.float64)
            classifier = implicit_classifier_error(model, mixture, z, lam_batch, torch.full((points,), c))
            for w in ws:
                rows.append({"model": name, **field_report(model, lam, c, w, grid, num_classes=mixture.num_classes),
                             "implicit_classifier_rel_error": classifier})
    return rows


def plot_curl_panels(eps_model: EpsModel, ws, lams, c: int = 0, grid: Grid2D = Grid2D(3.0, 96), title: str = ""):
    """Rows λ, columns w: the curl of the CFG field as a diverging heatmap, with the streamlines of the guided
    score −ε̃/σ on top; each title gives the relative curl."""
    import matplotlib.pyplot as plt

    model = as_float64(eps_model)
    fig, axes = plt.subplots(len(lams), len(ws), figsize=(3.2 * len(ws), 3.2 * len(lams)), squeeze=False)
    h, axis = grid.half_width, grid.axis.numpy()
    for i, lam in enumerate(lams):
        for j, w in enumerate(ws):
            field = cfg_field(model, lam, c, w)
            jac = jacobian(field, grid.points())
            curl = curl_from_jacobian(jac).reshape(grid.n, grid.n).numpy()
            values = -grid_values(field, grid).numpy()  # the guided score direction: toward the modes
            limit = max(abs(curl).max(), 1e-12)
            ax = axes[i, j]
            ax.imshow(curl, origin="lower", extent=(-h, h, -h, h), cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.streamplot(axis, axis, values[..., 0], values[..., 1], color="k", linewidth=0.5, density=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"λ = {lam:g}, w = {w:g} (s = {1 + w:g})\nrelative curl {relative_curl(jac):.1e}", fontsize=8)
    fig.suptitle(title or "curl of the CFG field (colour) and its streamlines", fontsize=10)
    fig.tight_layout()
    return fig


def plot_helmholtz(split: HelmholtzHodge, title: str = ""):
    """The field, its gradient part ∇φ and its rotational part ∇^⊥ψ as streamlines; ψ shaded under the last."""
    import matplotlib.pyplot as plt

    h, axis = split.grid.half_width, split.grid.axis.numpy()
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    parts = (("field $f$", split.field), (r"gradient part $\nabla\varphi$", split.gradient),
             (r"rotational part $\nabla^\perp\psi$ over $\psi$", split.rotational))
    for ax, (name, values) in zip(axes, parts):
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


def projection_sampling(eps_model: EpsModel, mixture: GaussianMixture, w: float, *, samples_per_class: int = 2000,
                        steps: int = 64, v: float = 0.3, grid: Grid2D = Grid2D(5.0, 48), seed: int = 0) -> dict:
    """CFG samples (K, n, 2) with Algorithm 2 from the raw guided field and from its conservative projection
    (the same noise for both), with the mean TV of each to the tilted targets π_w(x|c) (see cfgedu.toy.figure2)."""
    model, K = as_float64(eps_model), mixture.num_classes
    projected = ConservativeProjection(guided(model, w, K), grid, K)
    settings = {"steps": steps, "v": v, "dtype": torch.float64}
    samples = {"raw": cfg_samples(model, K, w, samples_per_class, generator=make_generator(seed), **settings),
               "projected": cfg_samples(projected, K, 0.0, samples_per_class, generator=make_generator(seed),
                                        **settings)}
    target_grid = Grid2D.covering(mixture)
    histogram, targets = HistogramTV(target_grid), tilted_densities(mixture, target_grid, w)
    tv = {name: sum(histogram(x[c], targets[c]) for c in range(K)) / K for name, x in samples.items()}
    return {"samples": samples, "tv": tv, "targets": targets, "grid": target_grid}
