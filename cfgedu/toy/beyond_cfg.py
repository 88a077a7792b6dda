"""Measuring the guidance methods that followed CFG on the toy (cfgedu.core.guidance_methods): the strength at which
each matches CFG's Inception score, and the curl of a guidance term.

Methods have their own strength scales (CFG++'s l ∈ [0, 1] is no w), so they are compared where they buy the same
class fidelity: at the strength whose Bayes IS equals CFG's at w = 3, found by linear interpolation along a sweep.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..core.guidance import EpsModel
from .fields import as_float64, jacobian, level_field, relative_curl
from .grid import Grid2D

# λ of the VP times t = 0.8, 0.5, 0.2 (α = cos(πt/2)), where SPEC §5 measures the learned field's curl
CURL_LAMS = (-2.25, 0.0, 2.25)


def matched_strength(strengths: Sequence[float], scores: Sequence[float], target: float) -> tuple[float, bool]:
    """The strength at which `scores` (one per strength, in increasing strength) first reach `target`, linear between
    the two strengths that bracket it; (strength, True), or (the strength of the highest score, False) when no
    strength reaches it."""
    if len(strengths) != len(scores) or not strengths:
        raise ValueError(f"need one score per strength, got {len(strengths)} strengths and {len(scores)} scores")
    points = sorted(zip(strengths, scores, strict=True))
    for (s0, v0), (s1, v1) in zip(points, points[1:], strict=False):
        if v0 < target <= v1:
            return s0 + (s1 - s0) * (target - v0) / (v1 - v0), True
    if points[0][1] >= target:
        return points[0][0], True
    return max(points, key=lambda point: point[1])[0], False


def guidance_term_curl(eps_model: EpsModel, reference: EpsModel, c: int = 0, lams: Sequence[float] = CURL_LAMS,
                       grid: Grid2D = Grid2D(3.0, 48)) -> float:
    """Mean over λ of the relative curl of the guidance term z ↦ ε(z, λ, c) − reference(z, λ, c) on the grid, in
    float64: CFG's term when `reference` is the model at ∅, autoguidance's when it is the weaker model."""
    model, reference = as_float64(eps_model), as_float64(reference)
    points = grid.points()
    curls = []
    for lam in lams:
        main, guide = level_field(model, lam, c), level_field(reference, lam, c)
        curls.append(relative_curl(jacobian(lambda z, main=main, guide=guide: main(z) - guide(z), points)))
    return sum(curls) / len(curls)
