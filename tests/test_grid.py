import pytest
import torch

from cfgedu.toy.grid import Grid2D, HistogramTV, mix, moments, sample_from_grid, tilted_densities, tv_between


@pytest.fixture
def grid(toy):
    return Grid2D.covering(toy)


def test_grid_covers_and_resolves_the_toy(grid):
    assert grid.half_width == pytest.approx(4.0) and grid.cell <= 0.6 / 8


def test_untilted_grid_integral_is_one(toy, grid):
    """At w = 0 the unnormalised p(x|c) already integrates to 1 on the grid: the grid holds all the mass."""
    points = grid.points()
    for c in range(3):
        density = toy.log_prob(points, None, torch.full((len(points),), c)).exp()
        assert (density.sum() * grid.cell**2).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("w, tv, mean_y", [(1.0, 0.12, 1.16), (3.0, 0.22, 1.27)])
def test_tilted_densities_match_reference_figures(toy, grid, w, tv, mean_y):
    """SPEC 4.2: circumradius 1, std 0.6: TV(π_w, p(x|c)) and the class-0 mean move outward."""
    tilted, plain = tilted_densities(toy, grid, w), tilted_densities(toy, grid, 0.0)
    mass, mean, _ = moments(grid, tilted[0])
    assert mass == pytest.approx(1.0, abs=1e-9)
    assert tv_between(grid, tilted[0], plain[0]) == pytest.approx(tv, abs=0.01)
    assert mean[1].item() == pytest.approx(mean_y, abs=0.01) and abs(mean[0].item()) < 1e-9


def test_tilt_identity_with_posterior(toy, grid):
    """p(x|c)^{1+w} p(x)^{−w} ∝ p(x|c) p(c|x)^w, normalised the same."""
    points = grid.points()
    direct = (toy.log_prob(points, None, torch.zeros(len(points), dtype=torch.long))
              + 2.0 * toy.posterior(points)[:, 0].log()).reshape(grid.n, grid.n)
    from cfgedu.toy.grid import normalize
    assert torch.allclose(normalize(direct, grid.cell), tilted_densities(toy, grid, 2.0)[0], atol=1e-10)


def test_mixture_and_moments_at_w0(toy, grid):
    mass, mean, cov = moments(grid, mix(toy, tilted_densities(toy, grid, 0.0)))
    assert mass == pytest.approx(1.0) and torch.allclose(mean, torch.zeros(2, dtype=torch.float64), atol=1e-6)
    expected_cov = 0.36 * torch.eye(2, dtype=torch.float64) + (toy.means.T @ toy.means) / 3
    assert torch.allclose(cov, expected_cov, atol=1e-6)


def test_histogram_tv(toy, grid, generator):
    histogram = HistogramTV(grid, 32)
    density = tilted_densities(toy, grid, 1.0)[0]
    floor = histogram.noise_floor(density, 20_000, generator)
    assert 0 < floor < 0.06
    exact = sample_from_grid(grid, density, 20_000, generator)
    assert histogram(exact, density) < 2 * floor
    assert histogram(exact + 1.0, density) > 0.5  # shifted samples are far from the target
    assert histogram(torch.full((10, 2), 100.0), density) == pytest.approx(1.0)  # all outside the grid


def test_bad_grid():
    with pytest.raises(ValueError, match="half_width must be > 0"):
        Grid2D(half_width=-1.0)
    with pytest.raises(ValueError, match="must divide"):
        HistogramTV(Grid2D(4.0, 100), 32)
