"""The ideal tilted sampler, the MALA corrector and the sampler's corrector hook: what CFG samples vs π_w."""
import pytest
import torch

from cfgedu.core.guidance import guided
from cfgedu.core.samplers import sample
from cfgedu.core.schedule import LogSNRSchedule, alpha_sigma, q_sample
from cfgedu.core.tensors import make_generator
from cfgedu.toy.correctors import CFGDensity, LangevinCorrector
from cfgedu.toy.grid import Grid2D, HistogramTV, tilted_densities
from cfgedu.toy.ideal import IdealTiltedModel


@pytest.mark.parametrize("lam", [-4.0, 0.0, 2.0, 4.0])
def test_ideal_without_tilt_is_the_exact_eps(toy, generator, lam):
    """w = 0: the noised target is p_λ(z|c) itself, so ε_ideal = ε* (and the null label gives ε*(z))."""
    model = IdealTiltedModel(toy, 0.0, Grid2D.covering(toy, n=96))
    assert lam < model.lambda_max
    z = 5 * torch.rand(64, 2, generator=generator, dtype=torch.float64) - 2.5  # posteriors well inside the grid
    c = torch.arange(4).repeat(16)
    lam_batch = torch.full((64,), lam, dtype=torch.float64)
    assert torch.allclose(model(z, lam_batch, c), toy(z, lam_batch, c), atol=1e-6)


def test_ideal_is_the_tweedie_mean_of_the_noised_target(toy, generator):
    """E[x|z] by quadrature equals ∫x π_w(x|c) N(z; αx, σ²) dx / ∫π_w(x|c) N(z; αx, σ²) dx on a fine grid."""
    grid = Grid2D.covering(toy, n=96)
    model = IdealTiltedModel(toy, 2.0, grid)
    points, density = grid.points(), tilted_densities(toy, grid, 2.0)[1].reshape(-1)
    z, lam = torch.tensor([[0.4, -0.9]], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    alpha, sigma = alpha_sigma(lam)
    weights = density * torch.exp(-(z - alpha * points).square().sum(1) / (2 * sigma**2))
    expected = weights @ points / weights.sum()
    assert torch.allclose(model.x_hat(z, lam, torch.tensor([1])), expected[None], atol=1e-10)


def _tv(histogram, samples, densities):
    return sum(histogram(s, d) for s, d in zip(samples, densities, strict=True)) / len(densities)


def test_ideal_reaches_the_tilted_target_where_cfg_does_not(toy):
    """w = 3, class 0: ideal DDIM is within 1.5× the sampling-noise floor; exact-score CFG-DDIM is ≥ 3× off."""
    w, n = 3.0, 3000
    grid = Grid2D.covering(toy, n=128)
    histogram = HistogramTV(grid, bins=16)
    target = tilted_densities(toy, grid, w)[:1]
    floor = histogram.noise_floor(target[0], n, make_generator(5))
    labels = torch.zeros(n, dtype=torch.long)
    ideal = IdealTiltedModel(toy, w, Grid2D.covering(toy, n=96))
    x_ideal = sample(ideal, (2,), labels, generator=make_generator(1), schedule=ideal.schedule(), steps=48,
                     method="ddim", dtype=torch.float64)
    x_cfg = sample(guided(toy, w), (2,), labels, generator=make_generator(1), steps=24, method="ddim",
                   dtype=torch.float64)
    assert _tv(histogram, [x_ideal], target) <= 1.5 * floor
    assert _tv(histogram, [x_cfg], target) >= 3 * floor


def test_tilted_density_gradient_is_the_cfg_field(toy, generator):
    """∇ log ρ_λ by autograd equals −ε̃*/σ, the exact CFG field (SPEC 4.4)."""
    density = CFGDensity(toy, 1.5)
    z = torch.randn(8, 2, generator=generator, dtype=torch.float64).requires_grad_(True)
    lam, c = torch.full((8,), 0.7, dtype=torch.float64), torch.tensor([0, 1, 2, 3] * 2)
    (autograd,) = torch.autograd.grad(density.log_density(z, lam, c).sum(), z)
    _, sigma = alpha_sigma(lam)
    assert torch.allclose(density.grad(z.detach(), lam, c), -guided(toy, 1.5)(z.detach(), lam, c) / sigma[:, None])
    assert torch.allclose(autograd, density.grad(z.detach(), lam, c), atol=1e-10)


def test_mala_leaves_its_target_invariant(toy, generator):
    """w = 0: ρ_λ = p_λ(z|c) = N(αμ_c, (α²τ² + σ²)I); exact draws keep their moments after large MALA steps."""
    lam = torch.full((10_000,), 0.5, dtype=torch.float64)
    x = toy.sample(10_000, 2, generator)
    z = q_sample(x, lam, torch.randn(x.shape, generator=generator, dtype=torch.float64))
    corrector = LangevinCorrector(toy, 0.0, steps=10, step_scale=1.0)
    moved = corrector(z, lam, torch.full((10_000,), 2), generator)
    alpha, sigma = alpha_sigma(lam[0])
    assert (moved - z).abs().mean() > 0.1 and 0.3 < corrector.acceptance_rate < 1.0
    assert torch.allclose(moved.mean(0), alpha * toy.means[2], atol=0.02)
    assert moved.var(0).tolist() == pytest.approx([(alpha**2 * 0.36 + sigma**2).item()] * 2, abs=0.02)
    unadjusted = LangevinCorrector(toy, 0.0, steps=10, step_scale=1.0,
                                   metropolis=False)(z, lam, torch.full((10_000,), 2), generator)
    assert unadjusted.var(0).min() > moved.var(0).max() + 0.05  # plain Langevin overshoots at this step size


def test_corrector_pulls_cfg_samples_toward_the_target(toy):
    w, n = 3.0, 2000
    grid = Grid2D.covering(toy, n=128)
    histogram = HistogramTV(grid, bins=16)
    target = tilted_densities(toy, grid, w)[:1]
    labels = torch.zeros(n, dtype=torch.long)
    tvs = [_tv(histogram, [sample(guided(toy, w), (2,), labels, generator=make_generator(2), steps=12,
                                  dtype=torch.float64,
                                  corrector=LangevinCorrector(toy, w, k, step_scale=0.05) if k else None)], target)
           for k in (0, 2, 8)]
    assert tvs[0] > tvs[1] > tvs[2]


def test_corrector_hook_sees_each_new_level(toy):
    grid = LogSNRSchedule().grid(5)
    seen = []

    def record(z, lam, c, generator):
        seen.append(lam[0].item())
        return z

    labels = torch.zeros(3, dtype=torch.long)
    plain = sample(toy, (2,), labels, generator=make_generator(0), steps=5, dtype=torch.float64)
    hooked = sample(toy, (2,), labels, generator=make_generator(0), steps=5, dtype=torch.float64, corrector=record)
    assert torch.equal(plain, hooked)  # an identity corrector changes nothing
    assert seen == pytest.approx(grid[1:].tolist() + [grid[-1].item()])


def test_bad_arguments(toy):
    with pytest.raises(ValueError, match="steps must be"):
        LangevinCorrector(toy, 1.0, steps=0)
    with pytest.raises(ValueError, match="step_scale"):
        LangevinCorrector(toy, 1.0, steps=1, step_scale=-1.0)
    with pytest.raises(ValueError, match="w must be finite"):
        IdealTiltedModel(toy, float("inf"))
    with pytest.raises(ValueError, match="labels must be in"):
        IdealTiltedModel(toy, 1.0, Grid2D.covering(toy, n=32))(torch.zeros(2, 2), torch.zeros(2), torch.tensor([0, 7]))


def test_the_noised_target_is_pi_w_pushed_through_the_forward_process(toy):
    """At w = 0, π_{0,λ} is p_λ(z|c) itself; at w > 0 it is a density (mass 1) that differs from ρ_λ ∝
    p_λ(z|c)^{1+w} p_λ(z)^{-w}, the density exact-score CFG follows at level λ."""
    from cfgedu.toy.grid import cfg_densities

    grid = Grid2D.covering(toy, n=128)
    plain = IdealTiltedModel(toy, 0.0, grid)
    lam = torch.full((len(grid.points()),), 0.5, dtype=torch.float64)
    exact = toy.log_prob(grid.points(), lam, torch.zeros(len(lam), dtype=torch.long)).exp().reshape(grid.n, grid.n)
    assert (plain.noised_density(grid, 0.5, 0) - exact).abs().max() < 1e-6
    tilted = IdealTiltedModel(toy, 4.0, grid).noised_density(grid, 0.5, 0)
    assert (tilted.sum() * grid.cell**2).item() == pytest.approx(1.0, abs=1e-4)  # the tails beyond the grid
    rho = cfg_densities(toy, grid, 4.0, lam=0.5)[0]
    assert 0.5 * ((tilted - rho).abs().sum() * grid.cell**2).item() > 0.05
