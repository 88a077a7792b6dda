import math

import pytest
import torch
from scipy.linalg import sqrtm

from cfgedu.toy.grid import Grid2D, HistogramTV, sample_from_grid, tilted_densities
from cfgedu.toy.metrics import (
    bayes_inception_score,
    fit_logistic_classifier,
    frechet_distance,
    frechet_gaussians,
    frechet_per_class,
    frechet_pooled,
    inception_score,
    kl_to_grid,
    knn_entropy,
    logistic_inception_score,
    mixture_moments,
    mmd2_rbf,
    precision_recall,
    radial_distances,
    tv_to_grid,
)


def test_frechet_identical_is_zero_and_diagonal_closed_form():
    mean, cov = torch.tensor([0.3, -1.0]), torch.tensor([[0.5, 0.2], [0.2, 0.4]])
    assert frechet_gaussians(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-12)
    # commuting (diagonal) covariances: ‖Δm‖² + Σ(√a − √b)²
    fd = frechet_gaussians(torch.zeros(2), torch.diag(torch.tensor([4.0, 1.0])),
                           torch.tensor([3.0, 4.0]), torch.diag(torch.tensor([1.0, 9.0])))
    assert fd == pytest.approx(25 + (2 - 1) ** 2 + (1 - 3) ** 2)


def test_frechet_distance_of_identical_statistics_is_never_negative():
    """Rounding in the square roots leaves tr(C + C − 2(C^½ C C^½)^½) at about −1e-15 for these: clamped to 0."""
    mean, cov = torch.tensor([0.3, -1.0]), torch.tensor([[0.5, 0.2], [0.2, 0.4]])
    assert 0 <= frechet_gaussians(mean, cov, mean, cov) < 1e-12
    generator = torch.Generator().manual_seed(0)
    for dim in (2, 8, 16):
        for _ in range(20):
            a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
            assert frechet_gaussians(torch.zeros(dim), a @ a.T, torch.zeros(dim), a @ a.T) >= 0


def test_frechet_general_matches_scipy_sqrtm():
    a, b = torch.tensor([[0.5, 0.2], [0.2, 0.4]]), torch.tensor([[1.0, -0.6], [-0.6, 0.9]])
    m1, m2 = torch.tensor([0.1, 0.2]), torch.tensor([-0.3, 0.5])
    root = sqrtm(a.numpy())
    expected = ((m1 - m2).square().sum().item() + torch.trace(a + b).item()
                - 2 * sqrtm(root @ b.numpy() @ root).trace().real)
    assert frechet_gaussians(m1, a, m2, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_of_exact_draws_is_small(toy, generator):
    per_class = torch.stack([toy.sample(20_000, c, generator) for c in range(3)])  # (K, N, 2)
    assert max(frechet_per_class(toy, per_class)) < 2e-3
    labels = torch.arange(3).repeat_interleave(20_000)
    assert frechet_pooled(toy, per_class.reshape(-1, 2), labels) < 2e-3
    assert frechet_pooled(toy, toy.sample(60_000, None, generator)) < 2e-3
    # a shifted sample costs its squared shift
    assert frechet_distance(per_class[0] + torch.tensor([0.5, 0.0]), toy.means[0], toy.covariances[0]) == \
        pytest.approx(0.25, abs=0.02)


def test_mixture_moments_match_samples(anisotropic, generator):
    mean, cov = mixture_moments(anisotropic)
    draws = anisotropic.sample(200_000, None, generator)
    assert torch.allclose(draws.mean(0), mean, atol=0.01) and torch.allclose(torch.cov(draws.T), cov, atol=0.01)


def test_inception_score_bounds_and_extremes():
    one_hot = torch.eye(3).repeat(10, 1).double()  # balanced, certain: IS = K
    assert inception_score(one_hot) == pytest.approx(3.0)
    assert inception_score(torch.full((7, 3), 1 / 3, dtype=torch.float64)) == pytest.approx(1.0)
    assert inception_score(torch.eye(3)[[0, 0, 0]].double()) == pytest.approx(1.0)  # certain but one class
    random = torch.softmax(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)), 1)
    assert 1.0 <= inception_score(random) <= 3.0
    with pytest.raises(ValueError, match="class probabilities"):
        inception_score(torch.ones(4, 3))


def test_bayes_is_equals_exp_mutual_information(toy, generator):
    """For data drawn from the mixture, Bayes IS = exp(I(c; x)); estimate I independently by quadrature."""
    grid = Grid2D.covering(toy, n=256)
    points = grid.points()
    joint = torch.exp(toy.log_prob_components(points) + toy.weights.log()) * grid.cell**2  # (n², K)
    mutual = (joint * (toy.posterior(points).clamp(min=1e-300).log() - toy.weights.log())).sum().item()
    draws = toy.sample(60_000, None, generator)
    assert bayes_inception_score(toy, draws) == pytest.approx(math.exp(mutual), rel=0.01)


def test_logistic_is_converges_to_bayes_is(toy, generator):
    """Equal isotropic covariances: logistic regression is well specified (SPEC 4.1)."""
    labels = torch.arange(3).repeat_interleave(5000)
    x = torch.cat([toy.sample(5000, c, generator) for c in range(3)])
    classifier = fit_logistic_classifier(x, labels)
    fresh = toy.sample(20_000, None, generator)
    assert logistic_inception_score(classifier, fresh) == pytest.approx(bayes_inception_score(toy, fresh), rel=0.01)


def test_precision_recall_identical_and_disjoint(toy, generator):
    a, b = toy.sample(4000, None, generator), toy.sample(4000, None, generator)
    precision, recall = precision_recall(a, b)
    assert precision > 0.95 and recall > 0.95
    assert precision_recall(a, b + 100.0) == (0.0, 0.0)
    # half of the fake points are far away: precision halves
    half = torch.cat([b[:2000], b[2000:] + 100.0])
    assert precision_recall(a, half)[0] == pytest.approx(precision / 2, abs=0.02)


def test_precision_recall_matches_brute_force(generator):
    real, fake = torch.randn(300, 2, generator=generator), 1.3 * torch.randn(250, 2, generator=generator)
    d_real = torch.cdist(real.double(), real.double())
    radii = d_real.sort(1).values[:, 3]
    expected = (torch.cdist(fake.double(), real.double()) <= radii).any(1).double().mean().item()
    assert precision_recall(real, fake)[0] == pytest.approx(expected)


def test_mmd_closed_form_for_gaussians(generator):
    """For N(μ₁, s²I), N(μ₂, s²I) in D dims and k = exp(−‖a−b‖²/2h²):
    E k = (h²/(h² + 2s²))^{D/2} exp(−‖Δμ‖²/(2(h² + 2s²)))."""
    h, s, shift = 1.0, 0.5, torch.tensor([0.8, 0.0], dtype=torch.float64)
    def mean_kernel(delta2):
        return (h**2 / (h**2 + 2 * s**2)) * math.exp(-delta2 / (2 * (h**2 + 2 * s**2)))
    expected = 2 * mean_kernel(0.0) - 2 * mean_kernel(0.64)
    x = s * torch.randn(3000, 2, generator=generator, dtype=torch.float64)
    y = s * torch.randn(3000, 2, generator=generator, dtype=torch.float64) + shift
    assert mmd2_rbf(x, y, bandwidth=h) == pytest.approx(expected, abs=0.025)  # ~4 standard errors
    same = mmd2_rbf(x, s * torch.randn(3000, 2, generator=generator, dtype=torch.float64))
    assert abs(same) < 2e-3  # unbiased: centred on 0, may be negative


def test_knn_entropy_of_gaussians(generator):
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    x = torch.randn(20_000, 2, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    exact = 0.5 * math.log((2 * math.pi * math.e) ** 2 * torch.linalg.det(cov).item())
    assert knn_entropy(x) == pytest.approx(exact, abs=0.03)
    assert knn_entropy(0.5 * x) == pytest.approx(exact + 2 * math.log(0.5), abs=0.03)  # H(aX) = H(X) + D log a


def test_tv_and_kl_to_grid(toy, generator):
    grid = Grid2D.covering(toy, n=128)
    histogram = HistogramTV(grid, bins=32)
    density = tilted_densities(toy, grid, 0.0)[0]
    exact = sample_from_grid(grid, density, 50_000, generator)
    assert tv_to_grid(histogram, exact, density) < 0.03 and 0 <= kl_to_grid(histogram, exact, density) < 0.01
    other = tilted_densities(toy, grid, 0.0)[1]
    assert tv_to_grid(histogram, exact, other) > 0.5 and kl_to_grid(histogram, exact, other) > 1.0


def test_radial_distances_and_validation():
    assert radial_distances(torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([0.0, 1.0])).tolist() == \
        pytest.approx([math.sqrt(18), 1.0])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        knn_entropy(torch.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        gaussian = torch.zeros(5, 2)
        gaussian[0, 0] = float("nan")
        precision_recall(gaussian, gaussian)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(torch.zeros(5, 2), torch.zeros(5, 2), k=0)
