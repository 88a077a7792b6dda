"""Classifier guidance beside CFG (Ho & Salimans 2022, Sec. 3.1-3.3): the noisy classifier, its loss and training,
the guidance wrapper, its curl-free field, and the three classifiers of the toy (exact, trained, implicit)."""
import json

import pytest
import torch
import torch.nn.functional as F

from cfgedu.commands.cli import main
from cfgedu.core.guidance import classifier_guided, classifier_log_prob_gradient, guided
from cfgedu.core.losses import StepNoise, algorithm1_loss, classifier_loss, draw_noise, loss_for
from cfgedu.engine.experiment import build_network, train_experiment
from cfgedu.engine.presets import preset, toy_experiment
from cfgedu.nets.classifier import ClassifierConfig, NoisyClassifier
from cfgedu.nets.mlp import EpsMLP, MLPConfig
from cfgedu.nets.registry import model_record, rebuild_model
from cfgedu.toy.classifiers import ImplicitClassifier, classifier_scores, classifier_table, exact_classifier
from cfgedu.toy.fields import classifier_guidance_fields, field_measures, jacobian, relative_curl
from cfgedu.toy.grid import Grid2D

SHORT = toy_experiment("classifier", 300, batch_size=256, width=64, depth=2)


@pytest.fixture(scope="module")
def trained():
    """300 steps of a 2×64 noisy classifier at batch 256 (seconds on 2 cores), shared by the tests below."""
    return train_experiment(SHORT, None, progress=False)


def inputs(generator, n=64):
    """Points, a spread of levels λ ∈ [−6, 6] and real labels, float64."""
    z = 1.5 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    lam = 12 * torch.rand(n, generator=generator, dtype=torch.float64) - 6
    return z, lam, torch.randint(0, 3, (n,), generator=generator)


def few_levels(generator, n=300):
    """Points within ±4 (inside the implicit classifier's grid) at three levels λ (one grid solve each)."""
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64).clamp(-4, 4)
    return z, torch.tensor([-4.0, 0.0, 4.0], dtype=torch.float64)[torch.arange(n) % 3]


def rotation(z):
    """∇^⊥ψ for a narrow Gaussian ψ centred at (0.3, −0.2): all curl, and ~0 on the boundary of a ±5 grid."""
    d = z - torch.tensor([0.3, -0.2], dtype=z.dtype)
    psi = torch.exp(-(d**2).sum(1) / 0.5)
    return torch.stack([d[:, 1] * psi, -d[:, 0] * psi], dim=1) * 4


# ---------------------------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("w", [0.5, 3.0])
@pytest.mark.parametrize("mixture_name", ["toy", "anisotropic"])
def test_classifier_guidance_with_the_exact_posterior_is_exact_cfg(request, generator, w, mixture_name):
    """SPEC 3.3: ε* − wσ∇log p_λ(c|z) = (1 + w)ε*(z, c) − wε*(z, ∅), the sign included."""
    mixture = request.getfixturevalue(mixture_name)
    z, lam, c = inputs(generator)
    ours = classifier_guided(mixture, exact_classifier(mixture), w)(z, lam, c)
    assert (ours - guided(mixture, w)(z, lam, c)).abs().max() < 1e-9


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_weight_w_plus_one_on_the_unconditional_model_is_weight_w_on_the_conditional(toy, generator, w):
    """SPEC 3.1: p(z|c)·p(c|z)^w ∝ p(z)·p(c|z)^{w+1}."""
    z, lam, c = inputs(generator)
    classifier = exact_classifier(toy)
    unconditional = classifier_guided(toy, classifier, w + 1, unconditional=True)(z, lam, c)
    assert (unconditional - classifier_guided(toy, classifier, w)(z, lam, c)).abs().max() < 1e-9
    assert (unconditional - toy(z, lam, torch.full_like(c, 3))).abs().max() > 1e-3  # the guidance term counts


def test_w_zero_is_the_conditional_model_and_never_asks_the_classifier(toy, generator):
    def refuse(z, lam):
        raise AssertionError("the classifier was called at w = 0")

    z, lam, c = inputs(generator)
    assert torch.equal(classifier_guided(toy, refuse, 0.0)(z, lam, c), toy(z, lam, c))


def test_the_classifier_gradient_by_autograd_is_the_exact_implicit_gradient(anisotropic, generator):
    z, lam, c = inputs(generator)
    gradient = classifier_log_prob_gradient(exact_classifier(anisotropic), z, lam, c)
    torch.testing.assert_close(gradient, anisotropic.implicit_classifier_gradient(z, lam, c), rtol=1e-9, atol=1e-12)
    assert not gradient.requires_grad  # no graph is kept when the caller does not differentiate


def test_classifier_guidance_rejects_bad_inputs(toy, generator):
    z, lam, c = inputs(generator, 4)
    flat = lambda z, lam: z[:, 0]  # noqa: E731  one number per point, not K logits
    with pytest.raises(ValueError, match=r"logits of shape \(4, K\)"):
        classifier_guided(toy, flat, 1.0)(z, lam, c)
    with pytest.raises(ValueError, match=r"labels must be in 0..2"):
        classifier_guided(toy, exact_classifier(toy), 1.0)(z, lam, torch.full_like(c, 3))
    with pytest.raises(ValueError, match="w must be finite"):
        classifier_guided(toy, exact_classifier(toy), float("nan"))
    with pytest.raises(ValueError, match=r"classifier_guided\(\) needs null_label="):
        classifier_guided(lambda z, lam, c: z, exact_classifier(toy), 1.0)


# ---------------------------------------------------------------------------------------------- network and loss


def test_the_noisy_classifier_is_a_registered_network_with_the_classifier_objective(generator):
    model = NoisyClassifier(ClassifierConfig(width=16, depth=2))
    z, lam, _ = inputs(generator, 5)
    assert model(z.float(), lam.float()).shape == (5, 3) and model.objective == "classifier"
    rebuilt = rebuild_model(model_record(model, "classifier"), "memory")
    assert torch.equal(rebuilt(z.float(), lam.float()), model(z.float(), lam.float()))
    with pytest.raises(ValueError, match=r"takes z of shape \(B, 2\)"):
        model(torch.zeros(5, 3), lam.float())
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        ClassifierConfig(width=0)
    with pytest.raises(ValueError, match="lambda_scale must be > 0"):
        ClassifierConfig(lambda_scale=0.0)


def test_the_classifier_loss_is_cross_entropy_on_algorithm_1s_noise_and_never_drops_labels(toy, generator):
    x, c = toy.sample_labelled(20_000, generator)
    noise = draw_noise(20_000, (2,), 0.0, torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = exact_classifier(toy)
    loss = classifier_loss(exact, x, c, noise, 3)
    z = x * torch.sigmoid(noise.lam)[:, None].sqrt() + noise.eps * torch.sigmoid(-noise.lam)[:, None].sqrt()
    torch.testing.assert_close(loss, F.cross_entropy(exact(z, noise.lam).float(), c))
    all_dropped = StepNoise(torch.ones_like(noise.drop), noise.lam, noise.eps)
    assert classifier_loss(exact, x, c, all_dropped, 3) == loss
    shifted = lambda z, lam: exact(z, lam) + torch.tensor([0.5, 0.0, 0.0], dtype=z.dtype)  # noqa: E731
    assert classifier_loss(shifted, x, c, noise, 3) > loss + 1e-3  # the exact posterior minimises it
    with pytest.raises(ValueError, match=r"labels must be in 0..2"):
        classifier_loss(exact, x[:2], torch.tensor([0, 3]), noise.slice(0, 2), 3)


def test_the_loss_follows_the_networks_objective():
    assert loss_for(EpsMLP(MLPConfig(width=8, depth=1, class_dim=2))) is algorithm1_loss
    assert loss_for(NoisyClassifier(ClassifierConfig(width=8, depth=1))) is classifier_loss
    assert loss_for(lambda z, lam, c: z) is algorithm1_loss  # no objective: an ε model

    class Odd(torch.nn.Module):
        objective = "v"

    with pytest.raises(ValueError, match="objective 'v'; known objectives: eps, classifier"):
        loss_for(Odd())


def test_the_toy_classifier_preset():
    experiment = preset("toy-classifier")
    assert experiment.kind == "classifier" and experiment.train.p_uncond == 0.0
    assert experiment.train.steps == 1000 == toy_experiment("classifier").train.steps
    assert toy_experiment("mlp").train.steps == 3000  # the ε-MLP keeps its own length


def test_a_short_run_classifies_almost_as_well_as_the_exact_posterior(toy, trained):
    untrained = build_network(SHORT).eval().double()
    models = {"exact": exact_classifier(toy), "trained": trained.ema.eval().double(), "untrained": untrained}
    rows = {(row["model"], row["lambda"]): row for row in classifier_table(models, toy, lams=(2.0, 8.0), points=8000)}
    for lam in (2.0, 8.0):
        exact, ours = rows["exact", lam], rows["trained", lam]
        assert abs(ours["accuracy"] - exact["accuracy"]) < 0.015
        assert ours["log_loss"] - exact["log_loss"] < 0.04
        assert rows["untrained", lam]["log_loss"] > exact["log_loss"] + 0.3
    assert trained.history[-1]["loss"] < trained.history[0]["loss"]


# ---------------------------------------------------------------------------------------------- fields


@pytest.mark.parametrize("lam", [-4.0, 0.0, 4.0])
def test_the_classifier_guidance_field_is_curl_free_to_round_off(toy, trained, lam):
    """Whatever the classifier learned, −σ∇log p_φ(c|z) is a gradient: its Jacobian is a Hessian."""
    fields = classifier_guidance_fields(trained.ema.eval(), toy)
    grid = Grid2D(3.0, 24)
    field = fields.field(lam, 0, 3.0)
    assert relative_curl(jacobian(field, grid.points())) < 1e-10
    measures = field_measures(field, grid)
    assert abs(measures["circulation"]) < 1e-10 and measures["rotational_energy_fraction"] < 1e-3
    assert (field(grid.points()) - toy(grid.points(), torch.full((24 * 24,), lam, dtype=torch.float64),
                                      torch.zeros(24 * 24, dtype=torch.long))).abs().max() > 1e-3  # it guides


def test_classifier_guidance_fields_need_a_2d_classifier_of_k_classes(toy):
    with pytest.raises(ValueError, match=r"map \(B, 2\) points to \(B, 3\) logits"):
        classifier_guidance_fields(NoisyClassifier(ClassifierConfig(num_classes=4, width=8, depth=1)), toy)


# ---------------------------------------------------------------------------------------------- implicit classifier


@pytest.mark.parametrize("mixture_name", ["toy", "anisotropic"])
def test_the_implicit_classifier_of_the_exact_eps_is_the_exact_posterior(request, generator, mixture_name):
    """Unequal weights and covariances (anisotropic) make the per-class normalisation and the prior matter."""
    mixture = request.getfixturevalue(mixture_name)
    models = {"exact": exact_classifier(mixture), "implicit": ImplicitClassifier(mixture, mixture.weights)}
    rows = classifier_table(models, mixture, lams=(-2.0, 1.0, 6.0), points=4000)
    for exact, implicit in zip(rows[::2], rows[1::2], strict=True):
        assert abs(implicit["accuracy"] - exact["accuracy"]) <= 0.002
        assert abs(implicit["log_loss"] - exact["log_loss"]) < 1e-4
    z, lam = few_levels(generator)
    error = (models["implicit"](z, lam).exp() - models["exact"](z, lam).exp()).abs().max()
    assert error < 2e-3


def test_the_implicit_classifier_drops_the_curl_of_a_learned_field(anisotropic, generator):
    """A class-dependent rotational error in ε changes no likelihood: the Helmholtz–Hodge split removes it."""
    curly = lambda z, lam, c: anisotropic(z, lam, c) + (c[:, None] == 1) * rotation(z)  # noqa: E731
    curly.num_classes = 3
    z, lam = few_levels(generator)
    implicit = ImplicitClassifier(curly, anisotropic.weights)(z, lam).exp()
    assert (implicit - anisotropic.posterior(z, lam)).abs().max() < 2e-3
    biased = lambda z, lam, c: anisotropic(z, lam, c) + 0.3 * (c[:, None] == 1)  # noqa: E731  a gradient error
    wrong = ImplicitClassifier(biased, anisotropic.weights)(z, lam).exp()
    assert (wrong - anisotropic.posterior(z, lam)).abs().max() > 0.05


def test_the_classifier_tables_reject_bad_inputs(toy):
    with pytest.raises(ValueError, match="positive numbers"):
        ImplicitClassifier(toy, torch.tensor([0.5, -0.5, 1.0]))
    with pytest.raises(ValueError, match="2D eps_model"):
        ImplicitClassifier(lambda z, lam, c: torch.zeros(len(z), 3, dtype=z.dtype), toy.weights)
    with pytest.raises(ValueError, match="at least one classifier and one λ"):
        classifier_table({"exact": exact_classifier(toy)}, toy, lams=())
    z, lam, c = torch.zeros(4, 2), torch.zeros(4), torch.tensor([0, 1, 2, 2])
    with pytest.raises(ValueError, match=r"logits of shape \(4, K\) with K > 2"):
        classifier_scores(lambda z, lam: torch.zeros(4, 2), z, lam, c)


# ---------------------------------------------------------------------------------------------- commands


def test_toy_train_classifier_and_fields_with_classifier_end_to_end(tmp_path, capsys):
    toy, clf, out = tmp_path / "toy", tmp_path / "clf", tmp_path / "fields"
    tiny = ["--steps", "20", "--width", "16", "--no-progress"]
    assert main(["toy-train", "--out", str(toy), *tiny]) == 0
    assert main(["toy-train", "--model", "classifier", "--out", str(clf), *tiny]) == 0
    assert not (clf / "eps_error.json").exists()
    accuracy = json.loads((clf / "classifier_accuracy.json").read_text())["rows"]
    assert {row["model"] for row in accuracy} == {"exact", "classifier"}
    assert json.loads((clf / "config.json").read_text())["preset"] == "toy-classifier"
    assert main(["fields", "--checkpoint", str(toy), "--classifier", str(clf), "--out", str(out), "--grid", "16",
                 "--w", "0", "3", "--lam", "0"]) == 0
    saved = json.loads((out / "fields.json").read_text())
    rows = saved["rows"]
    assert [(r["model"], r["w"]) for r in rows] == [(m, w) for m in ("exact", "learned", "classifier") for w in (0, 3)]
    assert set(rows[0]) == set(rows[-1]) and "classifier" in saved["fields"]
    exact_fd = {r["w"]: r["relative_curl_fd"] for r in rows if r["model"] == "exact"}
    assert all(r["relative_curl_fd_floor"] == exact_fd[r["w"]] for r in rows)
    assert exact_fd[3] > 1e-6  # a real floor: the grid error of a curved field
    assert all(r["relative_curl"] < 1e-10 for r in rows if r["model"] == "classifier")
    table = json.loads((out / "classifiers.json").read_text())["rows"]
    assert {r["model"] for r in table} == {"exact", "classifier", "implicit"} and len(table) == 24
    assert all(0 <= r["accuracy"] <= 1 and r["log_loss"] > 0 for r in table)
    assert "implicit" in capsys.readouterr().out


def test_classifier_commands_explain_wrong_inputs(tmp_path, capsys):
    assert main(["toy-train", "--model", "classifier", "--p-uncond", "0.2", "--out", str(tmp_path / "c")]) == 2
    assert "--p-uncond does not apply to --model classifier" in capsys.readouterr().err
    run = tmp_path / "toy"
    assert main(["toy-train", "--out", str(run), "--steps", "2", "--width", "8", "--no-progress"]) == 0
    assert main(["fields", "--checkpoint", str(run), "--classifier", str(run), "--out", str(tmp_path / "f")]) == 2
    assert "holds a 'mlp' network; this command needs one of classifier" in capsys.readouterr().err
