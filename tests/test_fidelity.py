"""FID/IS: the Fréchet distance against scipy, streaming statistics, IS splits, sharding over ranks, the sweep, the
tables and Inception loading."""
from __future__ import annotations

import importlib.util
import json
import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import scipy.linalg
import torch

from cfgedu.images import inception as fidelity
from cfgedu.images.evaluation import (
    Evaluation,
    Protocol,
    guidance_sweep,
    markdown_table,
    paper_for,
    result_table,
    score_samples,
    shard,
    write_evaluation,
)
from cfgedu.images.metrics import FeatureStats, frechet_distance, inception_score
from cfgedu.images.sampling import balanced_labels, sample_images


def scipy_frechet(x, y):
    """The textbook FID: ‖μx − μy‖² + tr(Σx + Σy − 2 sqrtm(Σx Σy)), by scipy on the raw samples."""
    mx, my = x.mean(0), y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cx @ cy).real
    return float(((mx - my) ** 2).sum() + np.trace(cx + cy - 2 * root))


def stats_of(x):
    return FeatureStats().update(torch.from_numpy(x))


def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12))
    y = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    ours = frechet_distance(stats_of(x), (stats_of(y).mean, stats_of(y).cov))
    assert ours == pytest.approx(scipy_frechet(x, y), rel=1e-8)
    assert frechet_distance(stats_of(x), (stats_of(x).mean, stats_of(x).cov)) == pytest.approx(0, abs=1e-9)
    shifted = (stats_of(x).mean + 2.0, stats_of(x).cov)  # same covariance, mean moved by 2 in 12 coordinates
    assert frechet_distance(stats_of(x), shifted) == pytest.approx(4.0 * 12, rel=1e-9)


def test_streamed_and_merged_stats_equal_numpy():
    x = np.random.default_rng(1).normal(size=(101, 5))
    streamed = FeatureStats()
    for chunk in np.array_split(x, 7):
        streamed.update(torch.from_numpy(chunk))
    merged = stats_of(x[:30]).merge(stats_of(x[30:]))
    for stats in (streamed, merged):
        assert stats.count == 101
        assert np.allclose(stats.mean.numpy(), x.mean(0), atol=1e-12)
        assert np.allclose(stats.cov.numpy(), np.cov(x, rowvar=False), atol=1e-12)


def test_reference_npz_round_trip_and_errors(tmp_path):
    x = np.random.default_rng(2).normal(size=(50, 4))
    fidelity.save_reference(stats_of(x).moments(), tmp_path / "ref.npz")
    mu, sigma = fidelity.load_reference(tmp_path / "ref.npz")
    assert np.allclose(mu.numpy(), x.mean(0)) and np.allclose(sigma.numpy(), np.cov(x, rowvar=False))
    np.savez(tmp_path / "bad.npz", mean=x.mean(0))
    with pytest.raises(ValueError, match="mu and sigma"):
        fidelity.load_reference(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="VIRTUAL_imagenet64_labeled"):
        fidelity.load_reference(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="dimension 4 but the reference has 3"):
        frechet_distance(stats_of(x), (torch.zeros(3), torch.eye(3)))


def test_inception_score_known_answers():
    confident = torch.eye(5).repeat(4, 1) * 50.0  # 20 samples, each class 4 times, near one-hot
    mean, std = inception_score(confident, splits=4)
    assert mean == pytest.approx(5.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    blocks = torch.eye(5).repeat_interleave(4, 0) * 50.0  # the same samples in class blocks: strided splits
    assert inception_score(blocks, splits=4) == pytest.approx((mean, std), abs=1e-9)  # still see every class
    assert inception_score(torch.zeros(20, 5), splits=2) == pytest.approx((1.0, 0.0))
    with pytest.raises(ValueError, match="at least 10 samples"):
        inception_score(torch.zeros(5, 3), splits=10)


def test_balanced_labels_and_shards_cover_the_whole_set(monkeypatch):
    labels = balanced_labels(23, 5)
    assert torch.equal(labels, labels.sort().values) and sorted(torch.bincount(labels).tolist()) == [4, 4, 5, 5, 5]
    assert torch.equal(balanced_labels(4, 1000), torch.tensor([0, 250, 500, 750]))  # fewer samples than classes
    shards = []
    for rank in range(3):
        monkeypatch.setattr("cfgedu.images.evaluation.rank_and_world", lambda rank=rank: (rank, 3))
        shards.append(shard(labels, 11))
    assert sorted(len(part) for part, _ in shards) == [7, 8, 8]
    assert torch.equal(torch.cat([part for part, _ in shards]).sort().values, labels)  # every label once
    assert shards[0][1] == 11 and len({seed for _, seed in shards}) == 3  # rank 0 draws what one process draws
    with pytest.raises(ValueError, match="cannot be shared out between 3 ranks"):
        shard(torch.zeros(2, dtype=torch.long), 0)


def standin_protocol(extractor, splits=2, paper=None):
    return Protocol("stand-in", extractor, lambda model, run_config: (torch.zeros(3), torch.eye(3)), is_splits=splits,
                    paper=paper)


def test_score_samples_of_tiny_sample_sets():
    extractor = fidelity.StandInExtractor(feature_dim=6, num_logits=4)
    real = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = FeatureStats.of(extractor(real)[0]).moments()
    protocol, labels = standin_protocol(extractor), balanced_labels(40, 4)
    same = score_samples(protocol, real.split(16), labels, reference)  # the real images: statistics = reference
    assert same["n"] == 40 and same["fid"] == pytest.approx(0.0, abs=1e-9) and "accuracy" not in same
    grey = score_samples(protocol, [torch.zeros(40, 3, 16, 16)], labels, reference)
    assert grey["fid"] > 0.1 and grey["is"] == pytest.approx(1.0, abs=1e-9)  # one image: no diversity, IS = 1
    counted = score_samples(replace(protocol, class_logits=True), real.split(16), labels, reference)
    assert counted["accuracy"] == pytest.approx((extractor(real)[1].argmax(1) == labels).double().mean().item())
    with pytest.raises(ValueError, match="float"):
        extractor(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        extractor(torch.zeros(2, 1, 8, 8))


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
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1  # model range
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
    w0 = sample_images(model, balanced_labels(8, 4), 0.0, steps=3, seed=7, batch_size=3)
    reference = FeatureStats.of(extractor(w0)[0]).moments()  # the w = 0 samples themselves
    protocol = replace(standin_protocol(extractor, paper=fidelity.PAPER_TABLE1),
                       reference=lambda model, run_config: reference)
    result, grids = guidance_sweep(model, [0.0, 4.0], protocol, n=8, steps=3, batch_size=3, seed=7, progress=False)
    rows = result["rows"]
    assert [r["w"] for r in rows] == [0.0, 4.0] and rows[0]["n"] == 8 and grids == {} and "fid_floor" not in result
    assert 0 <= rows[0]["fid"] < 1e-9  # same seeds, same samples, same statistics: a distance of 0, never below
    assert rows[1]["fid"] > 1e-6
    table = result_table({**result, "p_uncond": 0.1}, protocol).splitlines()
    assert table[0] == "| w | s = 1 + w | FID | IS | paper FID (p_uncond 0.1) | paper IS |"
    for row, line in zip(rows, table[2:], strict=True):
        w, s, fid, is_, paper_fid, paper_is = (float(cell.split("±")[0]) for cell in line.strip("|").split("|"))
        assert (w, s) == (row["w"], 1 + row["w"]) and (paper_fid, paper_is) == fidelity.PAPER_TABLE1[0.1][row["w"]]
        assert fid == pytest.approx(row["fid"], abs=0.005) and math.copysign(1, fid) == 1  # not even "-0.00"
        assert is_ == pytest.approx(row["is"], abs=0.005) and f"± {row['is_std']:.2f}" in line
    assert paper_for(protocol, 0.2)[0] == "p_uncond 0.2" and paper_for(protocol, 0.3)[0] == "p_uncond 0.1"
    assert "– | –" in markdown_table([{**rows[0], "w": 7.0}], paper=paper_for(protocol, 0.5))


def test_write_evaluation_writes_the_json_and_the_table_whole(tmp_path):
    result = {"checkpoint": "run/checkpoint.pt", "rows": [{"w": 0.0, "n": 4, "fid": 1.5, "is": 2.0, "is_std": 0.1}],
              "p_uncond": 0.1}
    assert write_evaluation(Evaluation(result, "| t |\n", {}), tmp_path / "eval") == "| t |\n"
    assert (tmp_path / "eval" / "eval.md").read_text() == "| t |\n"
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == result
    assert sorted(path.name for path in (tmp_path / "eval").iterdir()) == ["eval.json", "eval.md"]  # no .tmp left


def _two_ranks(worker, folder):
    """Run worker(rank, 2, port, out) in two gloo processes; return what each saved to out.format(rank)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(worker, args=(2, port, str(folder / "r{}.pt")), nprocs=2)
    return [torch.load(folder / f"r{rank}.pt", weights_only=True) for rank in range(2)]


def _in_group(rank, world_size, port, work):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        return work()
    finally:
        dist.destroy_process_group()


def shared_images():
    return torch.rand(11, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def evaluate_reference_row(batches):
    protocol = replace(standin_protocol(fidelity.StandInExtractor(feature_dim=3, num_logits=5)), class_logits=True)
    return score_samples(protocol, batches, balanced_labels(11, 5), (torch.zeros(3), torch.eye(3)))


def _sharded_scores(rank, world_size, port, out):
    mine = shared_images()[rank::world_size]  # the samples i with i mod 2 = rank

    def work():
        stats = FeatureStats.of(fidelity.StandInExtractor(feature_dim=3)(mine)[0]).all_reduce()
        return {"row": evaluate_reference_row(mine.split(4)), "sums": (stats.count, stats.total, stats.outer)}

    torch.save(_in_group(rank, world_size, port, work), out.format(rank))


def test_two_gloo_ranks_pool_to_the_single_process_numbers(tmp_path):
    pooled = _two_ranks(_sharded_scores, tmp_path)
    single = evaluate_reference_row(shared_images().split(4))
    assert pooled[0]["row"]["n"] == 11 and pooled[0]["row"] == pooled[1]["row"]
    assert pooled[0]["row"] == pytest.approx(single, rel=1e-9)
    whole = FeatureStats.of(fidelity.StandInExtractor(feature_dim=3)(shared_images())[0])
    for rank in pooled:  # the all-reduced sums are the single-process sums
        count, total, outer = rank["sums"]
        assert count == whole.count and torch.allclose(total, whole.total, atol=1e-12)
        assert torch.allclose(outer, whole.outer, atol=1e-12)


def _sharded_sweep(rank, world_size, port, out):
    import cfgedu.images.evaluation as evaluation

    drawn, sample_batches = [], evaluation.sample_batches

    def recording(model, labels, w, *, generator, **options):
        drawn.append((labels.clone(), generator.initial_seed()))
        return sample_batches(model, labels, w, generator=generator, **options)

    evaluation.sample_batches = recording
    protocol = standin_protocol(fidelity.StandInExtractor(feature_dim=3, num_logits=5))
    result, grids = _in_group(rank, world_size, port, lambda: guidance_sweep(
        tiny_unet(), [0.0, 2.0], protocol, n=10, steps=2, batch_size=3, seed=5, grid=(4, 2), progress=False))
    torch.save({"result": result, "drawn": drawn, "grids": grids}, out.format(rank))


def test_two_gloo_ranks_share_the_sweep_and_agree(tmp_path):
    """Each label is drawn once over the two ranks, rank 0 with the seed one process uses; both return the same
    rows (pooled statistics), which differ from one process's only through rank 1's noise."""
    from cfgedu.core.tensors import derive_seed

    ranks = _two_ranks(_sharded_sweep, tmp_path)
    assert ranks[0]["result"] == ranks[1]["result"] and ranks[0]["result"]["rows"][0]["n"] == 10
    labels = balanced_labels(10, 4)  # 0 0 0 1 1 2 2 2 3 3
    for w_index in range(2):
        (labels0, seed0), (labels1, seed1) = (rank["drawn"][w_index] for rank in ranks)
        assert torch.equal(torch.cat([labels0, labels1]).sort().values, labels)
        assert torch.equal(labels0, labels[0::2]) and (seed0, seed1) == (5, derive_seed(5, 1))
    grid = ranks[0]["grids"][2.0]  # rank 0 holds labels 0 0 | 1 | 2 | 3: one column of the first 4 classes
    assert grid.shape == (4, 1, 3, 16, 16)
    mine = sample_images(tiny_unet(), labels[0::2], 2.0, steps=2, seed=5, batch_size=3)
    assert torch.equal(grid[:, 0], mine[[0, 2, 3, 4]])  # rank 0 draws what one process draws for its labels


def test_reference_statistics_of_prepared_data(tmp_path):
    from cfgedu.data import imagenet64 as inet
    from cfgedu.data import imagenet64_convert as convert

    convert.write_synthetic_batches(tmp_path / "src", num_train=12, num_val=2)
    convert.convert_pickles(tmp_path / "src", tmp_path / "data", progress=False)
    extractor = fidelity.StandInExtractor(feature_dim=5)
    images, _ = inet.load_split(tmp_path / "data")
    direct = FeatureStats().update(extractor(inet.to_model_range(np.array(images[:10])))[0])
    batched = fidelity.reference_stats_from_data(tmp_path / "data", extractor, limit=10, batch_size=4, progress=False)
    assert batched.count == 10 and torch.allclose(batched.cov, direct.cov, atol=1e-12)
    mu, sigma = fidelity.data_reference(tmp_path / "data", extractor, progress=False)  # computed, then cached
    assert (tmp_path / "data" / "inception_train_stats.npz").is_file()
    cached = fidelity.data_reference(tmp_path / "data", fidelity.StandInExtractor(seed=1), progress=False)
    assert torch.equal(cached[0], mu) and torch.equal(cached[1], sigma)  # read back, not recomputed
