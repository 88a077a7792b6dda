
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


def test_a_class_of_two_components_is_their_mixture(generator):
    """Class 0 of two_modes() is the equal mixture of two Gaussians: its density, its ε* (−σ∇log p by autograd), its
    posterior and its draws follow from the components."""
    mixture = GaussianMixture.two_modes()
    assert mixture.num_classes == 2 and mixture.class_weights.tolist() == pytest.approx([0.5, 0.5])
    z = (2 * torch.randn(64, 2, generator=generator, dtype=torch.float64)).requires_grad_(True)
    lam = torch.linspace(-4, 4, 64, dtype=torch.float64)
    parts = mixture.log_prob_components(z, lam)  # (B, 3)
    manual = torch.logsumexp(parts[:, :2] + torch.tensor([0.5, 0.5]).log(), dim=1)
    torch.testing.assert_close(mixture.log_prob(z, lam, torch.zeros(64, dtype=torch.long)), manual)
    _, sigma = alpha_sigma(lam)
    for c in (0, 1, 2):  # two classes and ∅
        labels = torch.full((64,), c)
        (grad,) = torch.autograd.grad(mixture.log_prob(z, lam, labels).sum(), z)
        torch.testing.assert_close(mixture.eps(z, lam, labels), -sigma[:, None] * grad, rtol=1e-9, atol=1e-9)
    assert torch.allclose(mixture.posterior(z.detach(), lam).sum(1), torch.ones(64, dtype=torch.float64))
    draws = mixture.sample(40_000, 0, generator)
    mean, cov = mixture.class_moments(0)
    assert torch.allclose(draws.mean(0), mean, atol=0.03) and torch.allclose(torch.cov(draws.T), cov, atol=0.05)
    assert abs((draws[:, 0] > 0).double().mean().item() - 0.5) < 0.01  # half in each mode
    with pytest.raises(ValueError, match="classes must give each"):
        GaussianMixture(torch.ones(3), mixture.means, mixture.covariances, classes=[0, 2, 2])


def test_one_level_for_the_batch_equals_a_level_per_sample(anisotropic, generator):
    """At a sampler's step every sample is at one λ and the level's variances are computed once: the same ε*, log p
    and posterior as when the samples' levels differ and each gets its own."""
    z = 2 * torch.randn(64, 2, generator=generator, dtype=torch.float64)
    c = torch.arange(64) % 4
    for lam in (-20.0, -3.0, 0.5, 7.0, 20.0):
        one = torch.full((64,), lam, dtype=torch.float64)
        each = torch.cat([one, torch.tensor([lam - 1.0])])  # one more sample at another level
        z_each, c_each = torch.cat([z, z[:1]]), torch.cat([c, c[:1]])
        torch.testing.assert_close(anisotropic.eps(z, one, c), anisotropic.eps(z_each, each, c_each)[:64],
                                   rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(anisotropic.log_prob(z, one, c), anisotropic.log_prob(z_each, each, c_each)[:64],
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(anisotropic.posterior(z, one), anisotropic.posterior(z_each, each)[:64],
                                   rtol=1e-12, atol=1e-14)


def test_float32_eps_model_call_agrees_with_float64(anisotropic, generator):
    """As an eps_model the mixture computes in z's dtype: float32 ε* agrees with the float64 one to float32 round-off
    over the whole λ range (which is why figure2 samples the exact mixture in float32)."""
    z = 3 * torch.randn(4096, 2, generator=generator, dtype=torch.float64)
    lam = torch.linspace(-20, 20, 4096, dtype=torch.float64)
    c = torch.arange(4096) % 4
    eps32 = anisotropic(z.float(), lam.float(), c)
    assert eps32.dtype == torch.float32
    torch.testing.assert_close(eps32.double(), anisotropic.eps(z, lam, c), rtol=1e-4, atol=1e-5)


def test_cond_and_uncond_from_one_evaluation(anisotropic, generator):
    """The mixture's shortcut for CFG (one evaluation of its components instead of a doubled batch) gives ε*(z, c)
    and ε*(z), and guided() takes it."""
    z = 2 * torch.randn(64, 2, generator=generator, dtype=torch.float64)
    lam, c = torch.full((64,), 0.3, dtype=torch.float64), torch.arange(64) % 3
    cond, uncond = anisotropic.cond_and_uncond(z, lam, c)
    torch.testing.assert_close(cond, anisotropic.eps(z, lam, c), rtol=0, atol=0)
    torch.testing.assert_close(uncond, anisotropic.eps(z, lam, torch.full_like(c, 3)), rtol=0, atol=0)
    torch.testing.assert_close(guided(anisotropic, 2.0)(z, lam, c), 3 * cond - 2 * uncond)
