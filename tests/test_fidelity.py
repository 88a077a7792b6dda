"""FID/IS: the Fréchet distance against scipy, streaming statistics, IS splits, sharding, Inception loading."""
from __future__ import annotations

import importlib.util
import json
import math
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch

from cfgedu.images import inception as fidelity


def scipy_frechet(x, y):
    """The textbook FID: ‖μx − μy‖² + tr(Σx + Σy − 2 sqrtm(Σx Σy)), by scipy on the raw samples."""
    mx, my = x.mean(0), y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cx @ cy).real
    return float(((mx - my) ** 2).sum() + np.trace(cx + cy - 2 * root))


def stats_of(x):
    return fidelity.FeatureStats().update(torch.from_numpy(x))


def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12))
    y = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    ours = fidelity.fid_from_stats(stats_of(x), (stats_of(y).mean, stats_of(y).cov))
    assert ours == pytest.approx(scipy_frechet(x, y), rel=1e-8)
    assert fidelity.fid_from_stats(stats_of(x), (stats_of(x).mean, stats_of(x).cov)) == pytest.approx(0, abs=1e-9)
    shifted = (stats_of(x).mean + 2.0, stats_of(x).cov)  # same covariance, mean moved by 2 in 12 coordinates
    assert fidelity.fid_from_stats(stats_of(x), shifted) == pytest.approx(4.0 * 12, rel=1e-9)


def test_streamed_and_merged_stats_equal_numpy():
    x = np.random.default_rng(1).normal(size=(101, 5))
    streamed = fidelity.FeatureStats()
    for chunk in np.array_split(x, 7):
        streamed.update(torch.from_numpy(chunk))
    merged = stats_of(x[:30]).merge(stats_of(x[30:]))
    for stats in (streamed, merged):
        assert stats.count == 101
        assert np.allclose(stats.mean.numpy(), x.mean(0), atol=1e-12)
        assert np.allclose(stats.cov.numpy(), np.cov(x, rowvar=False), atol=1e-12)


def test_reference_npz_round_trip_and_errors(tmp_path):
    x = np.random.default_rng(2).normal(size=(50, 4))
    stats_of(x).save_npz(tmp_path / "ref.npz")
    mu, sigma = fidelity.load_reference(tmp_path / "ref.npz")
    assert np.allclose(mu.numpy(), x.mean(0)) and np.allclose(sigma.numpy(), np.cov(x, rowvar=False))
    np.savez(tmp_path / "bad.npz", mean=x.mean(0))
    with pytest.raises(ValueError, match="mu and sigma"):
        fidelity.load_reference(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="VIRTUAL_imagenet64_labeled"):
        fidelity.load_reference(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="dimension 4 but the reference has 3"):
        fidelity.fid_from_stats(stats_of(x), (torch.zeros(3), torch.eye(3)))


def test_inception_score_known_answers():
    confident = torch.eye(5).repeat(4, 1) * 50.0  # 20 samples, each class 4 times, near one-hot
    mean, std = fidelity.inception_score_splits(confident, splits=4)
    assert mean == pytest.approx(5.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    assert fidelity.inception_score_splits(torch.zeros(20, 5), splits=2) == pytest.approx((1.0, 0.0))
    with pytest.raises(ValueError, match="at least 10 samples"):
        fidelity.inception_score_splits(torch.zeros(5, 3))


def test_class_balanced_labels_shard_the_whole_set():
    shards = [fidelity.class_balanced_labels(23, 5, rank, 3) for rank in range(3)]
    assert sorted(len(s) for s in shards) == [7, 8, 8]
    merged = torch.stack([torch.arange(23) % 5])[0]
    assert torch.equal(torch.sort(torch.cat(shards)).values, torch.sort(merged).values)
    assert torch.bincount(torch.cat(shards)).tolist() == [5, 5, 5, 4, 4]
    with pytest.raises(ValueError, match="rank"):
        fidelity.class_balanced_labels(10, 2, rank=2, world_size=2)


def test_evaluate_generator_on_tiny_sample_sets():
    extractor = fidelity.StandInExtractor(feature_dim=6, num_logits=4)
    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=generator)
    reference_stats = fidelity.FeatureStats().update(extractor(real)[0])
    reference = (reference_stats.mean, reference_stats.cov)
    seen, replay_real = [], replayer(real)  # returns the real images in order: sample statistics = reference

    def replay(labels):
        seen.append(labels)
        return replay_real(labels)

    same = fidelity.evaluate_generator(replay, 40, 4, extractor, reference, batch_size=16, splits=2, progress=False)
    assert same["n"] == 40 and same["fid"] == pytest.approx(0.0, abs=1e-9)
    assert torch.bincount(torch.cat(seen)).tolist() == [10, 10, 10, 10]  # class-balanced requests
    grey = fidelity.evaluate_generator(lambda c: torch.full((len(c), 3, 16, 16), 128, dtype=torch.uint8), 40, 4,
                                       extractor, reference, batch_size=16, splits=2, progress=False)
    assert grey["fid"] > 0.1 and grey["is"] == pytest.approx(1.0, abs=1e-9)  # one image: no diversity, IS = 1
    with pytest.raises(ValueError, match="uint8"):
        fidelity.evaluate_generator(lambda c: torch.zeros(len(c), 3, 8, 8), 10, 2, extractor, reference,
                                    splits=1, progress=False)


def test_missing_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(fidelity.INCEPTION_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth.*CFGEDU_INCEPTION_WEIGHTS"):
        fidelity.load_inception()
    monkeypatch.setenv(fidelity.INCEPTION_ENV, str(tmp_path / "absent.pth"))
    with pytest.raises(FileNotFoundError, match="absent.pth does not exist"):
        fidelity.load_inception()


def test_weights_file_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return exec, ("open('marker', 'w')",)

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"fc.weight": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="not a weights-only state dict"):
        fidelity.load_inception(tmp_path / "evil.pth")


def test_missing_torch_fidelity_is_explained(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_fidelity" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps torch-fidelity"):
        fidelity._inception_module()


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is None,
                    reason="torch-fidelity (optional extra `imagenet`) is not installed")
def test_inception_loads_through_the_real_module_without_torchvision(tmp_path, monkeypatch):
    module = fidelity._inception_module()
    cls = module.FeatureExtractorInceptionV3
    # Random weights of the right layout: build the network once with loading disabled.
    monkeypatch.setattr(cls, "load_state_dict", lambda self, state: None)
    torch.save({}, tmp_path / "empty.pth")
    layout = cls("probe", ["2048"], feature_extractor_weights_path=str(tmp_path / "empty.pth")).state_dict()
    monkeypatch.undo()
    torch.save(layout, tmp_path / fidelity.INCEPTION_FILE)
    monkeypatch.setenv(fidelity.INCEPTION_ENV, str(tmp_path / fidelity.INCEPTION_FILE))
    extractor = fidelity.load_inception()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features, logits = extractor(images)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    # The unbiased logits are the pool features times the final layer's weights, without its bias.
    assert torch.allclose(logits, features @ layout["fc.weight"].T, atol=1e-4)


def tiny_unet():
    from cfgedu.nets.unet import UNet, UNetConfig

    model = UNet(UNetConfig(image_size=16, in_channels=3, num_classes=4, model_channels=8, channel_mult=(1,),
                            num_res_blocks=1, attention_resolutions=(), head_channels=8, norm_groups=4)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights everywhere (ADM zero-initialises output layers: ε would be 0)
        for parameter in model.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model


def test_guidance_sweep_is_seeded_and_guidance_moves_the_samples():
    model, extractor = tiny_unet(), fidelity.StandInExtractor(feature_dim=4, num_logits=3)
    w0 = fidelity.guided_generator(model, 0.0, steps=3, seed=7)
    labels = fidelity.class_balanced_labels(8, 4)
    reference = fidelity.FeatureStats().update(extractor(w0(labels))[0])  # the w = 0 samples themselves
    rows = fidelity.guidance_sweep(model, [0.0, 4.0], 8, extractor, (reference.mean, reference.cov), steps=3,
                                   batch_size=8, seed=7, splits=2, progress=False)
    assert [r["w"] for r in rows] == [0.0, 4.0] and rows[0]["n"] == 8
    assert 0 <= rows[0]["fid"] < 1e-9  # same seeds, same samples, same statistics: a distance of 0, never below
    assert rows[1]["fid"] > 1e-6
    table = fidelity.table1_markdown(rows, p_uncond=0.1).splitlines()
    for row, line in zip(rows, table[2:], strict=True):
        w, s, fid, is_, paper_fid, paper_is = (float(cell.split("±")[0]) for cell in line.strip("|").split("|"))
        assert (w, s) == (row["w"], 1 + row["w"]) and (paper_fid, paper_is) == fidelity.PAPER_TABLE1[0.1][row["w"]]
        assert fid == pytest.approx(row["fid"], abs=0.005) and math.copysign(1, fid) == 1  # not even "-0.00"
        assert is_ == pytest.approx(row["is"], abs=0.005)
    with pytest.raises(ValueError, match="p_uncond"):
        fidelity.table1_markdown(rows, p_uncond=0.3)


def test_write_evaluation_writes_the_json_and_the_table_whole(tmp_path):
    result = {"rows": [{"w": 0.0, "n": 4, "fid": 1.5, "is": 2.0, "is_std": 0.1}], "p_uncond": 0.1, "table": "| t |"}
    assert fidelity.write_evaluation(result, tmp_path / "eval", "run/checkpoint.pt") == "| t |"
    assert (tmp_path / "eval" / "eval.md").read_text() == "| t |\n"
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == {
        "checkpoint": "run/checkpoint.pt", "rows": result["rows"], "p_uncond": 0.1}
    assert sorted(path.name for path in (tmp_path / "eval").iterdir()) == ["eval.json", "eval.md"]  # no .tmp left


def _sharded_evaluation(rank, world_size, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        images = torch.randint(0, 256, (11, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        result = evaluate_reference_row(replayer(images, rank, world_size), 11)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def replayer(images, rank=0, world_size=1):
    """generate(labels) returning the images of this rank's global sample indices rank, rank + W, ... in turn."""
    done = []

    def generate(labels):
        local = torch.arange(len(done), len(done) + len(labels))
        done.extend(labels.tolist())
        return images[local * world_size + rank]

    return generate


def evaluate_reference_row(generate, n):
    extractor = fidelity.StandInExtractor(feature_dim=3, num_logits=5)
    return fidelity.evaluate_generator(generate, n, 3, extractor, (torch.zeros(3), torch.eye(3)), batch_size=4,
                                       splits=2, progress=False)


def test_two_gloo_ranks_pool_to_the_single_process_numbers(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_sharded_evaluation, args=(2, port, str(tmp_path / "r.pt")), nprocs=2)
    images = torch.randint(0, 256, (11, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    single = evaluate_reference_row(replayer(images), 11)
    pooled = torch.load(tmp_path / "r.pt", weights_only=True)
    assert pooled["n"] == 11 and pooled == pytest.approx(single, rel=1e-9)


def test_reference_statistics_of_prepared_data(tmp_path):
    from cfgedu.data import imagenet64 as inet
    from cfgedu.data import imagenet64_convert as convert

    convert.write_synthetic_batches(tmp_path / "src", num_train=12, num_val=2)
    convert.convert_pickles(tmp_path / "src", tmp_path / "data", progress=False)
    extractor = fidelity.StandInExtractor(feature_dim=5)
    images, _ = inet.load_split(tmp_path / "data")
    direct = fidelity.FeatureStats().update(extractor(torch.from_numpy(np.array(images[:10])))[0])
    batched = fidelity.reference_stats_from_data(tmp_path / "data", extractor, limit=10, batch_size=4, progress=False)
    assert batched.count == 10 and torch.allclose(batched.cov, direct.cov, atol=1e-12)
    mu, sigma = fidelity.data_reference(tmp_path / "data", extractor, progress=False)  # computed, then cached
    assert (tmp_path / "data" / "inception_train_stats.npz").is_file()
    cached = fidelity.data_reference(tmp_path / "data", fidelity.StandInExtractor(seed=1), progress=False)
    assert torch.equal(cached[0], mu) and torch.equal(cached[1], sigma)  # read back, not recomputed
