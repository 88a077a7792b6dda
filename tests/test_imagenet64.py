"""ImageNet 64x64 data: the official pickle format, the restricted unpickler, raw folders, the DataSource."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfgedu.data import imagenet64 as inet
from cfgedu.data import imagenet64_convert as convert
from cfgedu.engine import launch
from cfgedu.images import inception as fidelity
from cfgedu.images.evaluation import evaluate_checkpoint


def write_batch(path, images, labels, protocol=2, mean=True):
    """An official-format batch: {data: uint8 (N, 12288) channel-planar, labels: list of 1..1000, mean}."""
    record = {"data": images.reshape(len(images), -1), "labels": [int(c) + 1 for c in labels]}
    if mean:
        record["mean"] = images.reshape(len(images), -1).mean(0)
    path.write_bytes(pickle.dumps(record, protocol=protocol))


@pytest.fixture
def official(tmp_path):
    """Two train batches and val_data with known pixels and labels."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    images = rng.integers(0, 256, (7, 3, 64, 64), dtype=np.uint8)
    labels = np.array([0, 999, 5, 17, 0, 3, 998])
    write_batch(src / "train_data_batch_1", images[:4], labels[:4], protocol=2)
    write_batch(src / "train_data_batch_2", images[4:6], labels[4:6], protocol=pickle.HIGHEST_PROTOCOL)
    write_batch(src / "val_data", images[6:], labels[6:], mean=False)
    return src, images, labels


def test_channel_planar_rows_are_r_then_g_then_b(tmp_path):
    image = np.zeros((1, 3, 64, 64), dtype=np.uint8)
    image[0, 0, 0, 1], image[0, 1, 2, 0], image[0, 2, 63, 63] = 10, 20, 30  # R at (0,1), G at (2,0), B at (63,63)
    row = np.zeros(convert.ROW_BYTES, dtype=np.uint8)
    row[1], row[4096 + 2 * 64], row[2 * 4096 + 63 * 64 + 63] = 10, 20, 30
    (tmp_path / "b").write_bytes(pickle.dumps({"data": row[None], "labels": [1]}))
    images, labels = convert.read_batch(tmp_path / "b")
    assert np.array_equal(images, image) and labels.tolist() == [0]


def test_convert_pickles_keeps_pixels_and_shifts_labels(official, tmp_path):
    src, images, labels = official
    manifest = convert.convert_pickles(src, tmp_path / "out", progress=False)
    assert manifest["splits"] == {"train": 6, "val": 1} and manifest["label_order"] == "map_clsloc"
    train = np.load(tmp_path / "out" / "train_images.npy", mmap_mode="r")
    assert isinstance(train, np.memmap) and train.dtype == np.uint8
    assert np.array_equal(train, images[:6])
    assert np.load(tmp_path / "out" / "train_labels.npy").tolist() == labels[:6].tolist()
    assert np.load(tmp_path / "out" / "val_labels.npy").dtype == np.int64
    assert np.array_equal(np.load(tmp_path / "out" / "val_images.npy"), images[6:])
    assert not (tmp_path / "out" / ".parts").exists()


def test_sorted_wnid_remap(official, tmp_path):
    src, _, labels = official
    wnids = [f"n{(7 * k) % 1000:08d}" for k in range(1000)]  # distinct ids, not in sorted order
    (tmp_path / "map_clsloc.txt").write_text("".join(f"{w} {k + 1} name_{k}\n" for k, w in enumerate(wnids)))
    convert.convert_pickles(src, tmp_path / "out", map_clsloc=tmp_path / "map_clsloc.txt", progress=False)
    stored = np.load(tmp_path / "out" / "train_labels.npy")
    expected = [sorted(wnids).index(wnids[c]) for c in labels[:6]]
    assert stored.tolist() == expected and read_order(tmp_path / "out") == "sorted_wnid"


def read_order(root):
    return json.loads((root / "manifest.json").read_text())["label_order"]


class Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = {"data": np.zeros((1, convert.ROW_BYTES), np.uint8), "labels": [1], "mean": Payload(marker)}
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train_data_batch_1").write_bytes(pickle.dumps(evil))
    with pytest.raises(ValueError, match="refusing to load (posix|os).system"):
        convert.convert_pickles(tmp_path / "src", tmp_path / "out", progress=False)
    assert not marker.exists()
    # Sanity check that the payload is live: an unrestricted load would have run it.
    pickle.loads((tmp_path / "src" / "train_data_batch_1").read_bytes())
    assert marker.exists()


def test_truncated_and_malformed_batches_give_clear_errors(official, tmp_path):
    src, _, _ = official
    blob = (src / "train_data_batch_1").read_bytes()
    (tmp_path / "truncated").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        convert.read_batch(tmp_path / "truncated")
    (tmp_path / "wrong").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [1, 2]}))
    with pytest.raises(ValueError, match="rows of 12288 bytes"):
        convert.read_batch(tmp_path / "wrong")
    (tmp_path / "labels").write_bytes(pickle.dumps({"data": np.zeros((1, convert.ROW_BYTES), np.uint8), "labels": [0]}))
    with pytest.raises(ValueError, match="1..1000"):
        convert.read_batch(tmp_path / "labels")
    with pytest.raises(FileNotFoundError, match="train_data_batch"):
        convert.convert_pickles(tmp_path / "nothing", tmp_path / "out", progress=False)


def test_conversion_resumes_from_finished_parts(official, tmp_path):
    src, images, _ = official
    out = tmp_path / "out"
    parts = out / ".parts"
    convert._check_plan(parts, {"source": "pickles", "files": [str(src / n) for n in
                     ("train_data_batch_1", "train_data_batch_2", "val_data")], "label_order": "map_clsloc"})
    # A finished part from an interrupted run (deliberately different pixels, to see that it is reused).
    np.savez(parts / "train-train_data_batch_1.npz", images=np.zeros((4, 3, 64, 64), np.uint8),
             labels=np.arange(4))
    convert.convert_pickles(src, out, progress=False)
    train = np.load(out / "train_images.npy")
    assert not train[:4].any() and np.array_equal(train[4:], images[4:6])


def test_resuming_with_other_settings_is_refused(official, tmp_path):
    src, _, _ = official
    convert._check_plan(tmp_path / "out" / ".parts", {"source": "folder"})
    with pytest.raises(ValueError, match="different settings"):
        convert.convert_pickles(src, tmp_path / "out", progress=False)


@pytest.fixture
def jpeg_folder(tmp_path):
    """Two classes of flat-colour JPEGs with a distinct colour in each half (left/right)."""
    root = tmp_path / "raw"
    colours = {"n001": [(200, 30, 30), (30, 30, 200)], "n000": [(30, 200, 30), (240, 240, 240)]}
    for wnid, (left, right) in colours.items():
        (root / wnid).mkdir(parents=True)
        for k, size in enumerate([(300, 150), (128, 256)]):
            pixels = np.zeros((size[1], size[0], 3), np.uint8)
            pixels[:, : size[0] // 2], pixels[:, size[0] // 2:] = left, right
            Image.fromarray(pixels).save(root / wnid / f"img{k}.JPEG", quality=95)
    return root, colours


@pytest.mark.parametrize("resize", ["box", "center-crop"])
def test_folder_conversion_both_resize_modes(jpeg_folder, tmp_path, resize):
    root, colours = jpeg_folder
    manifest = convert.convert_folder(root, tmp_path / resize, resize=resize, val_src=root, chunk=3, workers=2,
                                   progress=False)
    assert manifest["classes"] == ["n000", "n001"] and manifest["splits"] == {"train": 4, "val": 4}
    images, labels = inet.load_split(tmp_path / resize)
    assert labels.tolist() == [0, 0, 1, 1]  # sorted WNIDs: n000 first
    for image, label in zip(images, labels, strict=True):
        left, right = colours[manifest["classes"][label]]
        # Far from the split line both methods keep the flat colours (JPEG error a few levels).
        assert np.abs(image[:, 20:44, 2].astype(int).T - left).max() < 12
        assert np.abs(image[:, 20:44, 61].astype(int).T - right).max() < 12


def test_box_squashes_while_center_crop_keeps_the_middle():
    # A 256x64 image: left quarter black, the rest white.
    pixels = np.full((64, 256, 3), 255, np.uint8)
    pixels[:, :64] = 0
    image = Image.fromarray(pixels)
    box, crop = convert.resize_image(image, "box"), convert.resize_image(image, "center-crop")
    assert box[:, :, :16].max() == 0 and box[:, :, 16:].min() == 255  # whole image squashed 4x horizontally
    assert crop.min() == 255  # the centre 64x64 square is all white


def test_corrupt_jpeg_gives_clear_error(jpeg_folder, tmp_path):
    root, _ = jpeg_folder
    blob = (root / "n000" / "img0.JPEG").read_bytes()
    (root / "n000" / "img0.JPEG").write_bytes(blob[:200])
    with pytest.raises(ValueError, match="cannot decode image .*img0.JPEG"):
        convert.convert_folder(root, tmp_path / "out", progress=False)


def test_datasource_is_pure_disjoint_and_flips(official, tmp_path):
    src, images, labels = official
    convert.convert_pickles(src, tmp_path / "out", progress=False)
    data = inet.ImageNet64Data(tmp_path / "out", seed=3)
    assert data.num_classes == 1000 and data.data_shape == (3, 64, 64)
    shards = [data.indices(5, 0, rank, 3, 2)[0] for rank in range(3)]
    assert len(set(np.concatenate(shards).tolist())) == 6  # three ranks, disjoint, the whole set
    x, c = data.batch(5, 1, 1, 3, 2)
    x2, c2 = data.batch(5, 1, 1, 3, 2)
    assert torch.equal(x, x2) and torch.equal(c, c2)  # a pure function of (seed, step, micro, rank)
    index, flips = data.indices(5, 1, 1, 3, 2)
    expected = torch.as_tensor(images[index]).float() / 127.5 - 1
    expected = torch.where(flips[:, None, None, None], expected.flip(-1), expected)
    assert torch.equal(x, expected) and c.tolist() == labels[index].tolist()
    assert x.min() >= -1 and x.max() <= 1
    flipped = sum(int(data.indices(s, 0, 0, 1, 6)[1].sum()) for s in range(100))
    assert 240 < flipped < 360  # Binomial(600, 1/2)
    assert not inet.ImageNet64Data(tmp_path / "out", flip=False).indices(5, 1, 1, 3, 2)[1].any()
    # One step is the same global batch however it is split over processes and micro-steps.
    whole = data.batch(7, 0, 0, 1, 6)
    split = [data.batch(7, micro, rank, 3, 1) for micro in range(2) for rank in range(3)]
    assert torch.equal(whole[0], torch.cat([x for x, _ in split]))
    assert torch.equal(whole[1], torch.cat([c for _, c in split]))


@pytest.mark.parametrize("n", [1000, 100_000])  # a permutation, and draws with repeats dropped
def test_step_order_is_a_uniform_subset_with_stable_prefixes(n):
    counts = np.zeros(n)
    for seed in range(200):
        order = inet.step_order(n, 60, torch.Generator().manual_seed(seed)).numpy()
        assert len(set(order.tolist())) == 60
        assert np.array_equal(inet.step_order(n, 25, torch.Generator().manual_seed(seed)).numpy(), order[:25])
        counts[order] += 1
    if n == 1000:  # each index is drawn 12 times in expectation with a Binomial-like spread (sd ≈ 3.4)
        assert counts.sum() == 12_000 and 2.5 < counts.std() < 4.5
    else:
        assert abs(np.argwhere(counts).mean() - n / 2) < 0.05 * n  # drawn across the whole range


def test_missing_folder_and_bad_rank_are_clear(official, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare-imagenet64"):
        inet.ImageNet64Data(tmp_path / "none")
    src, _, _ = official
    convert.convert_pickles(src, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="rank"):
        inet.ImageNet64Data(tmp_path / "out").batch(0, 0, 3, 2, 1)
    with pytest.raises(ValueError, match="half of the"):
        inet.step_order(100_000, 60_000, torch.Generator())


def test_prepare_command(official, jpeg_folder, tmp_path, capsys):
    from cfgedu.commands.cli import main

    src, images, _ = official
    assert main(["prepare-imagenet64", "--src", str(src), "--out", str(tmp_path / "a"), "--workers", "1"]) == 0
    assert "train 6, val 1 images, 1000 classes" in capsys.readouterr().out
    assert np.array_equal(inet.load_split(tmp_path / "a", "val")[0], images[6:])
    root, _ = jpeg_folder
    assert main(["prepare-imagenet64", "--src", str(root), "--out", str(tmp_path / "b"), "--format", "folder",
                 "--resize", "center-crop", "--workers", "1"]) == 0
    assert inet.read_manifest(tmp_path / "b")["resize"] == "center-crop"
    assert main(["prepare-imagenet64", "--src", str(src), "--out", str(tmp_path / "c"), "--val-src", str(root)]) == 2
    assert "--val-src applies to --format folder only" in capsys.readouterr().err


ROOT = Path(__file__).resolve().parents[1]


def torchrun_train(data, out, steps):
    command = launch.launch_command(data, out, nproc_per_node=2, overrides={"steps": steps}, preset="imagenet64-tiny",
                                   launcher=(sys.executable, "-m", "torch.distributed.run")) + ["--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


def test_torchrun_two_gloo_processes_train_then_resume(tmp_path):
    from cfgedu.core.configs import apply_overrides
    from cfgedu.engine.experiment import train_experiment
    from cfgedu.engine.presets import preset

    convert.write_synthetic_batches(tmp_path / "src", num_train=32, num_val=8)
    convert.convert_pickles(tmp_path / "src", tmp_path / "data", progress=False)
    torchrun_train(tmp_path / "data", tmp_path / "run", steps=2)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
    # Resume that run to step 3 in one process (two micro-steps take the place of the two ranks) ...
    experiment = apply_overrides(preset("imagenet64-tiny"), {"steps": "3", "data": str(tmp_path / "data")})
    resumed = train_experiment(experiment, tmp_path / "run", preset_name="imagenet64-tiny", progress=False)
    records, _ = launch.read_new_metrics(tmp_path / "run" / "metrics.jsonl")
    assert resumed.step == 3 and [r["step"] for r in records] == [1, 2, 3]
    # ... and it ends where three steps in one process end: the same global batches, the same weights.
    straight = train_experiment(experiment, tmp_path / "single", progress=False)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=2e-5), name
    assert [r["loss"] for r in straight.history] == pytest.approx([r["loss"] for r in records], rel=1e-4)
    # Table 1 for the run, with the stand-in extractor and reference statistics of its own training data.
    protocol = fidelity.imagenet_protocol(extractor=fidelity.StandInExtractor(), splits=2, progress=False)
    evaluation = evaluate_checkpoint(tmp_path / "run", protocol, [0.0, 1.0], n=4, steps=2, progress=False)
    rows = evaluation.result["rows"]
    assert [(r["w"], r["n"]) for r in rows] == [(0.0, 4), (1.0, 4)] and evaluation.result["p_uncond"] == 0.1
    assert "| 0 | 1 |" in evaluation.table and not (tmp_path / "data" / "inception_train_stats.npz").exists()


def test_launch_command_and_metrics_tail(tmp_path):
    one = launch.launch_command("data/imagenet64", "runs/in64", overrides={"p_uncond": 0.2})
    assert " ".join(one) == ("torchrun --nproc_per_node=8 --standalone -m cfgedu train --preset imagenet64 "
                             "--data data/imagenet64 --out runs/in64 --p_uncond 0.2")
    two = launch.launch_command("d", "o", nnodes=2, node_rank=1, master_addr="10.0.0.1")
    assert "--nnodes=2" in two and "--node_rank=1" in two and "--master_addr=10.0.0.1" in two
    with pytest.raises(ValueError, match="node_rank"):
        launch.launch_command("d", "o", nnodes=2, node_rank=2)
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 0.9}\n{"step": 2, "lo')  # the second line is still being written
    records, offset = launch.read_new_metrics(log)
    assert records == [{"step": 1, "loss": 0.9}]
    with log.open("a") as handle:
        handle.write('ss": 0.8}\n')
    assert launch.read_new_metrics(log, offset) == ([{"step": 2, "loss": 0.8}], log.stat().st_size)


def test_sample_grid_widget_shows_algorithm2_samples():
    from cfgedu.core.guidance import guided
    from cfgedu.core.samplers import sample
    from cfgedu.core.tensors import make_generator
    from cfgedu.frontend.widgets import SampleGridWidget
    from cfgedu.images.sampling import image_grid
    from cfgedu.nets.unet import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=8, in_channels=3, num_classes=3, model_channels=8, channel_mult=(1,),
                            num_res_blocks=1, attention_resolutions=(), head_channels=8, norm_groups=4)).eval()
    widget = SampleGridWidget(model, classes=[0, 2], per_class=2, steps=3, w=0.0)
    with torch.no_grad():
        expected = sample(guided(model, 0.0), (3, 8, 8), torch.tensor([0, 0, 2, 2]), generator=make_generator(0),
                          steps=3, clip_x=1.0)
    assert np.allclose(widget.picture.get_array(), image_grid(expected, 2), atol=1e-6)
    widget.sliders["w"].value = 2.0
    assert "w = 2 (s = 1 + w = 3)" in widget.picture.axes.get_title()


def test_evaluate_command_names_the_missing_inception_weights(tmp_path, monkeypatch, capsys):
    from cfgedu.commands.cli import main

    monkeypatch.delenv(fidelity.INCEPTION_ENV, raising=False)
    out = str(tmp_path / "eval")
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--out", out, "--protocol", "imagenet"]) == 2
    assert "weights-inception-2015-12-05-6726825d.pth" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "eval"),
                 "--inception", str(tmp_path / "nowhere.pth")]) == 2
    assert "nowhere.pth does not exist" in capsys.readouterr().err


def test_pixels_of_a_read_only_memmap_convert_without_a_warning(recwarn):
    pixels = np.array([[[[0, 255]]]], dtype=np.uint8)
    pixels.setflags(write=False)  # as the prepared folder's memmaps are
    assert inet.to_model_range(pixels).tolist() == [[[[-1.0, 1.0]]]]
    assert not [str(warning.message) for warning in recwarn]
