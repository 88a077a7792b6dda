"""How far is a 2D CFG field from a gradient? Curl, circulation and Helmholtz–Hodge (SPEC §5).

With exact scores the CFG field ε̃* = (1 + w)ε*(z, c) − wε*(z) = −σ∇[(1 + w) log p_λ(z|c) − w log p_λ(z)] is a
gradient (its Jacobian is symmetric, its curl zero). With learned ε_θ it is, in general, no gradient at all
(Ho & Salimans 2022, Sec. 3): these functions measure by how much, at one level λ, class c and strength w
(s = 1 + w). Fields are functions `field(points) -> values` from (N, 2) to (N, 2); grids are Grid2D (rows
are y, columns x). Learned models are evaluated in float64 so that round-off does not pass for curl.

Classifier guidance (Sec. 3.1) is measured beside CFG: its term −σ∇log p_φ(c|z) is the gradient of a trained
classifier's log-probability, so its curl is zero up to round-off, whatever the classifier learned.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.checks import check_finite, check_positive_int
from ..core.guidance import (
    Classifier,
    EpsModel,
    classifier_guided,
    classifier_log_prob_gradient,
    cond_and_uncond,
    guided,
)
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
    z, lam, c = (torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                 torch.zeros(1, dtype=torch.long))
    try:
        out = eps_model(z, lam, c)
    except Exception as error:  # the model rejected 2D input: say so in the caller's terms
        raise ValueError("fields need a 2D eps_model taking z of shape (B, 2); "
                         f"this one failed with: {error}") from None
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
    return level_field(model, lam, c)


def level_field(eps_model: EpsModel, lam: float, c: int) -> Field:
    """z ↦ eps_model(z, λ, c) at a fixed level λ and class c."""
    def field(points: torch.Tensor) -> torch.Tensor:
        n = points.shape[0]
        return eps_model(points, torch.full((n,), lam, dtype=points.dtype), torch.full((n,), int(c), dtype=torch.long))

    return field


def classifier_field(classifier: Classifier, mixture: GaussianMixture, lam: float, c: int, w: float) -> Field:
    """z ↦ ε*(z, c) − w·σ_λ·∇log p_φ(c|z): classifier guidance (Sec. 3.1) of the exact conditional ε*, so that the
    classifier term is the only learned part of the field (w = 0 is the exact conditional field)."""
    lam, w = check_finite("lam", lam), check_finite("w", w)
    if not 0 <= c < mixture.num_classes:
        raise ValueError(f"class c must be in 0..{mixture.num_classes - 1}, got {c}")
    return level_field(classifier_guided(mixture, classifier, w), lam, c)


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
    on_circle = (torch.tensor(center, dtype=torch.float64)
                 + radius * torch.stack([torch.cos(theta), torch.sin(theta)], 1))
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
    return gradient_error(implicit_classifier_gradient(eps_model, z, lam, c, mixture.num_classes), mixture, z, lam, c)


def gradient_error(gradient: torch.Tensor, mixture: GaussianMixture, z: torch.Tensor, lam: torch.Tensor,
                   c: torch.Tensor) -> float:
    """Σ‖gradient − ∇log p_λ(c|z)‖² / Σ‖∇log p_λ(c|z)‖²: a classifier's gradient (B, 2) against the exact one."""
    exact = mixture.implicit_classifier_gradient(z, lam, c)
    return ((gradient.to(torch.float64) - exact) ** 2).sum().item() / (exact**2).sum().item()


def field_report(eps_model: EpsModel, lam: float, c: int, w: float, grid: Grid2D = Grid2D(3.0, 96),
                 radii=(0.4, 0.8, 1.2), num_classes: int | None = None) -> dict:
    """Relative curl (autograd and finite differences), circulation around circles about the origin and the
    rotational energy fraction of the CFG field at (λ, c, w). The headline circulation is at radius 0.8."""
    field = cfg_field(as_float64(eps_model), lam, c, w, num_classes)
    return {"w": w, "lambda": lam, "class": c, **field_measures(field, grid, radii)}


def field_measures(field: Field, grid: Grid2D = Grid2D(3.0, 96), radii=(0.4, 0.8, 1.2)) -> dict:
    """Relative curl (autograd and finite differences), circulations (headline: radius 0.8) and the rotational
    energy fraction of a 2D field on the grid."""
    values = grid_values(field, grid)
    circulations = [circulation(field, r) for r in radii]
    return {"relative_curl": relative_curl(jacobian(field, grid.points())),
            "relative_curl_fd": relative_curl(jacobian_fd(values, grid)),
            "circulation": circulation(field, 0.8),
            "circulations": dict(zip(map(str, radii), circulations, strict=True)),
            "rotational_energy_fraction": helmholtz_hodge(values, grid).rotational_energy_fraction}


@dataclass(frozen=True)
class GuidanceFields:
    """A guidance method on the 2D toy: its guided field at (λ, c, w), and the gradient ∇_z log p(c|z) of the
    classifier it guides with, (z (B, 2), λ (B,), c (B,)) -> (B, 2)."""

    field: Callable[[float, int, float], Field]
    classifier_gradient: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cfg_fields(eps_model: EpsModel, num_classes: int) -> GuidanceFields:
    """CFG with a 2D eps_model (in float64): the field of Eq. 6 and the implicit classifier −(ε(z, c) − ε(z, ∅))/σ."""
    check_2d(eps_model, num_classes)
    model = as_float64(eps_model)
    return GuidanceFields(lambda lam, c, w: cfg_field(model, lam, c, w, num_classes),
                          lambda z, lam, c: implicit_classifier_gradient(model, z, lam, c, num_classes))


def classifier_guidance_fields(classifier: Classifier, mixture: GaussianMixture) -> GuidanceFields:
    """Classifier guidance of the exact ε* by a 2D classifier(z, lam) -> logits (in float64): classifier_field, and
    ∇log p_φ(c|z) by autograd."""
    classifier = as_float64(classifier)
    z, lam = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    logits = classifier(z, lam)
    if tuple(logits.shape) != (1, mixture.num_classes):
        raise ValueError(f"the classifier must map (B, 2) points to (B, {mixture.num_classes}) logits; "
                         f"got {tuple(logits.shape)}")
    return GuidanceFields(lambda lam, c, w: classifier_field(classifier, mixture, lam, c, w),
                          lambda z, lam, c: classifier_log_prob_gradient(classifier, z, lam, c))


def noised_draws(mixture: GaussianMixture, lam: float, points: int = 4096,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`points` draws (x, c) ~ p(x, c) noised to level λ: z = α x + σ ε (B, 2), their labels c (B,) and λ (B,),
    float64; the same draws for every λ given the seed."""
    generator = make_generator(seed)
    x, c = mixture.sample_labelled(check_positive_int("points", points), generator)
    lam_batch = torch.full((points,), check_finite("lam", lam), dtype=torch.float64)
    eps = torch.randn(points, mixture.dim, generator=generator, dtype=torch.float64)
    return q_sample(x, lam_batch, eps), c, lam_batch


def exact_fd_floor(mixture: GaussianMixture, lam: float, c: int, w: float, grid: Grid2D) -> float:
    """The finite-difference relative curl of the exact CFG field at (λ, c, w) on the grid: a gradient field's, so
    pure grid error, the floor under which a measured FD curl means nothing."""
    return relative_curl(jacobian_fd(grid_values(cfg_field(mixture, lam, c, w), grid), grid))


def fields_table(models: dict[str, EpsModel | GuidanceFields], mixture: GaussianMixture, ws=(0.0, 1.0, 3.0),
                 lams=(-4.0, 0.0, 4.0), c: int = 0, grid: Grid2D = Grid2D(3.0, 96), points: int = 4096,
                 seed: int = 0) -> list[dict]:
    """One row of field_measures per model, w and λ (an eps_model is measured by its CFG field, cfg_fields), with
    the model's name, relative_curl_fd_floor (exact_fd_floor at the same w and λ) and the relative error of its
    classifier's gradient ∇log p(c|z) ("implicit_classifier_rel_error") on `points` draws z ~ p_λ(z)."""
    floors = {(lam, w): exact_fd_floor(mixture, lam, c, w, grid) for lam in lams for w in ws}  # shared by every model
    rows = []
    for name, model in models.items():
        fields = model if isinstance(model, GuidanceFields) else cfg_fields(model, mixture.num_classes)
        for lam in lams:
            z, _, lam_batch = noised_draws(mixture, lam, points, seed)
            labels = torch.full((points,), c)
            error = gradient_error(fields.classifier_gradient(z, lam_batch, labels), mixture, z, lam_batch, labels)
            rows += [{"model": name, "w": w, "lambda": lam, "class": c, **field_measures(fields.field(lam, c, w), grid),
                      "relative_curl_fd_floor": floors[(lam, w)], "implicit_classifier_rel_error": error} for w in ws]
    return rows


def projection_sampling(eps_model: EpsModel, mixture: GaussianMixture, w: float, *, samples_per_class: int = 2000,
                        steps: int = 64, v: float = 0.3, grid: Grid2D = Grid2D(5.0, 48), seed: int = 0) -> dict:
    """CFG samples (K, n, 2) with Algorithm 2 from a learned model's raw guided field, from its conservative projection,
    and from the exact CFG field of the mixture (the same noise for all three), with the mean TV of each to the tilted
    targets π_w(x|c) (see figure2.py): what the learned field's curl changes, beside what CFG misses anyway."""
    model, K = as_float64(eps_model), mixture.num_classes
    guided_fields = {"raw": guided(model, w, K), "projected": ConservativeProjection(guided(model, w, K), grid, K),
                     "exact": guided(mixture, w)}
    samples = {name: class_samples(field, K, 0.0, samples_per_class, generator=make_generator(seed), steps=steps, v=v)
               for name, field in guided_fields.items()}
    target_grid = Grid2D.covering(mixture)
    histogram, targets = HistogramTV(target_grid), tilted_densities(mixture, target_grid, w)
    tv = {name: sum(histogram(x[c], targets[c]) for c in range(K)) / K for name, x in samples.items()}
    return {"samples": samples, "tv": tv, "targets": targets, "grid": target_grid}
