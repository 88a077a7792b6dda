"""ImageNet 64x64 prepared for training: memory-mapped uint8 arrays checked when opened, and a DataSource over
them for the training engine (SPEC 7.4). `python -m cfgedu prepare-imagenet64` (imagenet64_convert.py) writes them.

Prepared folder layout:
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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.io import first_sentence
from ..core.tensors import derive_seed, make_generator
from .source import slot_offset

IMAGE_SIZE = 64


MANIFEST_FORMAT = "cfgedu-imagenet64"


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
    return torch.as_tensor(np.asarray(images, dtype=np.float32)) / 127.5 - 1.0  # a new array: memmaps are read-only


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
    (cfgedu.data.source.slot_offset). Ranks therefore get disjoint images (the role of DistributedSampler),
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
