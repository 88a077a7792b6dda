import math

import pytest
import torch

from cfgedu.core.guidance import guided
from cfgedu.nets.mlp import EnergyMLP, EpsMLP, MLPConfig
from cfgedu.toy.fields import (
    as_float64,
    cfg_field,
    check_2d,
    circulation,
    curl_from_jacobian,
    field_report,
    implicit_classifier_error,
    jacobian,
    projection_sampling,
    relative_curl,
)
from cfgedu.toy.grid import Grid2D, grid_values, jacobian_fd
from cfgedu.toy.helmholtz import ConservativeProjection, bilinear, helmholtz_hodge

GRID = Grid2D(3.0, 48)
SMALL = MLPConfig(width=32, depth=2, class_dim=4)


def _net(cls, seed=0):
    torch.manual_seed(seed)
    return as_float64(cls(SMALL))


def gradient_field(points):
    """∇φ0 with φ0 = exp(−((x − ½)² + y²)/2) + 0.1·x·y² (not separable, so no accidental discrete symmetry)."""
    x, y = points[:, 0], points[:, 1]
    bump = torch.exp(-((x - 0.5) ** 2 + y**2) / 2)
    return torch.stack([-(x - 0.5) * bump + 0.1 * y**2, -y * bump + 0.2 * x * y], dim=1)


def stream_function(points, s=0.5):
    return torch.exp(-(points[:, 0] ** 2 + points[:, 1] ** 2) / (2 * s * s))


def rotation_field(points, s=0.5):
    """∇^⊥ψ0 = (−∂_yψ0, ∂_xψ0) for a narrow Gaussian ψ0, which vanishes (to 1e-15) on the grid boundary."""
    psi = stream_function(points, s)
    return torch.stack([points[:, 1] / s**2 * psi, -points[:, 0] / s**2 * psi], dim=1)


class AnalyticModel:
    """An eps_model whose ε at every (λ, c) is ∇φ0 + ∇^⊥ψ0 + c·(1, 0)."""

    num_classes = 3

    def __call__(self, z, lam, c):
        return gradient_field(z) + rotation_field(z) + c[:, None].to(z.dtype) * torch.tensor([1.0, 0.0], dtype=z.dtype)


@pytest.mark.parametrize("w", [0.0, 3.0])
@pytest.mark.parametrize("lam", [-4.0, 0.0, 4.0])
def test_exact_cfg_field_is_curl_free_to_round_off(toy, w, lam):
    jac = jacobian(cfg_field(toy, lam, 0, w), GRID.points())
    assert relative_curl(jac) < 1e-12
    assert abs(circulation(cfg_field(toy, lam, 0, w), 0.8)) < 1e-12


def test_energy_model_cfg_field_is_curl_free_and_the_eps_mlp_is_not():
    energy, eps = _net(EnergyMLP), _net(EpsMLP)
    for w in (0.0, 3.0):
        assert relative_curl(jacobian(cfg_field(energy, 0.0, 1, w), GRID.points())) < 1e-12
    assert relative_curl(jacobian(cfg_field(eps, 0.0, 1, 3.0), GRID.points())) > 1e-4  # far above round-off


def test_curl_is_linear_in_w():
    """curl ε̃ = (1 + w) curl ε(·, c) − w curl ε(·, ∅) (SPEC §5)."""
    model, points = _net(EpsMLP), GRID.points()
    curls = {w: curl_from_jacobian(jacobian(cfg_field(model, 1.0, 2, w), points)) for w in (-1.0, 0.0, 2.5)}
    torch.testing.assert_close(curls[2.5], 3.5 * curls[0.0] - 2.5 * curls[-1.0])


def test_finite_difference_jacobian_matches_autograd_to_second_order():
    field = cfg_field(_net(EpsMLP), 0.0, 0, 1.0)
    errors = []
    for grid in (GRID, Grid2D(3.0, 2 * GRID.n)):
        fd = jacobian_fd(grid_values(field, grid), grid).reshape(grid.n, grid.n, 2, 2)
        exact = jacobian(field, grid.points()).reshape(grid.n, grid.n, 2, 2)
        errors.append((fd - exact)[1:-1, 1:-1].abs().max().item())  # central differences inside
    assert errors[1] < errors[0] / 3  # halving h divides the O(h²) error by ~4


def test_finite_difference_jacobian_is_second_order_at_the_edges_too():
    """One-sided differences of second order on the boundary rows: the whole grid's error is O(h²)."""
    field = cfg_field(_net(EpsMLP), 0.0, 0, 1.0)
    errors = []
    for grid in (GRID, Grid2D(3.0, 2 * GRID.n)):
        fd = jacobian_fd(grid_values(field, grid), grid)
        errors.append((fd - jacobian(field, grid.points())).abs().max().item())
    assert errors[1] < errors[0] / 3


def test_circulation_of_a_rigid_rotation_and_stokes_for_a_learned_field():
    rigid = lambda p: torch.stack([-p[:, 1], p[:, 0]], dim=1)  # noqa: E731  curl 2: Γ = 2πr²
    assert circulation(rigid, 0.7) == pytest.approx(2 * math.pi * 0.49, rel=1e-12)
    field = cfg_field(_net(EpsMLP), 0.0, 0, 3.0)
    fine = Grid2D(1.0, 200)  # Γ(r) = ∬_disc curl (Stokes)
    inside = fine.points().norm(dim=1) < 0.8
    flux = curl_from_jacobian(jacobian(field, fine.points()[inside])).sum().item() * fine.cell**2
    assert circulation(field, 0.8) == pytest.approx(flux, rel=2e-2, abs=1e-4)


def test_helmholtz_hodge_recovers_a_pure_gradient_and_a_pure_rotation():
    points = GRID.points()
    gradient = helmholtz_hodge(grid_values(gradient_field, GRID), GRID)
    assert gradient.rotational_energy_fraction < 1e-6
    assert (gradient.gradient - gradient.field).abs().max() < 1e-2 * gradient.field.abs().max()  # O(h²)
    rotation = helmholtz_hodge(grid_values(rotation_field, GRID), GRID)
    assert rotation.rotational_energy_fraction > 1 - 1e-4
    assert rotation.gradient.abs().max() < 1e-2 * rotation.field.abs().max()
    psi = stream_function(points).reshape(GRID.n, GRID.n)
    assert (rotation.stream - psi).abs().max() < 2e-2
    for split in (gradient, rotation):  # f − ∇φ is discretely divergence free, and the parts add up to f
        assert split.face_divergence_residual < 1e-10
        torch.testing.assert_close(split.gradient + split.rotational + split.harmonic, split.field)


def test_conservative_projection_keeps_the_gradient_and_drops_the_rotation():
    model = AnalyticModel()
    projection = ConservativeProjection(model, GRID)
    g = torch.Generator().manual_seed(1)
    z = 3 * torch.rand(40, 2, generator=g, dtype=torch.float64) - 1.5
    lam, c = torch.zeros(40, dtype=torch.float64), torch.arange(40) % 3
    expected = gradient_field(z) + c[:, None] * torch.tensor([1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(projection(z, lam, c), expected, atol=2e-2, rtol=0)  # O(h²)
    far = torch.tensor([[5.0, 5.0]], dtype=torch.float64)  # outside the grid: the raw field
    torch.testing.assert_close(projection(far, lam[:1], c[:1]), model(far, lam[:1], c[:1]))


def test_projecting_the_exact_field_barely_changes_its_samples(toy):
    """The exact CFG field is already a gradient: sampling its projection, from the same noise, lands close by."""
    result = projection_sampling(toy, toy, 2.0, samples_per_class=200, steps=12, grid=Grid2D(5.0, 40))
    raw, projected = result["samples"]["raw"], result["samples"]["projected"]
    assert torch.equal(raw, result["samples"]["exact"])  # the model here is the mixture itself
    assert (raw - projected).norm(dim=-1).median() < 0.1
    assert abs(result["tv"]["raw"] - result["tv"]["projected"]) < 0.05


def test_bilinear_interpolation_is_exact_for_linear_functions():
    values = GRID.points() @ torch.tensor([[2.0], [-3.0]], dtype=torch.float64) + 1.0  # (n², 1): 2x − 3y + 1
    z = torch.tensor([[0.1234, -2.5], [2.95, 0.0], [-3.5, 0.0]], dtype=torch.float64)  # centres span ±2.9375
    out, inside = bilinear(GRID, values.reshape(GRID.n, GRID.n, 1), z)
    assert inside.tolist() == [True, False, False]
    assert out[0, 0].item() == pytest.approx(2 * 0.1234 + 3 * 2.5 + 1, abs=1e-12)


def test_implicit_classifier_ignores_class_independent_errors(toy):
    z = torch.randn(200, 2, dtype=torch.float64)
    lam, c = torch.full((200,), 0.5, dtype=torch.float64), torch.arange(200) % 3
    assert implicit_classifier_error(toy, toy, z, lam, c) < 1e-24
    shifted = lambda z, lam, c: toy(z, lam, c) + 0.3 * torch.sin(z)  # noqa: E731  same error for c and ∅
    assert implicit_classifier_error(shifted, toy, z, lam, c) < 1e-24
    biased = lambda z, lam, c: toy(z, lam, c) + 0.01 * (c < 3)[:, None]  # noqa: E731  only the conditional is off
    assert implicit_classifier_error(biased, toy, z, lam, c) > 1e-6


def test_field_report_rows(toy):
    row = field_report(toy, 0.0, 0, 3.0, grid=Grid2D(3.0, 24))
    assert row["relative_curl"] < 1e-12 and row["rotational_energy_fraction"] < 1e-6
    assert set(row["circulations"]) == {"0.4", "0.8", "1.2"}


def test_bad_inputs_give_clear_errors(toy):
    three_d = lambda z, lam, c: torch.zeros(z.shape[0], 3, dtype=z.dtype)  # noqa: E731
    with pytest.raises(ValueError, match="2D eps_model"):
        check_2d(three_d, 3)
    with pytest.raises(ValueError, match="2D eps_model taking"):
        check_2d(guided(EpsMLP(MLPConfig(data_dim=3)), 1.0), 3)
    with pytest.raises(ValueError, match="class c must be in 0..2"):
        cfg_field(toy, 0.0, 3, 1.0)
    with pytest.raises(ValueError, match="radius"):
        circulation(lambda p: p, 0.0)
    with pytest.raises(ValueError, match="values must have shape"):
        helmholtz_hodge(torch.zeros(5, 5, 3), Grid2D(3.0, 5))
