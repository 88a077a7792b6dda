"""Digits at toy scale: the data, the classifier protocol (FID, IS, accuracy), the image sampler and the
sample/evaluate/bench commands on a tiny trained U-Net."""
import json

import numpy as np
import pytest
import torch

from cfgedu.commands.cli import main
from cfgedu.core.samplers import sample
from cfgedu.data.digits import DigitsData, load_digits_split
from cfgedu.images.evaluation import Protocol, guidance_sweep, markdown_table
from cfgedu.images.metrics import FeatureStats, class_accuracy, fid_floor, frechet_distance, inception_score
from cfgedu.images.sampling import balanced_labels, class_labels, image_grid, sample_images
from cfgedu.nets.unet import UNetConfig

TINY = UNetConfig(image_size=16, in_channels=1, num_classes=10, model_channels=8, channel_mult=(1, 2),
                  num_res_blocks=1, attention_resolutions=(8,), head_channels=8, norm_groups=4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny U-Net trained for 3 steps on digits by the engine: a real checkpoint folder."""
    from cfgedu.engine.config import TrainConfig
    from cfgedu.engine.experiment import Experiment, train_experiment

    out = tmp_path_factory.mktemp("digits_run")
    experiment = Experiment("unet", TINY, DigitsData(16), TrainConfig(steps=3, batch_size=8, lr=1e-3, ema_decay=0.5))
    train_experiment(experiment, out, preset_name="tiny", progress=False)
    return out


def test_digits_split_is_fixed_stratified_and_in_range():
    x_train, c_train = load_digits_split("train")
    x_val, c_val = load_digits_split("val")
    assert (len(c_train), len(c_val)) == (1437, 360)  # 1,797 images, 20% held out
    assert x_train.shape[1:] == (1, 16, 16) and x_train.min() == -1 and x_train.max() <= 1
    assert torch.bincount(c_val).min() >= 35  # every class held out in proportion
    x8, _ = load_digits_split("val", 8)
    assert set(((x8 + 1) / 2 * 16).round().unique().tolist()) <= set(range(17))  # the original 0..16 levels
    with pytest.raises(ValueError, match="size must be one of"):
        load_digits_split("train", 12)
    with pytest.raises(ValueError, match="split must be one of"):
        load_digits_split("test")


def test_digits_ranks_share_one_global_batch():
    data = DigitsData(16).build(seed=3)
    x, c = data.batch(5, 0, 0, 1, 8)
    halves = [data.batch(5, 0, rank, 2, 4) for rank in range(2)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x) and torch.equal(torch.cat([h[1] for h in halves]), c)
    assert not torch.equal(data.batch(6, 0, 0, 1, 8)[0], x)


def test_classifier_reaches_97_percent_on_held_out_digits():
    from cfgedu.images.digits_classifier import load_classifier, validation_accuracy

    model = load_classifier(progress=False)  # cached after the first run
    assert validation_accuracy(model) >= 0.97
    with pytest.raises(ValueError, match="takes images of shape"):
        model(torch.zeros(2, 1, 8, 8))


def test_the_extractor_trains_its_classifier_on_a_fresh_machine(tmp_path, monkeypatch):
    """With nothing cached, the first extraction (a no_grad context) still trains the classifier, then caches it."""
    from cfgedu.images.digits_classifier import digits_features

    monkeypatch.setenv("CFGEDU_CACHE", str(tmp_path))
    features, logits = digits_features()(torch.zeros(3, 1, 8, 8))
    assert features.shape[0] == 3 and logits.shape == (3, 10)
    assert len(list(tmp_path.glob("digits_classifier_*_8px_*.pt"))) == 1


def stats_with(mean, cov, count=10):
    """FeatureStats whose sums give exactly this mean (D,) and covariance (D, D)."""
    mean, cov = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64)
    return FeatureStats(count, count * mean, (count - 1) * cov + count * torch.outer(mean, mean))


def test_frechet_distance_matches_direct_formulas():
    from scipy.linalg import sqrtm

    g = np.random.default_rng(0)
    m1, m2 = g.normal(size=(2, 3))
    a = stats_with(m1, np.diag([1.0, 4.0, 9.0]))
    b = (torch.tensor(m2), torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)))
    # diagonal covariances: ‖Δm‖² + Σ (√a_i − √b_i)²
    direct = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt([1, 4, 9]) - np.sqrt([4, 1, 1])) ** 2)
    assert frechet_distance(a, b) == pytest.approx(direct, rel=1e-10)
    features = g.normal(size=(2, 400, 6)) @ g.normal(size=(6, 6))  # two correlated feature sets
    stats = [FeatureStats.of(torch.tensor(f)) for f in features]
    c1, c2 = (np.cov(f, rowvar=False) for f in features)
    scipy_fid = np.sum((features[0].mean(0) - features[1].mean(0)) ** 2) + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert frechet_distance(stats[0], stats[1].moments()) == pytest.approx(scipy_fid, rel=1e-8)
    assert frechet_distance(stats[0], stats[0].moments()) == pytest.approx(0, abs=1e-8)


def test_inception_score_and_accuracy_known_answers():
    assert inception_score(torch.zeros(10, 4)) == pytest.approx((1.0, 0.0))  # uniform p(y|x): no information
    confident = torch.eye(4).repeat(3, 1) * 50  # every class equally often, each image certain
    assert inception_score(confident)[0] == pytest.approx(4.0, rel=1e-6)
    accuracy, per_class = class_accuracy(confident, torch.tensor([0, 1, 2, 3] * 2 + [1, 1, 2, 3]), 4)
    # the 0 predicted at a 1 is class 1's miss
    assert accuracy == pytest.approx(11 / 12) and per_class == pytest.approx([1, 0.75, 1, 1])


def test_fid_floor_of_the_reference_itself_is_small():
    features = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0))
    reference = FeatureStats.of(features).moments()
    floor, spread = fid_floor(features, reference, 1000, 4, torch.Generator().manual_seed(1))
    shifted, _ = fid_floor(features + 1, reference, 1000, 4, torch.Generator().manual_seed(1))
    assert 0 < floor < 0.05 and spread >= 0
    assert shifted == pytest.approx(3 + floor, abs=0.05)  # ‖Δm‖² = 3 on top of the same subsets


def test_grid_rows_are_classes():
    images = torch.arange(6.0).reshape(6, 1, 1, 1).expand(6, 1, 2, 2) / 5 * 2 - 1  # image k is constant k/5
    grid = image_grid(images, rows=2)
    assert grid.shape == (4, 6)
    assert grid[0, 0] == 0 and grid[0, 2] == pytest.approx(0.2) and grid[2, 0] == pytest.approx(0.6)
    assert torch.equal(class_labels(3, 2), torch.tensor([0, 0, 1, 1, 2, 2]))


def test_sampler_doubled_batch_equals_two_separate_passes(run_dir):
    from cfgedu.engine.runs import load_checkpoint_model

    model = load_checkpoint_model(run_dir)
    with torch.no_grad():
        for p in model.parameters():  # make every branch count
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    labels, w = torch.tensor([3, 7, 7]), 2.0
    null = torch.full_like(labels, model.num_classes)

    def two_passes(z, lam, c):
        return (1 + w) * model(z, lam, c) - w * model(z, lam, null)

    guided_run = sample_images(model, labels, w, steps=4, seed=5)
    manual = sample(two_passes, model.config.data_shape, labels, generator=torch.Generator().manual_seed(5),
                    steps=4, clip_x=1.0)
    torch.testing.assert_close(guided_run, manual, rtol=1e-4, atol=1e-5)
    assert guided_run.abs().max() <= 1  # x̂ clipped to the data range
    assert torch.equal(sample_images(model, labels, w, steps=4, seed=5), guided_run)  # a fixed seed repeats
    assert not torch.allclose(sample_images(model, labels, w, steps=4, seed=6), guided_run)


def moments(images):  # a deterministic toy extractor: features = mean and std, logits favour class 0
    flat = images.flatten(1)
    features = torch.stack([flat.mean(1), flat.std(1)], 1)
    return features, torch.cat([features[:, :1] * 0 + 1, torch.zeros(len(images), 9)], 1)


def moments_protocol(extract=moments):
    x_val, x_train = load_digits_split("val")[0], load_digits_split("train")[0]
    return Protocol("moments", extract, lambda model, run_config: FeatureStats.of(extract(x_val)[0]).moments(),
                    floor_pool=lambda model: x_train, class_logits=True)


def test_guidance_sweep_with_a_pluggable_extractor(run_dir):
    from cfgedu.engine.runs import load_checkpoint_model

    result, grids = guidance_sweep(load_checkpoint_model(run_dir), [0.0, 1.0], moments_protocol(), per_class=2,
                                   steps=3, floor_repeats=2, grid=(10, 2), progress=False)
    assert [row["w"] for row in result["rows"]] == [0.0, 1.0] and grids[1.0].shape == (10, 2, 1, 16, 16)
    for row in result["rows"]:
        assert row["n"] == 20 and row["accuracy"] == pytest.approx(0.1) and row["min_class_accuracy"] == 0  # all "0"
        assert row["is"] == pytest.approx(1.0) and row["fid"] > 0
    assert result["fid_floor"] > 0 and result["n"] == 20
    table = markdown_table(result["rows"], floor=result["fid_floor"]).splitlines()
    assert table[0] == "| w | s = 1 + w | accuracy | min class acc. | FID | FID / floor | IS |"
    assert table[3].startswith("| 1 | 2 | 0.100 | 0.000 |") and table[-1].startswith("FID floor")


def test_one_process_sweep_draws_what_sample_images_draws(run_dir):
    """The eval.json numbers of a digits run stay reproducible: labels in class blocks, one generator seeded with
    `seed` for all the batches of a w, exactly as sample_images(model, class_labels(K, per_class), w, ...)."""
    from cfgedu.engine.runs import load_checkpoint_model

    model, seen = load_checkpoint_model(run_dir), []

    def recording(images):
        seen.append(images)
        return moments(images)

    _, grids = guidance_sweep(model, [2.0], moments_protocol(recording), per_class=3, steps=2, seed=4, batch_size=7,
                              grid=(10, 3), progress=False)
    drawn = torch.cat(seen[-5:])  # the 30 samples, in batches of 7 (the reference and floor pool come first)
    expected = sample_images(model, class_labels(10, 3), 2.0, steps=2, seed=4, batch_size=7)
    assert torch.equal(drawn, expected) and torch.equal(grids[2.0].flatten(0, 1), expected)
    assert torch.equal(balanced_labels(30, 10), class_labels(10, 3))


def test_sample_and_evaluate_commands(run_dir, tmp_path):
    import matplotlib.pyplot as plt

    assert main(["sample", "--checkpoint", str(run_dir), "--w", "1", "--n", "3", "--steps", "3",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert plt.imread(tmp_path / "grid.png").shape[:2] == (10 * 16, 3 * 16)
    assert main(["evaluate", "--checkpoint", str(run_dir), "--w", "0", "2", "--per-class", "2", "--steps", "2",
                 "--floor-repeats", "2", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert {"fid_floor", "rows"} <= result.keys()
    assert [set(row) >= {"w", "accuracy", "min_class_accuracy", "fid", "is"} for row in result["rows"]] == [True] * 2
    assert (tmp_path / "eval" / "samples_w2.png").exists()
    assert "| 2 | 3 |" in (tmp_path / "eval" / "eval.md").read_text()


def test_commands_reject_bad_checkpoints_and_presets(run_dir, tmp_path, capsys):
    data = (run_dir / "checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    torch.save({"model": "nothing"}, tmp_path / "foreign.pt")
    for bad in ("cut.pt", "foreign.pt", "missing.pt"):
        assert main(["sample", "--checkpoint", str(tmp_path / bad), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "not a readable cfgedu checkpoint" in err and "no checkpoint at" in err
    assert main(["describe", "--preset", "digitz"]) == 2
    assert "unknown preset 'digitz'" in capsys.readouterr().err


def test_describe_applies_config_overrides(capsys):
    assert main(["describe", "--preset", "digits"]) == 0
    preset_info = json.loads(capsys.readouterr().out)
    assert main(["describe", "--preset", "digits", "--model.channel_mult", "1,2,2", "--steps", "7"]) == 0
    variant = json.loads(capsys.readouterr().out)
    assert variant["model"]["channel_mult"] == [1, 2, 2] and variant["train"]["steps"] == 7
    assert variant["parameters"] < preset_info["parameters"]
    assert main(["describe", "--preset", "digits", "--model.no_such_field", "1"]) == 2
    assert "no_such_field" in capsys.readouterr().err


def test_bench_reports_consistent_figures():
    from cfgedu.core.tensors import cpu_has_bf16
    from cfgedu.engine.bench import benchmark
    from cfgedu.nets.unet import UNet

    result = benchmark(UNet(TINY), batch_size=2, train_steps=1, repeats=1, sampling_steps=10)
    assert result["parameters"] == sum(p.numel() for p in UNet(TINY).parameters())
    assert result["sampling_images_per_s"] == pytest.approx(2 / (10 * result["cfg_doubled_batch_s"]))
    assert result["cfg_doubled_over_two_forwards"] == pytest.approx(
        result["cfg_doubled_batch_s"] / result["cfg_two_forwards_s"])
    assert result["train_images_per_s"] > 0 and result["mfu"] is None  # no bf16 peak on a CPU
    assert result["unguided_sampling_images_per_s"] > 0 and result["precision"] == "fp32"
    bf16 = benchmark(UNet(TINY), batch_size=2, train_steps=1, repeats=1, sampling_steps=10, precision="bf16")
    assert bf16["precision"] == ("bf16 autocast" if cpu_has_bf16() else "fp32")
    net = UNet(TINY)
    benchmark(net, batch_size=2, train_steps=1, repeats=1, sampling_steps=10, channels_last=True)
    conv = net.down[0][0].in_conv.weight  # (C_out, C_in > 1, 3, 3): the two layouts differ
    assert conv.shape[1] > 1 and conv.is_contiguous(memory_format=torch.channels_last)


def test_bench_command_applies_config_overrides(capsys):
    overrides = ["--model.channel_mult", "1,2", "--channels_last", "true"]
    assert main(["describe", "--preset", "digits", *overrides]) == 0
    described = json.loads(capsys.readouterr().out)
    assert main(["bench", "--preset", "digits", "--batch-size", "2", "--steps", "1", "--repeats", "1", *overrides]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parameters"] == described["parameters"]
    assert result["forward_gflops"] == pytest.approx(described["forward_gflops"])
    assert result["channels_last"] is True and result["compile"] is False


def test_sample_grid_slider_snaps_to_the_nearest_sampled_w():
    from cfgedu.frontend.widgets import SampleGridSlider
    from cfgedu.images.sampling import image_grid as grid_of

    samples = {w: torch.full((4, 1, 2, 2), w / 4 - 1) for w in (0.0, 1.0, 4.0)}  # each w its own grey level
    panel = SampleGridSlider(samples, rows=2)
    panel.sliders["w"].value = 2.9
    assert panel.nearest_w() == 4.0
    assert np.array_equal(panel.image.get_array(), grid_of(samples[4.0], 2))
    assert "w = 4 (s = 1 + w = 5)" in panel.view.axes[0].get_title()
