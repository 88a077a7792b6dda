"""The exact ε of a finite dataset: equal to −σ∇log p_λ of the noised empirical mixture, and, through Algorithm 2,
a sampler that returns training digits of the requested class."""
import math

import pytest
import torch

from cfgedu.core.samplers import sample
from cfgedu.core.schedule import alpha_sigma
from cfgedu.data.digits import load_digits_split
from cfgedu.images.empirical import EmpiricalScore
from cfgedu.images.sampling import class_labels


def log_density(z: torch.Tensor, lam: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """log mean_i N(z; α x_i, σ² I) up to a constant in z, for z (B, D), lam (B,) and points (N, D)."""
    alpha, sigma = alpha_sigma(lam)
    sq_dist = ((z[:, None] - alpha[:, None, None] * points[None]) ** 2).sum(-1)  # (B, N)
    return torch.logsumexp(-sq_dist / (2 * sigma[:, None] ** 2), dim=1) - math.log(len(points))


def test_empirical_eps_is_minus_sigma_times_the_score_of_the_noised_mixture():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(9, 2, 2, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2] * 3)
    score_model = EmpiricalScore(images, labels, num_classes=3)
    z = torch.randn(8, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    lam = torch.linspace(-6, 6, 8, dtype=torch.float64)
    _, sigma = alpha_sigma(lam)
    for c in (torch.tensor([0, 1, 2, 3] * 2), torch.full((8,), 3)):  # 3 = ∅ mixes every image
        members = [images[(labels == k) | (k == 3)].reshape(-1, 4) for k in c.tolist()]
        log_p = sum(log_density(z[i:i + 1].reshape(1, 4), lam[i:i + 1], members[i]) for i in range(8))
        (score,) = torch.autograd.grad(log_p.sum(), z)
        expected = -sigma[:, None, None] * score
        assert torch.allclose(score_model(z.detach(), lam, c), expected, atol=1e-10)


def test_algorithm2_with_the_empirical_score_returns_training_digits_of_the_requested_class():
    """The sampler alone, with no network: every sample lands on a training image (memorisation) of its class."""
    x_train, c_train = load_digits_split("train")
    labels = class_labels(10, 3)
    samples = sample(EmpiricalScore(x_train, c_train, 10), (1, 16, 16), labels,
                     generator=torch.Generator().manual_seed(0), steps=64, clip_x=1.0)
    distances = torch.cdist(samples.reshape(30, -1), x_train.reshape(len(x_train), -1))  # (30, N)
    nearest = distances.argmin(1)
    assert distances.min(1).values.max() < 1e-3  # the typical gap between two training digits is about 3
    assert torch.equal(c_train[nearest], labels)
    assert len(set(nearest.tolist())) > 20  # different draws reach different images


def test_empirical_score_rejects_bad_inputs():
    images, labels = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="every class 0..2 needs at least one image"):
        EmpiricalScore(images, labels, num_classes=3)
    with pytest.raises(ValueError, match=r"images must be \(N, \*data_shape\) and labels \(N,\)"):
        EmpiricalScore(images, labels[:3], num_classes=2)
    score_model = EmpiricalScore(images, labels, num_classes=2)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 1, 2, 2\)"):
        score_model(torch.zeros(2, 1, 3, 3), torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be in 0..1 or 2"):
        score_model(torch.zeros(2, 1, 2, 2), torch.zeros(2), torch.tensor([0, 5]))
