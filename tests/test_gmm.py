
import pytest
import torch

from cfgedu.core.guidance import guided
from cfgedu.core.schedule import alpha_sigma
from cfgedu.toy.mixture import GaussianMixture

LAMS = [-6.0, -1.0, 0.0, 2.5, 8.0]


def points(generator, n=64):
    return 2 * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def test_three_gaussians_preset(toy):
    assert toy.weights.tolist() == pytest.approx([1 / 3] * 3)
    assert toy.means[0].tolist() == pytest.approx([0.0, 1.0], abs=1e-12)
    assert toy.means.norm(dim=1).tolist() == pytest.approx([1.0] * 3)
    assert torch.allclose(toy.covariances, 0.36 * torch.eye(2, dtype=torch.float64).expand(3, 2, 2))


@pytest.mark.parametrize("lam", LAMS)
def test_log_prob_matches_torch_distributions(anisotropic, generator, lam):
    z = points(generator)
    lam_b = torch.full((z.shape[0],), lam, dtype=torch.float64)
    alpha, sigma = alpha_sigma(torch.tensor(lam, dtype=torch.float64))
    for c in range(3):
        reference = torch.distributions.MultivariateNormal(
            alpha * anisotropic.means[c], alpha**2 * anisotropic.covariances[c] + sigma**2 * torch.eye(2)).log_prob(z)
        labels = torch.full((z.shape[0],), c)
        assert torch.allclose(anisotropic.log_prob(z, lam_b, labels), reference)


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("c", [0, 1, 2, 3])
def test_eps_is_minus_sigma_times_autograd_score(anisotropic, generator, lam, c):
    """ε*(z, c) = −σ ∇_z log p_λ(z|c); c = 3 (the null label) gives the marginal."""
    z = points(generator).requires_grad_(True)
    lam_b = torch.full((z.shape[0],), lam, dtype=torch.float64)
    labels = torch.full((z.shape[0],), c)
    (score,) = torch.autograd.grad(anisotropic.log_prob(z, lam_b, labels).sum(), z)
    _, sigma = alpha_sigma(lam_b)
    assert torch.allclose(anisotropic(z.detach(), lam_b, labels), -sigma[:, None] * score, atol=1e-12)


def test_posterior_is_bayes_rule(anisotropic, generator):
    z, lam = points(generator), torch.full((64,), 0.5, dtype=torch.float64)
    joint = (torch.stack([anisotropic.log_prob(z, lam, torch.full((64,), c)) for c in range(3)], 1)
             + anisotropic.weights.log())
    assert torch.allclose(anisotropic.posterior(z, lam), torch.softmax(joint, 1))
    assert torch.allclose(anisotropic.posterior(z, lam).sum(1), torch.ones(64, dtype=torch.float64))


def test_posterior_tends_to_prior_as_alpha_vanishes(anisotropic, generator):
    lam = torch.full((64,), -30.0, dtype=torch.float64)
    assert torch.allclose(anisotropic.posterior(points(generator), lam), anisotropic.weights.expand(64, 3), atol=1e-6)


@pytest.mark.parametrize("lam", LAMS)
def test_implicit_classifier_is_gradient_of_log_posterior(anisotropic, generator, lam):
    z = points(generator).requires_grad_(True)
    lam_b = torch.full((z.shape[0],), lam, dtype=torch.float64)
    labels = torch.randint(0, 3, (z.shape[0],), generator=generator)
    log_post = anisotropic.posterior(z, lam_b).log().gather(1, labels[:, None]).sum()
    (grad,) = torch.autograd.grad(log_post, z)
    assert torch.allclose(anisotropic.implicit_classifier_gradient(z.detach(), lam_b, labels), grad, atol=1e-9)


@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
def test_classifier_guidance_with_exact_classifier_equals_exact_cfg(anisotropic, generator, w):
    """ε* − wσ∇log p(c|z) = (1 + w)ε*(z, c) − wε*(z) (Sec. 3.1 and Eq. 6 with exact scores)."""
    z, lam = points(generator), torch.full((64,), 1.0, dtype=torch.float64)
    labels = torch.randint(0, 3, (64,), generator=generator)
    _, sigma = alpha_sigma(lam)
    classifier_guided = (anisotropic(z, lam, labels)
                         - w * sigma[:, None] * anisotropic.implicit_classifier_gradient(z, lam, labels))
    assert torch.allclose(guided(anisotropic, w)(z, lam, labels), classifier_guided, atol=1e-12)


def test_tweedie_is_posterior_mean(toy, generator):
    """x̂(z, c) = E[x|z, c]: for a Gaussian class, μ + αΣV⁻¹(z − αμ)."""
    z, lam = points(generator), torch.full((64,), 0.3, dtype=torch.float64)
    labels = torch.zeros(64, dtype=torch.long)
    alpha, sigma = alpha_sigma(torch.tensor(0.3, dtype=torch.float64))
    expected = toy.means[0] + alpha * 0.36 / (alpha**2 * 0.36 + sigma**2) * (z - alpha * toy.means[0])
    assert torch.allclose(toy.x_hat(z, lam, labels), expected)


def test_sample_moments(anisotropic, generator):
    x = anisotropic.sample(200_000, 1, generator)
    assert torch.allclose(x.mean(0), anisotropic.means[1], atol=0.01)
    assert torch.allclose(torch.cov(x.T), anisotropic.covariances[1], atol=0.01)


def test_dtype_follows_input(toy):
    z = torch.zeros(4, 2)
    assert toy(z, torch.zeros(4), torch.zeros(4, dtype=torch.long)).dtype == torch.float32


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights=[1, 1], means=[[0, 0]], covariances=[[[1, 0], [0, 1]]]), "weights must be"),
    (dict(weights=[1], means=[[0, 0]], covariances=[[[1, 0], [0, -1]]]), "positive definite"),
    (dict(weights=[1], means=[[0, 0]], covariances=[[[1, 0.5], [0, 1]]]), "symmetric"),
    (dict(weights=[-1], means=[[0, 0]], covariances=[[[1, 0], [0, 1]]]), "positive"),
])
def test_bad_mixture(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**kwargs)


def test_bad_labels_and_shapes(toy):
    z, lam = torch.zeros(4, 2), torch.zeros(4)
    with pytest.raises(ValueError, match=r"labels must be in 0..2 or 3 \(the null label\)"):
        toy(z, lam, torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match="labels have batch size 3"):
        toy(z, lam, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"lam must have shape \(4,\)"):
        toy(z, torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 2\)"):
        toy(torch.zeros(4, 3), lam, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        toy(z, lam, torch.zeros(4))
