"""Sample-quality metrics for 2D samples, where every reference is known exactly (SPEC Sec. 6).

- Fréchet distance between Gaussian fits: the "FID" axis of the paper's Tables 1-2.
- Inception score with the exact Bayes posterior p(c|x), or with a logistic regression fitted on data.
- k-NN precision and recall (Kynkäänniemi et al. 2019), unbiased RBF MMD², TV and KL against a grid
  density, and the Kozachenko-Leonenko k-NN entropy.
All inputs are (N, D) tensors; everything is computed in float64.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..core.checks import check_positive_int
from .grid import HistogramTV
from .mixture import GaussianMixture


def _points(name: str, x: torch.Tensor, min_rows: int = 2) -> torch.Tensor:
    """A float64 (N, D) tensor with at least min_rows finite rows."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] < min_rows:
        raise ValueError(f"{name} must be a (N, D) tensor with N >= {min_rows}, got "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    return x.to(torch.float64)


# ---- Fréchet distance -------------------------------------------------------------------------------------------

def gaussian_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of samples (N, D)."""
    x = _points("samples", x)
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def frechet_gaussians(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """‖m₁ − m₂‖² + tr(C₁ + C₂ − 2(C₁^½ C₂ C₁^½)^½): the squared 2-Wasserstein distance of two Gaussians, clamped
    at 0 (rounding in the square roots can leave −1e-15). Every FD and FID in cfgedu goes through here."""
    mean1, mean2, cov1, cov2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mean1, mean2, cov1, cov2))
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != mean1.shape * 2:
        raise ValueError(f"means must be (D,) and covariances (D, D) alike; got {tuple(mean1.shape)}, "
                         f"{tuple(mean2.shape)}, {tuple(cov1.shape)}, {tuple(cov2.shape)}")
    root1 = _psd_sqrt(cov1)
    cross = _psd_sqrt(root1 @ cov2 @ root1)
    return max(0.0, ((mean1 - mean2).square().sum() + torch.trace(cov1 + cov2 - 2 * cross)).item())


def frechet_distance(samples: torch.Tensor, ref_mean: torch.Tensor, ref_cov: torch.Tensor) -> float:
    """Fréchet distance between the Gaussian fit of samples (N, D) and reference moments (D,), (D, D)."""
    return frechet_gaussians(*gaussian_fit(samples), ref_mean, ref_cov)


def class_variance(samples: torch.Tensor) -> float:
    """The variance per coordinate of samples (N, D), averaged over the D coordinates: tr(Cov)/D (0.36 for a class
    of the three-Gaussian toy)."""
    return (torch.trace(gaussian_fit(samples)[1]) / samples.shape[1]).item()


def mode_shares(mixture: GaussianMixture, c: int, points: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """How much of class c's mass sits at each of its modes: points (N, D) (with weights (N,), e.g. a grid density)
    assigned to the nearest mean of the class's components; fractions (modes,)."""
    means = mixture.means[mixture.members[c]]  # (modes, D)
    nearest = torch.cdist(_points("points", points, 1), means).argmin(1)  # (N,)
    weights = torch.ones(len(points), dtype=torch.float64) if weights is None else weights.to(torch.float64)
    return torch.bincount(nearest, weights, minlength=len(means)) / weights.sum()


def mixture_moments(mixture: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D, D) of the whole mixture: Σπ_c μ_c and Σπ_c(Σ_c + μ_cμ_cᵀ) − μμᵀ."""
    mean = mixture.weights @ mixture.means
    second = torch.einsum("k,kde->de", mixture.weights,
                          mixture.covariances + mixture.means[:, :, None] * mixture.means[:, None, :])
    return mean, second - torch.outer(mean, mean)


def frechet_per_class(mixture: GaussianMixture, samples: torch.Tensor) -> list[float]:
    """FD of each class's samples samples[c] (K, N, D) against the moments of the exact p(x|c)."""
    return [frechet_distance(samples[c], *mixture.class_moments(c)) for c in range(len(samples))]


def frechet_pooled(mixture: GaussianMixture, samples: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """FD of all samples (N, D) pooled against the exact data distribution p(x) (the FID analogue).

    With labels (N,), classes are reweighted to the mixture weights first (samples drawn per class are
    pooled as the data would be).
    """
    if labels is None:
        return frechet_distance(samples, *mixture_moments(mixture))
    fits = [gaussian_fit(samples[labels == c]) for c in range(mixture.num_classes)]
    means = torch.stack([m for m, _ in fits])  # (K, D)
    mean = mixture.class_weights @ means
    second = sum(p * (cov + torch.outer(m, m)) for p, (m, cov) in zip(mixture.class_weights, fits, strict=True))
    return frechet_gaussians(mean, second - torch.outer(mean, mean), *mixture_moments(mixture))


# ---- Inception score ----------------------------------------------------------------------------------------------

def inception_score(probs: torch.Tensor) -> float:
    """exp(E_x KL(p(c|x) ‖ p̂(c))) with p̂ the mean of the rows of probs (N, K); it lies in [1, K]."""
    probs = _points("probs", probs, min_rows=1)
    if (probs < 0).any() or not torch.allclose(probs.sum(1), torch.ones(len(probs), dtype=torch.float64), atol=1e-6):
        raise ValueError("probs must be rows of class probabilities (non-negative, summing to 1)")
    marginal = probs.mean(0)  # (K,)
    kl = torch.special.xlogy(probs, probs).sum(1) - probs @ torch.log(marginal.clamp(min=1e-300))
    return math.exp(kl.mean().item())


def bayes_inception_score(mixture: GaussianMixture, samples: torch.Tensor) -> float:
    """IS with the exact clean posterior p(c|x) of the mixture (SPEC 4.1 at α = 1, σ = 0)."""
    return inception_score(mixture.posterior(_points("samples", samples, 1)))


def fit_logistic_classifier(x: torch.Tensor, labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A multinomial logistic regression fitted on data (x (N, D), labels (N,)); returns x -> p(c|x) (N, K).

    For classes with equal isotropic covariances this model is exactly well specified (SPEC 4.1).
    """
    from sklearn.linear_model import LogisticRegression

    x = _points("x", x)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
    model = LogisticRegression(C=1e4, max_iter=2000).fit(x.numpy(), labels.numpy())
    return lambda points: torch.from_numpy(model.predict_proba(_points("samples", points, 1).numpy()))


def logistic_inception_score(classifier: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor) -> float:
    """IS with a fitted classifier's p(c|x) (see fit_logistic_classifier)."""
    return inception_score(classifier(samples))


# ---- k-NN precision / recall and entropy ----------------------------------------------------------------------

def _knn_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x (N, D) to its k-th nearest other row, (N,) (exact, by a k-d tree)."""
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(x.numpy()).query(x.numpy(), k=k + 1)  # column 0 is the point itself
    return torch.from_numpy(distances[:, -1])


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each point (M, D): is it within radii[j] of some centre j (N, D)? Returns a bool (M,).

    Exact: the largest 1% of the balls are checked against every point, the rest through a k-d tree
    query with the 99th-percentile radius.
    """
    from scipy.spatial import cKDTree

    cut = torch.quantile(radii, 0.99).item()
    big = radii > cut
    inside = (torch.cdist(points, centres[big]) <= radii[big]).any(1)  # (M,)
    small_radii = radii[~big]
    pairs = cKDTree(points.numpy()).sparse_distance_matrix(cKDTree(centres[~big].numpy()), cut, output_type="ndarray")
    point_index, centre_index = torch.from_numpy(pairs["i"]).long(), torch.from_numpy(pairs["j"]).long()
    hit = torch.from_numpy(pairs["v"]) <= small_radii[centre_index]
    return inside | (torch.bincount(point_index[hit], minlength=len(points)) > 0)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """k-NN precision (share of fake points inside some real k-NN ball) and recall (the converse)."""
    k = check_positive_int("k", k)
    real, fake = _points("real", real, k + 1), _points("fake", fake, k + 1)
    precision = _inside_any_ball(fake, real, _knn_distance(real, k)).double().mean().item()
    recall = _inside_any_ball(real, fake, _knn_distance(fake, k)).double().mean().item()
    return precision, recall


def knn_entropy(x: torch.Tensor, k: int = 3) -> float:
    """Kozachenko-Leonenko estimate of differential entropy (nats):
    H ≈ ψ(N) − ψ(k) + log V_D + (D/N) Σ log r_k(i), with V_D the volume of the unit D-ball."""
    k = check_positive_int("k", k)
    x = _points("samples", x, k + 1)
    n, dim = x.shape
    log_unit_ball = (dim / 2) * math.log(math.pi) - math.lgamma(dim / 2 + 1)
    radii = _knn_distance(x, k).clamp(min=1e-300)
    digamma = torch.special.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64))
    return (digamma[0] - digamma[1]).item() + log_unit_ball + dim * radii.log().mean().item()


# ---- MMD ------------------------------------------------------------------------------------------------------

def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 2000) -> float:
    """The median heuristic: the median pairwise distance in the pooled sample (first max_points of each)."""
    pooled = torch.cat([x[:max_points], y[:max_points]]).to(torch.float64)
    d = torch.pdist(pooled)
    return d.median().item()


def mmd2_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD² with k(a, b) = exp(−‖a − b‖²/(2h²)); h from the median heuristic when not given."""
    x, y = _points("x", x), _points("y", y)
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be > 0, got {h}")

    def mean_kernel(a, b, same: bool) -> float:
        gram = torch.exp(-torch.cdist(a, b).square() / (2 * h * h))
        if same:  # drop the diagonal: the unbiased U-statistic
            return ((gram.sum() - gram.diagonal().sum()) / (len(a) * (len(a) - 1))).item()
        return gram.mean().item()

    return mean_kernel(x, x, True) + mean_kernel(y, y, True) - 2 * mean_kernel(x, y, False)


# ---- distances to a grid density ------------------------------------------------------------------------------

def tv_to_grid(histogram: HistogramTV, samples: torch.Tensor, density: torch.Tensor) -> float:
    """Total variation between samples (N, 2) and a grid density, on the histogram's bins."""
    return histogram(_points("samples", samples, 1), density)


def kl_to_grid(histogram: HistogramTV, samples: torch.Tensor, density: torch.Tensor, floor: float = 1e-12) -> float:
    """KL(sample histogram ‖ target bin masses), target masses floored at `floor` (samples outside the grid
    are dropped). It is large when samples sit where the target has almost no mass."""
    observed, _ = histogram.sample_masses(_points("samples", samples, 1))
    observed = observed / observed.sum()
    target = histogram.target_masses(density).clamp(min=floor)
    return (torch.special.xlogy(observed, observed) - observed * target.log()).sum().item()


def radial_distances(samples: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """‖x − μ‖ for each sample (N, D) around a centre (D,): the 'boundary push' statistic."""
    return (_points("samples", samples, 1) - torch.as_tensor(centre, dtype=torch.float64)).norm(dim=1)
