import json

import pytest
import torch
from saved import write_model_file

from cfgedu.commands.cli import main
from cfgedu.data.toy import ToyData
from cfgedu.engine.experiment import build_network, train_experiment
from cfgedu.engine.presets import toy_experiment
from cfgedu.nets.mlp import EpsMLP, MLPConfig
from cfgedu.toy.fields import field_report
from cfgedu.toy.grid import Grid2D
from cfgedu.toy.learned import eps_relative_errors

SMALL = {"width": 64, "depth": 2, "class_dim": 8}
SHORT = toy_experiment("mlp", 300, p_uncond=0.5, batch_size=256, lr=5e-3, **SMALL)


@pytest.fixture(scope="module")
def trained():
    """300 steps of a 2×64 ε-MLP at batch 256 (seconds on 2 cores), shared by the tests below. Half the labels
    are dropped so that the unconditional predictor, too, gets enough examples in so short a run."""
    return train_experiment(SHORT, None, progress=False)


def test_toy_data_is_a_pure_function_of_its_indices_and_follows_the_mixture(toy):
    data = ToyData(toy, seed=3)
    x, c = data.batch(5, 0, 1, 2, 4000)
    x_again, c_again = data.batch(5, 0, 1, 2, 4000)
    assert torch.equal(x, x_again) and torch.equal(c, c_again)
    assert not torch.equal(data.batch(5, 0, 0, 2, 4000)[0], x)  # the other rank draws other points
    assert data.num_classes == 3 and data.data_shape == (2,)
    counts = torch.bincount(c, minlength=3).double() / len(c)
    torch.testing.assert_close(counts, toy.weights, atol=0.03, rtol=0)
    for k in range(3):
        torch.testing.assert_close(x[c == k].double().mean(0), toy.means[k], atol=0.06, rtol=0)
        assert x[c == k].double().std(0).sub(0.6).abs().max() < 0.05
    with pytest.raises(ValueError, match="bad batch request"):
        data.batch(0, 0, 2, 2, 8)


def test_eps_error_is_zero_for_the_exact_model_and_one_for_zero(toy):
    assert eps_relative_errors(toy, toy, 10_000)["cond"] < 1e-12
    zero = lambda z, lam, c: torch.zeros_like(z)  # noqa: E731
    errors = eps_relative_errors(zero, toy, 10_000)
    assert errors == {"cond": pytest.approx(1.0), "uncond": pytest.approx(1.0)}


def test_short_training_lowers_the_eps_error_well_below_the_untrained_model(toy, trained):
    untrained = eps_relative_errors(build_network(SHORT).eval(), toy, 10_000)
    errors = eps_relative_errors(trained.ema.eval(), toy, 10_000)
    assert errors["cond"] < 0.1 * untrained["cond"]
    # The untrained network already has the exact score of N(0, I) built in (its preconditioner), a fair
    # guess of the marginal, so the unconditional baseline is low to begin with.
    assert errors["uncond"] < 0.7 * untrained["uncond"]
    assert trained.history[-1]["loss"] < trained.history[0]["loss"] and trained.step == 300


def test_learned_cfg_field_curls_more_at_larger_w(trained):
    """Once ε_θ(z, c) and ε_θ(z, ∅) are learned, their difference (the implicit classifier, small and
    unconstrained) is relatively more rotational than ε_θ(z, c) itself, so the relative curl grows with w."""
    grid = Grid2D(3.0, 32)
    for lam in (-4.0, 0.0, 4.0):
        curl = {w: field_report(trained.ema.eval(), lam, 0, w, grid)["relative_curl"] for w in (0.0, 3.0)}
        assert curl[3.0] > curl[0.0]


def test_the_toy_experiment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind must be one of mlp, energy"):
        toy_experiment("unet")
    with pytest.raises(ValueError, match="p_uncond"):
        toy_experiment(p_uncond=1.5)
    with pytest.raises(ValueError, match="steps"):
        toy_experiment(steps=0)
    with pytest.raises(ValueError, match="--width must be int"):
        toy_experiment(width=6.5)


def test_the_toy_ema_follows_the_run_length():
    assert toy_experiment(steps=3000).train.ema_decay == pytest.approx(1 - 20 / 3000)
    assert toy_experiment(steps=10**6).train.ema_decay == 0.995
    assert toy_experiment(steps=300, ema_decay=0.5).train.ema_decay == 0.5


def test_toy_train_and_fields_commands_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["toy-train", "--out", str(run), "--steps", "20", "--seed", "1", "--width", "16", "--no-progress"]) == 0
    errors = json.loads((run / "eps_error.json").read_text())
    assert {"eps_rel_error_cond", "eps_rel_error_uncond", "step"} <= errors.keys() and errors["step"] == 20
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "mlp" and config["preset"] == "toy" and config["model"]["width"] == 16
    assert config["train"]["steps"] == 20 and config["train"]["seed"] == 1
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 20
    assert main(["toy-train", "--out", str(run), "--steps", "20", "--seed", "1", "--width", "16", "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out  # the run folder resumes like train's
    out = tmp_path / "fields"
    assert main(["fields", "--checkpoint", str(run), "--out", str(out), "--grid", "16",
                 "--w", "0", "3", "--lam", "0"]) == 0
    rows = json.loads((out / "fields.json").read_text())["rows"]
    assert [(r["model"], r["w"]) for r in rows] == [("exact", 0.0), ("exact", 3.0), ("learned", 0.0), ("learned", 3.0)]
    assert all(r["relative_curl"] < 1e-6 for r in rows if r["model"] == "exact")
    assert (out / "curl.png").stat().st_size > 0 and (out / "helmholtz.png").stat().st_size > 0
    fig2 = tmp_path / "figure2"
    assert main(["figure2", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(fig2), "--w", "1",
                 "--samples-per-class", "200", "--steps", "8"]) == 0
    panels = json.loads((fig2 / "figure2.json").read_text())["panels"]
    assert all(0 <= c["tv_learned_to_target"] <= 1 for panel in panels for c in panel["classes"])


def test_commands_explain_missing_and_foreign_checkpoints(tmp_path, capsys):
    assert main(["fields", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"kind": "unet", "config": {}, "state_dict": {}}, foreign)
    assert main(["fields", "--checkpoint", str(foreign), "--out", str(tmp_path)]) == 2
    assert "holds a 'unet' network; this command needs one of mlp, energy" in capsys.readouterr().err
    wide = EpsMLP(MLPConfig(data_dim=3, width=8, depth=1, class_dim=2))
    write_model_file(tmp_path / "three_d.pt", wide, "mlp")
    assert main(["fields", "--checkpoint", str(tmp_path / "three_d.pt"), "--out", str(tmp_path)]) == 2
    assert "2D eps_model" in capsys.readouterr().err
    assert main(["figure2", "--checkpoint", str(foreign), "--out", str(tmp_path)]) == 2
