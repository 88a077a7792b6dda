"""ImageNet 64x64 converted once into the prepared folder of imagenet64.py, from the official downsampled batches
(pickles, read through a restricted unpickler that refuses anything but numpy arrays and builtin containers) or
from a raw folder of one sub-folder of JPEGs per class. The conversion is split into parts, each written atomically,
so an interrupted run resumes. Stand-in batches in the official format can be written for tests and demos.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import typing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.checks import check_choice, check_positive_int
from ..core.io import atomic_write, atomic_write_json
from .imagenet64 import IMAGE_SIZE, MANIFEST_FORMAT

ROW_BYTES = 3 * IMAGE_SIZE * IMAGE_SIZE  # 12,288: one channel-planar R, G, B row of the official files


RESIZE_METHODS = ("box", "center-crop")


LABEL_ORDERS = ("map_clsloc", "sorted_wnid")


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


# The only globals a pickled dict of numpy arrays, lists, ints and strings refers to: numpy's
# array/dtype/scalar reconstructors (under numpy 1 and numpy 2 module names) and, in protocol-2
# pickles written by Python 3, bytes rebuilt through _codecs.encode.
_ALLOWED_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {(module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")} | {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than numpy arrays and builtin containers."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in _ALLOWED_GLOBALS; anything else is refused before it can be called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to load {module}.{name}: only numpy arrays, lists, ints and "
                                    f"strings are allowed in a downsampled-ImageNet batch")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a persistent reference: not a downsampled-ImageNet batch")


def restricted_load(handle: typing.BinaryIO):
    """Unpickle from a binary file allowing only numpy arrays/dtypes/scalars, builtin containers, ints and strings."""
    # latin1 reads numpy arrays pickled by Python 2 as well as Python 3 pickles.
    return _RestrictedUnpickler(handle, encoding="latin1").load()


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file -> (images uint8 (N, 3, 64, 64) RGB, labels int64 (N,) in 0..999, map_clsloc order)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no downsampled-ImageNet batch at {path}")
    try:
        with path.open("rb") as handle:  # streamed: a 1.6 GB batch is never held twice
            record = restricted_load(handle)
    except UnsafePickleError as error:
        raise ValueError(f"{path}: {error}") from None
    except Exception as error:  # truncated or corrupted: EOFError, UnpicklingError, ValueError, ...
        raise ValueError(f"{path} is not a readable downsampled-ImageNet batch (truncated or corrupted? "
                         f"{type(error).__name__}: {error})") from None
    return _batch_arrays(record, path)


def _batch_arrays(record, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Check the dict {data, labels[, mean]} and return (images, labels - 1)."""
    if not isinstance(record, dict) or not {"data", "labels"} <= record.keys():
        raise ValueError(f"{path} is not a downsampled-ImageNet batch: expected a dict with keys data, labels")
    data = record["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        raise ValueError(f"{path}: data must be a uint8 array of rows of {ROW_BYTES} bytes (64x64 RGB); got "
                         f"{getattr(data, 'dtype', type(data).__name__)} of shape {getattr(data, 'shape', '?')}")
    labels = np.asarray(record["labels"])
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected {data.shape[0]} integer labels, got {labels.dtype} of shape {labels.shape}")
    if labels.size and (labels.min() < 1 or labels.max() > 1000):
        raise ValueError(f"{path}: labels must be 1..1000, got {labels.min()}..{labels.max()}")
    # Rows are channel-planar: all R (row-major), then all G, then all B.
    return data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels.astype(np.int64) - 1


def clsloc_to_sorted_wnid(map_clsloc: Path) -> np.ndarray:
    """A (1000,) int64 table: label in map_clsloc order (0-based) -> rank of its WNID in sorted order."""
    wnids = {}
    for line in Path(map_clsloc).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2:
            wnids[int(fields[1])] = fields[0]  # "n02119789 1 kit_fox"
    if sorted(wnids) != list(range(1, 1001)):
        raise ValueError(f"{map_clsloc} must list 1000 classes numbered 1..1000 ('WNID INDEX NAME' per line)")
    rank = {wnid: i for i, wnid in enumerate(sorted(wnids.values()))}
    return np.array([rank[wnids[k]] for k in range(1, 1001)], dtype=np.int64)


def resize_image(image, method: str = "box"):
    """A PIL image -> uint8 (3, 64, 64) RGB array.

    box: area-average the whole image to 64x64, aspect ratio not kept (how the downsampled files were made).
    center-crop: ADM's preprocessing: halve with BOX while the short side is >= 128, BICUBIC so the short
    side is 64, then crop the centre square.
    """
    from PIL import Image

    check_choice("resize", method, RESIZE_METHODS)
    image = image.convert("RGB")
    if method == "box":
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.BOX)
    else:
        while min(image.size) >= 2 * IMAGE_SIZE:
            image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
        scale = IMAGE_SIZE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC)
        left, top = (image.width - IMAGE_SIZE) // 2, (image.height - IMAGE_SIZE) // 2
        image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def list_class_folder(root: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """(class names = sorted sub-folders, image paths, labels) of a folder with one sub-folder per class."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected one folder of JPEGs per class)")
    files = {name: sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for name in classes}
    empty = [name for name in classes if not files[name]]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(f"{root}: {len(empty)} class folder(s) hold no images ({', '.join(IMAGE_SUFFIXES)}): {shown}; "
                         f"every sub-folder is a class, so add its images or remove it")
    paths = [path for name in classes for path in files[name]]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(files[name]) for name in classes])  # (N,)
    return classes, paths, labels


def _read_images(paths: list[Path], method: str) -> np.ndarray:
    """Decode and resize a list of image files -> uint8 (n, 3, 64, 64)."""
    from PIL import Image

    out = np.empty((len(paths), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                out[i] = resize_image(image, method)
        except (OSError, SyntaxError) as error:  # PIL reports truncated or corrupt files this way
            raise ValueError(f"cannot decode image {path} ({type(error).__name__}: {error})") from None
    return out


@dataclass(frozen=True)
class _Part:
    """One unit of work: a batch file, or a chunk of image files with their labels."""

    name: str
    batch_file: Path | None = None
    image_files: tuple[Path, ...] = ()
    labels: np.ndarray | None = None
    resize: str = "box"

    def convert(self) -> tuple[np.ndarray, np.ndarray]:
        if self.batch_file is not None:
            return read_batch(self.batch_file)
        return _read_images(list(self.image_files), self.resize), self.labels


def _write_part(part: _Part, parts_dir: Path) -> str:
    images, labels = part.convert()
    atomic_write(parts_dir / f"{part.name}.npz", lambda handle: np.savez(handle, images=images, labels=labels))
    return part.name


def _run_parts(parts: list[_Part], parts_dir: Path, workers: int, progress: bool) -> None:
    """Convert every part not already on disk, in `workers` processes, with a progress bar."""
    from tqdm.auto import tqdm

    todo = [p for p in parts if not (parts_dir / f"{p.name}.npz").is_file()]
    # The bar is closed on the way out, so that an error is printed on a line of its own.
    with tqdm(total=len(parts), initial=len(parts) - len(todo), desc="converting", unit="part",
              disable=not progress) as bar:
        if workers <= 1:
            for part in todo:
                _write_part(part, parts_dir)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_write_part, todo, [parts_dir] * len(todo)):
                    bar.update()


def _assemble(parts: list[_Part], parts_dir: Path, out: Path, split: str, label_map: np.ndarray | None) -> int:
    """Concatenate the parts of one split into DIR/{split}_images.npy and _labels.npy; return N."""
    loaded = [np.load(parts_dir / f"{p.name}.npz", allow_pickle=False) for p in parts]
    total = sum(int(part["labels"].shape[0]) for part in loaded)
    tmp = out / f".{split}_images.npy.tmp"
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total, 3, IMAGE_SIZE, IMAGE_SIZE))
    labels, start = [], 0
    for part in loaded:
        chunk = part["images"]
        images[start:start + len(chunk)] = chunk
        labels.append(part["labels"])
        start += len(chunk)
    images.flush()
    del images
    tmp.replace(out / f"{split}_images.npy")
    labels = np.concatenate(labels).astype(np.int64)
    labels = label_map[labels] if label_map is not None else labels
    atomic_write(out / f"{split}_labels.npy", lambda handle: np.save(handle, labels))
    return total


def _check_plan(parts_dir: Path, plan: dict) -> None:
    """Resume only a conversion of the same source with the same settings."""
    plan_file = parts_dir / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        raise ValueError(f"{parts_dir} holds an unfinished conversion with different settings or inputs; "
                         f"delete that folder to start over, or rerun with the same arguments to resume")
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan, plan_file)


def _finish(out: Path, splits: dict[str, list[_Part]], parts_dir: Path, manifest: dict,
            label_map: np.ndarray | None) -> dict:
    sizes = {split: _assemble(parts, parts_dir, out, split, label_map) for split, parts in splits.items() if parts}
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "image_shape": [3, IMAGE_SIZE, IMAGE_SIZE],
                **manifest, "splits": sizes}
    atomic_write_json(manifest, out / "manifest.json")
    shutil.rmtree(parts_dir)
    return manifest


def _convert(out: Path, splits: dict[str, list[_Part]], plan: dict, manifest: dict, workers: int,
             progress: bool, label_map: np.ndarray | None = None) -> dict:
    out = Path(out)
    parts_dir = out / ".parts"
    _check_plan(parts_dir, plan)
    _run_parts([p for parts in splits.values() for p in parts], parts_dir, workers, progress)
    return _finish(out, splits, parts_dir, manifest, label_map)


def _fingerprint(paths) -> str:
    return hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()


def convert_pickles(src: Path, out: Path, *, map_clsloc: Path | None = None, workers: int = 1,
                    progress: bool = True) -> dict:
    """Official batches in `src` (train_data_batch_1.. and val_data) -> the prepared folder `out`.

    Labels are stored 0..999 in map_clsloc order, or in sorted-WNID order (ADM/torchvision) when
    `map_clsloc` (the devkit's map_clsloc.txt) is given. Rerunning after an interruption resumes.
    """
    src = Path(src)
    check_positive_int("workers", workers)
    train = sorted(src.glob("train_data_batch_*"), key=lambda p: int(p.name.rsplit("_", 1)[-1]))
    if not train:
        raise FileNotFoundError(f"no train_data_batch_* files under {src}: download Imagenet64_train_part1.zip "
                                f"and _part2.zip from image-net.org and unzip them there (see data/README.md)")
    val = [src / "val_data"] if (src / "val_data").is_file() else []
    splits = {"train": [_Part(f"train-{p.name}", batch_file=p) for p in train],
              "val": [_Part("val", batch_file=p) for p in val]}
    label_map = clsloc_to_sorted_wnid(map_clsloc) if map_clsloc is not None else None
    order = "sorted_wnid" if label_map is not None else "map_clsloc"
    plan = {"source": "pickles", "files": [str(p) for p in train + val], "label_order": order}
    manifest = {"source": "pickles", "resize": "box (official files)", "label_order": order, "num_classes": 1000}
    return _convert(out, splits, plan, manifest, workers, progress, label_map)


def _folder_parts(root: Path, split: str, resize: str, chunk: int) -> tuple[list[str], list[_Part], str]:
    classes, paths, labels = list_class_folder(root)
    parts = [_Part(f"{split}-{i // chunk:06d}", image_files=tuple(paths[i:i + chunk]), labels=labels[i:i + chunk],
                   resize=resize) for i in range(0, len(paths), chunk)]
    return classes, parts, _fingerprint(paths)


def convert_folder(src: Path, out: Path, *, resize: str = "box", val_src: Path | None = None, workers: int = 1,
                   chunk: int = 1000, progress: bool = True) -> dict:
    """A raw folder (one sub-folder of images per class; labels = sorted folder names) -> `out`.

    `val_src`, if given, is a validation folder with the same class sub-folders. Rerunning resumes.
    """
    check_choice("resize", resize, RESIZE_METHODS)
    check_positive_int("workers", workers)
    check_positive_int("chunk", chunk)
    classes, train_parts, train_print = _folder_parts(Path(src), "train", resize, chunk)
    splits, prints = {"train": train_parts}, [train_print]
    if val_src is not None:
        val_classes, splits["val"], val_print = _folder_parts(Path(val_src), "val", resize, chunk)
        if val_classes != classes:
            raise ValueError(f"the class folders of {val_src} differ from those of {src}")
        prints.append(val_print)
    plan = {"source": "folder", "src": str(src), "resize": resize, "chunk": chunk, "files": prints}
    manifest = {"source": "folder", "resize": resize, "label_order": "sorted_wnid", "num_classes": len(classes),
                "classes": classes}
    return _convert(out, splits, plan, manifest, workers, progress)


def synthetic_images(labels: np.ndarray, classes_shown: int, generator: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3, 64, 64) stand-in images: class k is a disc of its own colour and size on a dark noisy
    background, so that a tiny model has something class-dependent to learn."""
    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    hue = (labels % classes_shown) / classes_shown  # (N,)
    colour = 0.5 + 0.5 * np.cos(2 * np.pi * (hue[:, None] - np.array([0, 1, 2]) / 3))  # (N, 3) on a colour wheel
    radius = 0.3 + 0.5 * hue  # (N,)
    disc = (xx ** 2 + yy ** 2)[None] < radius[:, None, None] ** 2  # (N, 64, 64)
    pixels = (0.15 + 0.8 * disc[:, None] * colour[:, :, None, None]
              + 0.05 * generator.standard_normal((len(labels), 3, 64, 64)))
    return (pixels.clip(0, 1) * 255).round().astype(np.uint8)


def write_synthetic_batches(src: Path, *, num_train: int = 256, num_val: int = 64, num_files: int = 2,
                            classes_shown: int = 10, seed: int = 0) -> Path:
    """Write stand-in train_data_batch_1..num_files and val_data in the official format (pickled dicts of
    channel-planar uint8 rows, labels 1..1000, the per-pixel mean): real-format data for tests and demos."""
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_files", num_files),
                        ("classes_shown", classes_shown)):
        check_positive_int(name, value)
    src, generator = Path(src), np.random.default_rng(seed)
    src.mkdir(parents=True, exist_ok=True)
    labels = generator.integers(0, classes_shown, num_train + num_val)
    rows = synthetic_images(labels, classes_shown, generator).reshape(len(labels), ROW_BYTES)
    train_files = np.array_split(np.arange(num_train), num_files)
    for k, index in enumerate(train_files, start=1):
        record = {"data": rows[index], "labels": [int(c) + 1 for c in labels[index]], "mean": rows[:num_train].mean(0)}
        (src / f"train_data_batch_{k}").write_bytes(pickle.dumps(record, protocol=2))
    val = {"data": rows[num_train:], "labels": [int(c) + 1 for c in labels[num_train:]]}
    (src / "val_data").write_bytes(pickle.dumps(val, protocol=2))
    return src
