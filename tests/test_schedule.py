import math

import pytest
import torch

from cfgedu.core.schedule import LogSNRSchedule, alpha_sigma, posterior, q_sample, transition

S = LogSNRSchedule()


def test_constants_and_endpoints():
    assert S.b == pytest.approx(4.539993e-5, rel=1e-6)
    assert S.a == pytest.approx(1.5707055, rel=1e-6)
    u = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    assert S.lam(u).tolist() == pytest.approx([20.0, 1.7626, 0.0, -1.7626, -20.0], abs=1e-4)


def test_inverse_map():
    lam = torch.linspace(-20, 20, 101, dtype=torch.float64)
    assert torch.allclose(S.lam(S.u(lam)), lam, atol=1e-9)


def test_alpha_sigma_variance_preserving():
    lam = torch.linspace(-25, 25, 51, dtype=torch.float64)
    alpha, sigma = alpha_sigma(lam)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(lam))
    assert torch.allclose(torch.log(alpha**2 / sigma**2), lam)


def test_density_integrates_to_one_and_matches_histogram(generator):
    lam = torch.linspace(-20, 20, 200_001, dtype=torch.float64)
    assert torch.trapezoid(S.density(lam), lam).item() == pytest.approx(1.0, abs=1e-6)
    draws = S.sample_lam(200_000, generator, dtype=torch.float64)
    assert draws.min() >= -20 and draws.max() <= 20
    counts = torch.histc(draws, bins=8, min=-4, max=4) / draws.numel()
    edges = torch.linspace(-4, 4, 9, dtype=torch.float64)
    expected = [torch.trapezoid(S.density(torch.linspace(lo, hi, 1001, dtype=torch.float64)),
                                torch.linspace(lo, hi, 1001, dtype=torch.float64)).item()
                for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    assert counts.tolist() == pytest.approx(expected, abs=4e-3)


def test_sampling_grid():
    grid = S.grid(256)
    assert grid[0] == -20 and grid[-1] == 20 and (grid.diff() > 0).all()
    assert grid[1].item() == pytest.approx(-10.165, abs=1e-3) and grid[2].item() == pytest.approx(-8.786, abs=1e-3)
    assert S.grid(1).tolist() == [-20.0]


def test_transition_composes_with_forward(generator):
    """q(z_λ|x) = ∫ q(z_λ|z_λ') q(z_λ'|x): means and variances compose."""
    lam, lam_next = torch.tensor([-1.0]), torch.tensor([2.0])
    ratio, var = transition(lam, lam_next)
    alpha, sigma = alpha_sigma(lam)
    alpha_next, sigma_next = alpha_sigma(lam_next)
    assert torch.allclose(ratio * alpha_next, alpha)
    assert torch.allclose(ratio**2 * sigma_next**2 + var, sigma**2)


def test_posterior_against_gaussian_conditioning():
    """Condition the joint Gaussian of (z_λ', z_λ) given x directly and compare with Eq. 3."""
    lam, lam_next = torch.tensor([-0.5], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64)
    x, z = torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[-0.3]], dtype=torch.float64)
    alpha, sigma = alpha_sigma(lam)
    alpha_next, sigma_next = alpha_sigma(lam_next)
    ratio, var = transition(lam, lam_next)
    # z_λ' ~ N(α' x, σ'^2); z_λ = ratio z_λ' + N(0, var). Cov(z_λ', z_λ) = ratio σ'^2, Var(z_λ) = σ^2.
    mean_direct = alpha_next * x + ratio * sigma_next**2 / sigma**2 * (z - alpha * x)
    var_direct = sigma_next**2 - (ratio * sigma_next**2) ** 2 / sigma**2
    mean, post_var = posterior(z, x, lam, lam_next)
    assert torch.allclose(mean, mean_direct) and torch.allclose(post_var, var_direct)


def test_q_sample_broadcasts_any_shape(generator):
    x = torch.randn(4, 3, 8, 8, generator=generator)
    lam = torch.tensor([-3.0, 0.0, 1.0, 5.0])
    z = q_sample(x, lam, torch.zeros_like(x))
    assert torch.allclose(z, alpha_sigma(lam)[0][:, None, None, None] * x)


@pytest.mark.parametrize("lo, hi", [(1.0, 1.0), (2.0, -2.0), (math.nan, 1.0), (-math.inf, 0.0)])
def test_bad_schedule(lo, hi):
    with pytest.raises(ValueError, match="lambda_m"):
        LogSNRSchedule(lo, hi)


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        S.grid(steps)
