"""ImageNet 64x64 data refused at the door: a prepared folder is checked when opened, empty class folders are
refused, and a conversion error is printed on a line of its own."""
from __future__ import annotations

import pickle
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from cfgedu.commands.cli import main
from cfgedu.data import imagenet64 as inet
from cfgedu.data import imagenet64_convert as convert


@pytest.fixture
def prepared(tmp_path):
    """A prepared folder converted from official-format batches: 6 train and 2 val images, 1000 classes."""
    convert.write_synthetic_batches(tmp_path / "src", num_train=6, num_val=2, num_files=1)
    convert.convert_pickles(tmp_path / "src", tmp_path / "data", progress=False)
    return tmp_path / "data"


@pytest.fixture
def jpeg_classes(tmp_path):
    """A raw folder of two classes, n000 and n001, of one small JPEG each."""
    for name in ("n000", "n001"):
        (tmp_path / "raw" / name).mkdir(parents=True)
        Image.new("RGB", (80, 70), (200, 30, 30)).save(tmp_path / "raw" / name / "a.JPEG")
    return tmp_path / "raw"


def assert_one_line_naming(error, path):
    message = str(error.value)
    assert str(path) in message and "prepare-imagenet64" in message and "\n" not in message


def test_a_prepared_folder_opens_with_int64_labels(prepared):
    images, labels = inet.load_split(prepared)
    assert images.dtype == np.uint8 and images.shape == (6, 3, 64, 64) and labels.dtype == np.int64
    np.save(prepared / "train_labels.npy", labels.astype(np.int32))  # any integer labels in range are fine
    assert inet.load_split(prepared)[1].dtype == np.int64


@pytest.mark.parametrize("pixels, match", [
    (lambda x: x.astype(np.float32), "float32 pixels, not uint8"),
    (lambda x: np.full(x.shape, np.nan, np.float32), "float32 pixels, not uint8"),
    (lambda x: x[:, :, :32, :32].copy(), r"shape \(3, 32, 32\), not the manifest's \(3, 64, 64\)"),
    (lambda x: x[:5].copy(), r"\(5 images\), .*train_labels.npy \(6 labels\) and the manifest \(6\) disagree"),
], ids=["float32", "nan", "32x32", "length"])
def test_bad_images_are_refused_when_opened(prepared, pixels, match):
    path = prepared / "train_images.npy"
    np.save(path, pixels(np.load(path)))
    with pytest.raises(ValueError, match=match) as error:
        inet.ImageNet64Data(prepared)  # what `train` builds: it fails here, before any step
    assert_one_line_naming(error, path)


@pytest.mark.parametrize("labels, match", [
    (lambda c: np.full_like(c, 1000), r"labels 1000..1000, not 0..999 .*1000 is the null label"),
    (lambda c: np.where(np.arange(len(c)) == 3, 5000, c), r"labels \d+..5000, not 0..999"),
    (lambda c: np.where(np.arange(len(c)) == 3, -1, c), r"labels -1..\d+, not 0..999"),
    (lambda c: c.astype(np.float64), r"float64 of shape \(6,\), not integer labels"),
    (lambda c: c[:, None], r"int64 of shape \(6, 1\), not integer labels of shape \(N,\)"),
], ids=["null-label", "5000", "-1", "float64", "2d"])
def test_bad_labels_are_refused_when_opened(prepared, labels, match):
    path = prepared / "train_labels.npy"
    np.save(path, labels(np.load(path)))
    with pytest.raises(ValueError, match=match) as error:
        inet.load_split(prepared)
    assert_one_line_naming(error, path)


def test_labels_are_checked_against_the_manifests_class_count(jpeg_classes, tmp_path):
    convert.convert_folder(jpeg_classes, tmp_path / "data", progress=False)  # a folder of 2 classes
    path = tmp_path / "data" / "train_labels.npy"
    np.save(path, np.array([0, 2]))
    with pytest.raises(ValueError, match=r"labels 0..2, not 0..1 \(the manifest's 2 classes") as error:
        inet.load_split(tmp_path / "data")
    assert_one_line_naming(error, path)


@pytest.mark.parametrize("name", ["train_images.npy", "train_labels.npy"])
def test_object_arrays_are_refused_by_name(prepared, name):
    path = prepared / name
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects .*will not unpickle") as error:
        inet.load_split(prepared)
    assert_one_line_naming(error, path)
    path.write_bytes(pickle.dumps([1, 2]))  # a pickle under a .npy name
    with pytest.raises(ValueError, match="Python objects .*will not unpickle") as error:
        inet.load_split(prepared)
    assert_one_line_naming(error, path)


def test_missing_and_unreadable_files_are_named(prepared):
    path = prepared / "val_labels.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(ValueError, match="not a readable .npy file") as error:
        inet.load_split(prepared, "val")
    assert_one_line_naming(error, path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="is missing") as error:
        inet.load_split(prepared, "val")
    assert_one_line_naming(error, path)


def test_empty_class_folders_are_refused_by_name(jpeg_classes, tmp_path, capsys):
    (jpeg_classes / "n002").mkdir()
    (jpeg_classes / "n003").mkdir()
    (jpeg_classes / "n003" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="2 class folder.* hold no images .*: n002, n003; every sub-folder is a class"):
        convert.list_class_folder(jpeg_classes)
    argv = ["prepare-imagenet64", "--src", str(jpeg_classes), "--out", str(tmp_path / "out"), "--format", "folder"]
    assert main(argv) == 2
    assert "n002, n003" in capsys.readouterr().err and not (tmp_path / "out" / "manifest.json").exists()


def test_many_empty_class_folders_are_counted_on_one_line(jpeg_classes):
    for k in range(2, 12):
        (jpeg_classes / f"n{k:03d}").mkdir()
    with pytest.raises(ValueError, match=r"10 class folder.*: n002, n003, n004, n005, n006 and 5 more;"):
        convert.list_class_folder(jpeg_classes)


def test_a_refused_batch_is_reported_on_a_line_of_its_own(tmp_path, capsys):
    convert.write_synthetic_batches(tmp_path / "src", num_train=4, num_val=2, num_files=2)
    hostile = {"data": np.zeros((1, convert.ROW_BYTES), np.uint8), "labels": [1], "mean": Fraction(1, 2)}
    (tmp_path / "src" / "train_data_batch_2").write_bytes(pickle.dumps(hostile))
    argv = ["prepare-imagenet64", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--workers", "1"]
    assert main(argv) == 2  # with the progress bar on, as a user sees it
    lines = capsys.readouterr().err.split("\n")
    error = next(line for line in lines if "error:" in line)
    assert error.startswith("cfgedu prepare-imagenet64: error: ") and "refusing to load fractions.Fraction" in error
    assert any("converting" in line for line in lines[: lines.index(error)])  # the bar was drawn, then closed
