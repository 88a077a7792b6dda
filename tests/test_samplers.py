import pytest
import torch

from cfgedu.core.guidance import guided
from cfgedu.core.samplers import sample
from cfgedu.core.tensors import make_generator
from cfgedu.toy.mixture import GaussianMixture


@pytest.mark.parametrize("method", ["ancestral", "ddim"])
def test_exact_scores_reproduce_each_component(anisotropic, method):
    """Algorithm 2 with the exact ε* at w = 0 reproduces every component's mean and covariance."""
    n = 20_000
    labels = torch.arange(3).repeat_interleave(n)
    x = sample(guided(anisotropic, 0.0), (2,), labels, generator=make_generator(1), steps=128, v=0.3,
               method=method, dtype=torch.float64)
    for c in range(3):
        xc = x[labels == c]
        assert torch.allclose(xc.mean(0), anisotropic.means[c], atol=0.02)
        assert torch.allclose(torch.cov(xc.T), anisotropic.covariances[c], atol=0.03)


def test_unconditional_sampling_reaches_the_mixture(toy):
    x = sample(toy, (2,), torch.full((30_000,), 3), generator=make_generator(2), steps=64, dtype=torch.float64)
    mixture_mean = (toy.weights[:, None] * toy.means).sum(0)
    assert torch.allclose(x.mean(0), mixture_mean, atol=0.02)


def test_randomness_only_from_generator(toy):
    labels = torch.zeros(16, dtype=torch.long)
    a = sample(toy, (2,), labels, generator=make_generator(5), steps=8)
    torch.manual_seed(123)
    b = sample(toy, (2,), labels, generator=make_generator(5), steps=8)
    assert torch.equal(a, b)


def test_ddim_is_deterministic_given_the_start(toy):
    """DDIM draws noise only once, for z_1: the same generator state gives the same output even after reuse."""
    labels = torch.zeros(16, dtype=torch.long)
    a, path = sample(toy, (2,), labels, generator=make_generator(5), steps=8, method="ddim", trajectory=True)
    assert len(path) == 9 and torch.equal(path[-1], a)


def test_any_data_shape(generator):
    """Samplers are rank-agnostic: an image-shaped exact mixture samples through the same path."""
    mixture = GaussianMixture([1.0], [[0.5] * 12], 0.01 * torch.eye(12)[None])
    model = lambda z, lam, c: mixture(z.reshape(len(z), -1), lam, c).reshape(z.shape)  # noqa: E731
    x = sample(model, (3, 2, 2), torch.zeros(512, dtype=torch.long), generator=generator, steps=32,
               num_classes=1, dtype=torch.float64)
    assert x.shape == (512, 3, 2, 2) and abs(x.mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(v=1.5), r"v must be in \[0.0, 1.0\]"),
    (dict(method="euler"), "method must be one of ancestral, ddim"),
])
def test_bad_sampler_arguments(toy, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(toy, (2,), torch.zeros(2, dtype=torch.long), generator=make_generator(0), **kwargs)


def test_bad_labels(toy):
    with pytest.raises(ValueError, match="labels must be in"):
        sample(toy, (2,), torch.tensor([0, 7]), generator=make_generator(0), steps=2)


def test_a_low_temperature_shrinks_the_samples_and_noise_scale_one_changes_nothing(toy):
    """noise_scale < 1 shrinks every ancestral step's noise: the samples of a class come out narrower than the class
    (std 0.6), which is what lowering the temperature of a diffusion sampler does; noise_scale = 1 is Algorithm 2."""
    labels = torch.zeros(20_000, dtype=torch.long)
    plain = sample(toy, (2,), labels, generator=make_generator(3), steps=64, dtype=torch.float64)
    same = sample(toy, (2,), labels, generator=make_generator(3), steps=64, dtype=torch.float64, noise_scale=1.0)
    cold = sample(toy, (2,), labels, generator=make_generator(3), steps=64, dtype=torch.float64, noise_scale=0.5)
    assert torch.equal(plain, same)
    assert plain.std(0).sub(0.6).abs().max() < 0.02 and cold.std(0).max() < 0.5
    with pytest.raises(ValueError, match="noise_scale"):
        sample(toy, (2,), labels[:2], generator=make_generator(3), steps=4, noise_scale=-1.0)
