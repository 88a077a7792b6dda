"""ImageNet 64x64: the official downsampled batches or a raw ImageNet folder, converted once to
memory-mapped uint8 arrays, and a DataSource over them for cfgedu.engine.loop.train (SPEC 7.4).

Prepared folder layout (what `python -m cfgedu prepare-imagenet64` writes):
    DIR/train_images.npy  uint8 (N, 3, 64, 64), channels R, G, B; numpy.load(..., mmap_mode="r")
    DIR/train_labels.npy  int64 (N,) in 0..num_classes-1
    DIR/val_images.npy, DIR/val_labels.npy  the same for the validation split (when the source has one)
    DIR/manifest.json     source, resize method, label order, class count and split sizes

Label order. The official batches number classes 1..1000 in map_clsloc.txt order (ILSVRC2015
CLS-LOC: n02119789 = 1, n02100735 = 2, ...); we store label - 1 ("map_clsloc" order). ADM, EDM and
torchvision's ImageFolder use the sorted WordNet-id order instead ("sorted_wnid"): pass a
map_clsloc.txt to remap. A raw folder is always labelled by its sorted sub-folder names.
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
import torch

from ..core.checks import check_choice, check_positive_int
from ..core.io import atomic_write, atomic_write_json, first_sentence
from ..core.tensors import make_generator

IMAGE_SIZE = 64
ROW_BYTES = 3 * IMAGE_SIZE * IMAGE_SIZE  # 12,288: one channel-planar R, G, B row of the official files
RESIZE_METHODS = ("box", "center-crop")
LABEL_ORDERS = ("map_clsloc", "sorted_wnid")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
MANIFEST_FORMAT = "cfgedu-imagenet64"

# ---------------------------------------------------------------------------------------------
# Restricted unpickling of the official batches.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Raw folders: one sub-folder of images per class.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Resumable conversion: independent parts, each written atomically, then assembled.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Reading the prepared folder.
# ---------------------------------------------------------------------------------------------

def _prepare_command(root: Path) -> str:
    return f"`python -m cfgedu prepare-imagenet64 --src PATH --out {root}`"


def _bad_file(path: Path, problem: str, root: Path, error: type[Exception] = ValueError) -> Exception:
    """One line: which file of a prepared folder is wrong, what is wrong, and how to fix it."""
    return error(f"{path} {problem}: prepare the folder again with {_prepare_command(root)}")


def read_manifest(root: Path) -> dict:
    """The manifest of a prepared folder, with a clear error when the folder was never prepared."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no prepared ImageNet 64x64 at {root} (manifest.json missing): run "
                                f"{_prepare_command(root)} (see data/README.md)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a cfgedu ImageNet 64x64 manifest")
    missing = [key for key in ("image_shape", "num_classes", "splits") if key not in manifest]
    if missing:
        raise _bad_file(path, f"lacks {', '.join(missing)}", root)
    return manifest


def _load_npy(path: Path, root: Path, mmap_mode: str | None = None) -> np.ndarray:
    """np.load without pickles; a missing, object-array or unreadable file is an error that names it."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise _bad_file(path, "is missing", root, FileNotFoundError) from None
    except (ValueError, EOFError) as error:
        if "object" in str(error).lower():  # numpy's words for an object array, or for a file that is a pickle
            raise _bad_file(path, "holds pickled Python objects (an object array, or a pickle rather than a .npy "
                            "array), which cfgedu will not unpickle", root) from None
        detail = f"{type(error).__name__}: {first_sentence(error)}"
        raise _bad_file(path, f"is not a readable .npy file ({detail})", root) from None


def _check_images(images: np.ndarray, path: Path, image_shape: tuple, root: Path) -> None:
    """Refuse pixels that are not uint8 or not of the manifest's image_shape (from the header alone)."""
    if images.dtype != np.uint8:
        raise _bad_file(path, f"holds {images.dtype} pixels, not uint8 (0..255)", root)
    if images.shape[1:] != image_shape:
        raise _bad_file(path, f"holds images of shape {images.shape[1:]}, not the manifest's {image_shape}", root)


def _check_labels(labels: np.ndarray, path: Path, num_classes: int, root: Path) -> None:
    """Refuse labels that are not integers of shape (N,) in 0..num_classes-1."""
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise _bad_file(path, f"holds {labels.dtype} of shape {labels.shape}, not integer labels of shape (N,)", root)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _bad_file(path, f"holds labels {labels.min()}..{labels.max()}, not 0..{num_classes - 1} "
                        f"(the manifest's {num_classes} classes; {num_classes} is the null label ∅)", root)


def load_split(root: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 64, 64) memory-mapped read-only, labels int64 (N,)) of a prepared split, checked
    against the manifest when opened (from the image file's header: no pixel is read)."""
    root = Path(root)
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        raise ValueError(f"{root} has splits {', '.join(manifest['splits'])}; got split {split!r}")
    image_file, label_file = root / f"{split}_images.npy", root / f"{split}_labels.npy"
    images = _load_npy(image_file, root, mmap_mode="r")  # (N, 3, 64, 64), memory-mapped
    labels = _load_npy(label_file, root)  # (N,)
    _check_images(images, image_file, tuple(manifest["image_shape"]), root)
    _check_labels(labels, label_file, manifest["num_classes"], root)
    if not images.shape[0] == labels.shape[0] == manifest["splits"][split]:
        raise _bad_file(image_file, f"({images.shape[0]} images), {label_file} ({labels.shape[0]} labels) and the "
                        f"manifest ({manifest['splits'][split]}) disagree", root)
    return images, labels.astype(np.int64, copy=False)


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1] (ADM's data range)."""
    return torch.as_tensor(np.asarray(images)).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float images in [-1, 1] -> uint8 0..255 (clipped, rounded): what FID/IS and PNGs take."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


_CHUNK = 4096  # random draws are made in chunks of this size, so every prefix of a stream is reproducible
_SMALL = 1 << 16  # below this many images, a step's order is a full random permutation


def _draws(generator: torch.Generator, count: int, draw) -> torch.Tensor:
    """The first `count` values of the stream draw(_CHUNK), draw(_CHUNK), ... (the same prefix for any count)."""
    return torch.cat([draw(_CHUNK) for _ in range(-(-count // _CHUNK))])[:count]


def step_order(n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """The first `count` indices of a step's random order of 0..n-1: distinct (a uniformly random subset
    in random order) unless count > n, and the same prefix whatever `count` is.

    Small sets: concatenated permutations. Large sets: i.i.d. draws with repeats dropped (that is sampling
    without replacement), O(count) instead of O(n).
    """
    if n < _SMALL:
        return torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-count // n))])[:count]
    if count > n // 2:
        raise ValueError(f"a step of {count} examples needs at most half of the {n} images")
    stream = torch.empty(0, dtype=torch.long)
    while True:
        stream = torch.cat([stream, torch.randint(n, (_CHUNK,), generator=generator)])
        _, first = np.unique(stream.numpy(), return_index=True)  # first occurrence of each distinct value
        if len(first) >= count:
            return stream[np.sort(first)[:count]]


class ImageNet64Data:
    """A DataSource over a prepared split: memory-mapped images in [-1, 1] with random horizontal flips.

    Each step has one random order of the images and one flip decision per position, drawn from
    generators seeded by (seed, step); the local batch of (micro, rank) is its slot of that order
    (cfgedu.engine.loop.slot_offset). Ranks therefore get disjoint images (the role of DistributedSampler),
    a step is the same for any split over processes and micro-steps, and resume is exact.
    """

    def __init__(self, root: Path, split: str = "train", *, flip: bool = True, seed: int = 0):
        self.images, self.labels = load_split(root, split)
        self.num_classes = int(read_manifest(root)["num_classes"])
        self.data_shape = tuple(self.images.shape[1:])
        self.flip, self.seed = flip, int(seed)

    def __len__(self) -> int:
        return self.images.shape[0]

    def indices(self, step: int, micro: int, rank: int, world_size: int, size: int) -> tuple[np.ndarray, torch.Tensor]:
        """(dataset indices (size,), flip mask (size,)) of this rank's micro-batch."""
        from ..engine.loop import derive_seed, slot_offset

        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        start = slot_offset(micro, rank, world_size, size)
        order = step_order(len(self), start + size, make_generator(derive_seed(self.seed, step)))
        flip_generator = make_generator(derive_seed(self.seed, step, 1))
        flips = _draws(flip_generator, start + size, lambda k: torch.rand(k, generator=flip_generator)) < 0.5
        return order[start:].numpy(), flips[start:] & self.flip

    def batch(self, step: int, micro: int, rank: int, world_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index, flips = self.indices(step, micro, rank, world_size, size)
        order = np.argsort(index, kind="stable")  # read the memory map in file order, then restore the drawn order
        pixels = np.empty((size, *self.data_shape), dtype=np.uint8)
        pixels[order] = self.images[index[order]]
        x = to_model_range(pixels)  # (size, 3, 64, 64)
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        return x, torch.as_tensor(self.labels[index])


@dataclass(frozen=True)
class ImageNet64Source:
    """The data config of the imagenet64 preset: build(seed) -> ImageNet64Data over a prepared folder's
    train split. The field is named `data` so that `train --preset imagenet64 --data DIR` sets it."""

    data: str = "data/imagenet64"
    flip: bool = True

    def build(self, seed: int) -> ImageNet64Data:
        return ImageNet64Data(Path(self.data), "train", flip=self.flip, seed=seed)


def synthetic_images(labels: np.ndarray, classes_shown: int, generator: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3, 64, 64) stand-in images: class k is a disc of its own colour and size on a dark noisy
    background, so that a tiny model has something class-dependent to learn."""
    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    hue = (labels % classes_shown) / classes_shown  # (N,)
    colour = 0.5 + 0.5 * np.cos(2 * np.pi * (hue[:, None] - np.array([0, 1, 2]) / 3))  # (N, 3) on a colour wheel
    radius = 0.3 + 0.5 * hue  # (N,)
    disc = (xx ** 2 + yy ** 2)[None] < radius[:, None, None] ** 2  # (N, 64, 64)
    pixels = 0.15 + 0.8 * disc[:, None] * colour[:, :, None, None] + 0.05 * generator.standard_normal((len(labels), 3, 64, 64))
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


# ---------------------------------------------------------------------------------------------
# Driving the run: the torchrun command, a tiny stand-in configuration, and the metrics log.
# ---------------------------------------------------------------------------------------------

# Overrides that shrink the imagenet64 preset to an imagenet64-shaped network (3x64x64 inputs, 1000
# classes, ~80k parameters, attention only in the middle block) that takes a few CPU steps in seconds.
TINY_OVERRIDES = {"steps": "2", "batch_size": "2", "per_device_batch": "1", "warmup_steps": "0",
                  "precision": "fp32", "device": "cpu", "checkpoint_every": "1", "log_every": "1",
                  "model.model_channels": "8", "model.channel_mult": "1,2", "model.num_res_blocks": "1",
                  "model.attention_resolutions": "", "model.head_channels": "8", "model.norm_groups": "4",
                  "model.dropout": "0"}


def launch_command(data: str | Path, out: str | Path, *, nproc_per_node: int = 8, nnodes: int = 1,
                   node_rank: int = 0, master_addr: str = "MASTER_HOST", master_port: int = 29500,
                   overrides: dict | None = None, launcher: tuple[str, ...] = ("torchrun",)) -> list[str]:
    """The command that trains the imagenet64 preset on `nnodes` machines of `nproc_per_node` GPUs.

    One machine: `torchrun --standalone`. Several: run the same command on every machine with its own
    --node_rank (0 .. nnodes-1); --master_addr/--master_port name node 0, reachable from all. Running
    the command again resumes from OUT/checkpoint.pt. The global batch stays 2048: fewer GPUs use more
    gradient-accumulation micro-steps of 64 images each.
    """
    for name, value in (("nproc_per_node", nproc_per_node), ("nnodes", nnodes)):
        check_positive_int(name, value)
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank must be in 0..{nnodes - 1}, got {node_rank}")
    command = [*launcher, f"--nproc_per_node={nproc_per_node}"]
    if nnodes == 1:
        command.append("--standalone")
    else:
        command += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                    f"--master_port={master_port}"]
    command += ["-m", "cfgedu", "train", "--preset", "imagenet64", "--data", str(data), "--out", str(out)]
    return command + [word for key, value in (overrides or {}).items() for word in (f"--{key}", str(value))]


def read_new_metrics(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The complete JSON lines of a growing metrics.jsonl after byte `offset`, and the offset to read on from."""
    path = Path(path)
    if not path.is_file():
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        text = handle.read()
    complete = text[: text.rfind(b"\n") + 1]  # a line still being written waits for the next call
    return [json.loads(line) for line in complete.splitlines() if line.strip()], offset + len(complete)
