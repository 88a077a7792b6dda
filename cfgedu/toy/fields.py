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
from collections.abc import Callable

import torch

from ..core.checks import check_finite, check_positive_int
from ..core.guidance import EpsModel, cond_and_uncond, guided
from ..core.parameterization import eps_to_score
from ..core.schedule import q_sample
from ..core.tensors import make_generator
from .grid import Grid2D, HistogramTV, grid_values, jacobian_fd, tilted_densities
from .helmholtz import ConservativeProjection, helmholtz_hodge
from .mixture import GaussianMixture
from .sampling import class_samples

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


def implicit_classifier_gradient(eps_model: EpsModel, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor,
                                 null_label: int) -> torch.Tensor:
    """∇_z log p^i(c|z) ≈ −(ε(z, c) − ε(z, ∅))/σ_λ from any eps_model, one doubled batch, (B, 2)."""
    with torch.no_grad():
        cond, uncond = cond_and_uncond(eps_model, z, lam, c, null_label)
    return eps_to_score((cond - uncond).to(torch.float64), lam.to(torch.float64))


def implicit_classifier_error(eps_model: EpsModel, mixture: GaussianMixture, z: torch.Tensor, lam: torch.Tensor,
                              c: torch.Tensor) -> float:
    """Σ‖g_θ − ∇log p_λ(c|z)‖² / Σ‖∇log p_λ(c|z)‖² over the points given."""
    exact = mixture.implicit_classifier_gradient(z, lam, c)
    learned = implicit_classifier_gradient(eps_model, z, lam, c, mixture.num_classes)
    return ((learned - exact) ** 2).sum().item() / (exact**2).sum().item()


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
            "circulation": circulation(field, 0.8), "circulations": dict(zip(map(str, radii), circulations, strict=True)),
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
            z = q_sample(x, lam_batch, torch.randn(points, 2, generator=generator, dtype=torch.float64))
            classifier = implicit_classifier_error(model, mixture, z, lam_batch, torch.full((points,), c))
            for w in ws:
                rows.append({"model": name, **field_report(model, lam, c, w, grid, num_classes=mixture.num_classes),
                             "implicit_classifier_rel_error": classifier})
    return rows


def projection_sampling(eps_model: EpsModel, mixture: GaussianMixture, w: float, *, samples_per_class: int = 2000,
                        steps: int = 64, v: float = 0.3, grid: Grid2D = Grid2D(5.0, 48), seed: int = 0) -> dict:
    """CFG samples (K, n, 2) with Algorithm 2 from the raw guided field and from its conservative projection
    (the same noise for both), with the mean TV of each to the tilted targets π_w(x|c) (see figure2.py)."""
    model, K = as_float64(eps_model), mixture.num_classes
    projected = ConservativeProjection(guided(model, w, K), grid, K)
    settings = {"steps": steps, "v": v, "dtype": torch.float64}
    samples = {"raw": class_samples(model, K, w, samples_per_class, generator=make_generator(seed), **settings),
               "projected": class_samples(projected, K, 0.0, samples_per_class, generator=make_generator(seed),
                                          **settings)}
    target_grid = Grid2D.covering(mixture)
    histogram, targets = HistogramTV(target_grid), tilted_densities(mixture, target_grid, w)
    tv = {name: sum(histogram(x[c], targets[c]) for c in range(K)) / K for name, x in samples.items()}
    return {"samples": samples, "tv": tv, "targets": targets, "grid": target_grid}
