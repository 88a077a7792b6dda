import pytest
import torch

from cfgedu.core.losses import diffusion_loss, draw_noise, drop_labels


def test_realised_dropout_rate_and_null_never_a_class(generator):
    c = torch.randint(0, 10, (200_000,), generator=generator)
    dropped = drop_labels(c, draw_noise(len(c), (1,), 0.2, generator).drop, 10)
    null = dropped == 10
    assert abs(null.float().mean().item() - 0.2) < 0.005
    assert torch.equal(dropped[~null], c[~null])
    assert int(dropped.max()) == 10 and not (c == 10).any()


def test_exact_eps_minimises_the_loss(toy, generator):
    """Algorithm 1's ε-MSE at the exact ε* is lower than at a perturbed model, and equals the known residual."""
    x = toy.sample(40_000, 0, generator).float()
    c = torch.zeros(40_000, dtype=torch.long)
    exact = diffusion_loss(toy, x, c, p_uncond=0.0, num_classes=3, generator=torch.Generator().manual_seed(1))
    biased = diffusion_loss(lambda z, lam, c: toy(z, lam, c) + 0.1, x, c, p_uncond=0.0, num_classes=3,
                            generator=torch.Generator().manual_seed(1))
    assert exact < biased
    assert biased.item() == pytest.approx(exact.item() + 0.01, abs=0.003)


def test_loss_sees_dropped_labels_and_lambda_from_p(toy, generator):
    seen = {}

    def model(z, lam, c):
        seen.update(lam=lam, c=c)
        return torch.zeros_like(z)

    x = torch.zeros(50_000, 2)
    loss = diffusion_loss(model, x, torch.zeros(50_000, dtype=torch.long), p_uncond=0.5, num_classes=3,
                          generator=generator)
    assert loss.item() == pytest.approx(1.0, abs=0.02)  # E‖ε‖²/D with a zero model
    assert abs((seen["c"] == 3).float().mean().item() - 0.5) < 0.01
    assert seen["lam"].min() >= -20 and seen["lam"].max() <= 20 and abs(seen["lam"].median().item()) < 0.05


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_bad_p_uncond(generator, p):
    with pytest.raises(ValueError, match="p_uncond must be"):
        draw_noise(3, (2,), p, generator)


def test_null_label_in_training_data_is_refused(toy, generator):
    with pytest.raises(ValueError, match=r"labels must be in 0..2"):
        diffusion_loss(toy, torch.zeros(2, 2), torch.tensor([0, 3]), p_uncond=0.1, num_classes=3, generator=generator)
