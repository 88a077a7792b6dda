import pytest
import torch
from saved import write_model_file

from cfgedu.core.schedule import alpha_sigma
from cfgedu.engine.runs import load_checkpoint_model
from cfgedu.nets.mlp import EnergyMLP, EpsMLP, MLPConfig
from cfgedu.nets.registry import MODEL_KINDS, build_model

SMALL = MLPConfig(width=16, depth=2, class_dim=4)


def _inputs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), 8 * torch.rand(n, generator=g) - 4, torch.arange(n) % 4


@pytest.fixture
def models():
    torch.manual_seed(0)
    return EpsMLP(SMALL), EnergyMLP(SMALL)


def test_registered_kinds_build_the_classes():
    assert MODEL_KINDS["mlp"] is EpsMLP and MODEL_KINDS["energy"] is EnergyMLP
    assert isinstance(build_model("mlp", vars(SMALL)), EpsMLP)
    assert isinstance(build_model("energy", vars(SMALL)), EnergyMLP)


def test_energy_eps_is_sigma_times_the_energy_gradient_by_finite_differences(models):
    _, energy = models
    z, lam, c = _inputs()
    energy = energy.double()
    eps = energy(z.double(), lam.double(), c)
    h = 1e-6
    grads = []
    for j in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[j] = h
        with torch.no_grad():
            grads.append((energy.energy(z.double() + step, lam.double(), c)
                          - energy.energy(z.double() - step, lam.double(), c)) / (2 * h))
    _, sigma = alpha_sigma(lam.double())
    torch.testing.assert_close(eps, sigma[:, None] * torch.stack(grads, 1), rtol=1e-6, atol=1e-9)


def test_preconditioning_matches_the_exact_eps_at_both_ends(models):
    """ε → 0 like σ at the clean end; at the noisy end ε → z and the class dependence vanishes like α."""
    z, _, c = _inputs()
    null = torch.full_like(c, 3)
    for model in models:
        with torch.no_grad():
            clean = model(z, torch.full((6,), 30.0), c)  # σ = e^{-15}
            noisy, noisy_null = (model(z, torch.full((6,), -30.0), labels) for labels in (c, null))  # α = e^{-15}
        assert clean.abs().max() < 1e-5
        torch.testing.assert_close(noisy, z, atol=1e-5, rtol=0)
        assert (noisy - noisy_null).abs().max() < 1e-5


def test_null_row_is_a_separate_label_and_out_of_range_labels_are_refused(models):
    z, lam, _ = _inputs()
    for model in models:
        assert model.class_embedding.num_embeddings == SMALL.num_classes + 1
        with torch.no_grad():
            null = model(z, lam, torch.full((6,), 3))
            cls0 = model(z, lam, torch.zeros(6, dtype=torch.long))
        assert not torch.allclose(null, cls0)
        with pytest.raises(ValueError, match="null label"):
            model(z, lam, torch.full((6,), 4))


def test_bad_shapes_and_configs_give_clear_errors(models):
    z, lam, c = _inputs()
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        models[0](torch.randn(6, 3), lam, c)
    with pytest.raises(ValueError, match="lam must have shape"):
        models[1](z, lam[:3], c)
    with pytest.raises(ValueError, match="width"):
        MLPConfig(width=0)
    with pytest.raises(ValueError, match="MLPConfig"):
        EpsMLP({"width": 4})


def test_energy_training_graph_reaches_the_weights_and_no_grad_sampling_skips_it(models):
    _, energy = models
    z, lam, c = _inputs()
    loss = energy(z, lam, c).pow(2).sum()
    loss.backward()
    *inner, last_bias = energy.trunk.parameters()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in inner)
    assert last_bias.grad is None or last_bias.grad.abs().max() == 0  # a constant in E does not change ε = σ∇E
    with torch.no_grad():
        assert not energy(z, lam, c).requires_grad


def test_saved_models_reload_identically_with_weights_only(tmp_path, models):
    z, lam, c = _inputs()
    for kind, model in zip(("mlp", "energy"), models, strict=True):
        path = write_model_file(tmp_path / f"{kind}.pt", model, kind)
        assert set(torch.load(path, weights_only=True)) == {"kind", "config", "state_dict"}
        loaded = load_checkpoint_model(path, kinds=(kind,))
        with torch.no_grad():
            torch.testing.assert_close(loaded(z, lam, c), model(z, lam, c))
    with pytest.raises(ValueError, match="holds a 'mlp' network"):
        load_checkpoint_model(tmp_path / "mlp.pt", kinds=("energy",))
