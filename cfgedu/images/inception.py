"""The ImageNet 64x64 protocol (SPEC 8): torch-fidelity's Inception network and reference statistics.

The network is the TensorFlow 2015-12-05 Inception ported by torch-fidelity (agreement with the TF
reference ≈ 1e-6 relative FID). No package ships its weights: download
weights-inception-2015-12-05-6726825d.pth once and pass its path (`--inception PATH`) or set
CFGEDU_INCEPTION_WEIGHTS. torch-fidelity itself is the optional extra `imagenet`, installed with
`pip install --no-deps torch-fidelity` (its dependency on torchvision would replace a CPU torch with
a multi-GB CUDA build; the Inception module does not need torchvision).

FID uses the 2048-d pool features and IS the 1008 unbiased logits, the mean and std over 10 splits
(torch-fidelity's defaults); the metrics and the sweep are cfgedu.images.evaluation's.
"""
from __future__ import annotations

import importlib
import importlib.util
import io
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import check_positive_int
from ..core.io import atomic_write
from ..data.imagenet64 import to_model_range, to_uint8
from .evaluation import Extractor, Protocol, join_processes
from .metrics import FeatureStats, Moments, rank_and_world

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "CFGEDU_INCEPTION_WEIGHTS"
REFERENCE_CACHE = "inception_train_stats.npz"

# Ho & Salimans (2022), Table 1 (ImageNet 64x64, 50,000 samples): w -> (FID, IS) for p_uncond 0.1, 0.2, 0.5.
TABLE1_WS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0)
PAPER_TABLE1 = {
    p_uncond: dict(zip(TABLE1_WS, zip(fids, inception, strict=True), strict=True))
    for p_uncond, fids, inception in (
        (0.1, (1.8, 1.55, 2.04, 3.03, 4.3, 5.74, 7.19, 8.62, 10.08, 11.41, 12.6, 21.03, 24.83, 26.22),
         (53.71, 66.11, 78.91, 92.8, 106.2, 119.3, 131.1, 141.8, 151.6, 161, 170.1, 225.5, 250.4, 260.2)),
        (0.2, (1.8, 1.62, 2.1, 2.93, 4, 5.19, 6.48, 7.73, 8.9, 10.09, 11.21, 18.79, 22.36, 23.84),
         (52.9, 64.58, 76.99, 88.64, 101.11, 112.15, 122.13, 131.6, 140.82, 150.26, 158.29, 212.98, 237.65, 248.97)),
        (0.5, (2.21, 1.91, 2.08, 2.65, 3.44, 4.34, 5.27, 6.23, 7.25, 8.21, 9.13, 16.16, 19.75, 21.48),
         (47.61, 56.1, 65.6, 74.92, 84.27, 92.95, 102, 109.8, 116.9, 124.6, 131.1, 183, 208.9, 225.1)))
}


# ---- feature extractors: images (B, 3, H, W) in [−1, 1] -> (features (B, D), logits (B, K)) -------------------

def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4 \
            or images.shape[1] != 3:
        kind, shape = getattr(images, "dtype", type(images).__name__), tuple(getattr(images, "shape", ()))
        raise ValueError(f"images must be float (B, 3, H, W) RGB in [-1, 1], got {kind} of shape {shape}")
    return images


class StandInExtractor(nn.Module):
    """A tiny fixed random network with the extractor interface, for tests and fast notebooks.

    Its numbers are NOT comparable with published FID/IS; it only exercises the same code path.
    """

    def __init__(self, feature_dim: int = 16, num_logits: int = 10, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("project", torch.randn(3 * 4 * 4, feature_dim, generator=generator) / 7)
        self.register_buffer("classify", torch.randn(feature_dim, num_logits, generator=generator))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.adaptive_avg_pool2d(_check_images(images).float().cpu(), 4).flatten(1)  # (B, 48)
        features = torch.tanh(pooled @ self.project)  # (B, D)
        return features, features @ self.classify  # (B, D), (B, K)


class InceptionExtractor(nn.Module):
    """torch-fidelity's TF-compatible Inception v3: 2048 pool features and 1008 unbiased logits of the images
    rounded to uint8 pixels, as the reference implementations see them."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = to_uint8(_check_images(images)).to(next(self.network.parameters()).device)
        return self.network(pixels)  # resizes to 299 x 299 like TF1 internally


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The weights file from `path`, else from $CFGEDU_INCEPTION_WEIGHTS; a clear error when neither exists."""
    path = path or os.environ.get(INCEPTION_ENV)
    if not path or not Path(path).is_file():
        where = f"{path} does not exist" if path else f"no path was given (--inception PATH or ${INCEPTION_ENV})"
        raise FileNotFoundError(f"FID/IS need the Inception weights file {INCEPTION_FILE}: {where}. Download it "
                                f"from {INCEPTION_URL} and pass its path with --inception or {INCEPTION_ENV}")
    return Path(path)


def _inception_module():
    """torch_fidelity.feature_extractor_inceptionv3, imported without torchvision when that is absent."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        raise ModuleNotFoundError("FID/IS need torch-fidelity's Inception network: `pip install --no-deps "
                                  "torch-fidelity` (the optional extra `imagenet`; --no-deps keeps your torch)")
    if "torch_fidelity" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        # The package __init__ imports its CLIP/VGG extractors, which need torchvision; the Inception
        # module does not. Register the package without running __init__, then import the module alone.
        package = types.ModuleType("torch_fidelity")
        package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules["torch_fidelity"] = package
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


def load_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> InceptionExtractor:
    """The Inception extractor with weights from `path` or $CFGEDU_INCEPTION_WEIGHTS (see module docstring)."""
    path = inception_weights_path(path)
    blob = path.read_bytes()
    try:  # the file must be plain tensors; torch-fidelity itself loads it with weights_only=False
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a weights-only state dict ({type(error).__name__}); expected "
                         f"{INCEPTION_FILE} from {INCEPTION_URL}") from None
    module = _inception_module()
    network = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                 feature_extractor_weights_path=io.BytesIO(blob))
    return InceptionExtractor(network.to(device))


# ---- reference statistics ---------------------------------------------------------------------------------------

def save_reference(moments: Moments, path: Path) -> Path:
    """Write ADM-style reference statistics atomically: mu (D,), sigma (D, D)."""
    mu, sigma = (t.numpy() for t in moments)
    return atomic_write(Path(path), lambda handle: np.savez(handle, mu=mu, sigma=sigma))


def load_reference(path: str | Path) -> Moments:
    """(mu, sigma) from an ADM-style .npz (e.g. VIRTUAL_imagenet64_labeled.npz) or one saved by save_reference."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference statistics at {path}: use ADM's VIRTUAL_imagenet64_labeled.npz or "
                                f"compute them from prepared data (reference_stats_from_data)")
    with np.load(path, allow_pickle=False) as npz:
        if not {"mu", "sigma"} <= set(npz.files):
            raise ValueError(f"{path} must hold arrays mu and sigma (ADM format); it has {', '.join(npz.files)}")
        mu, sigma = torch.from_numpy(npz["mu"]).double(), torch.from_numpy(npz["sigma"]).double()
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu must be (D,) and sigma (D, D); got {tuple(mu.shape)} and {tuple(sigma.shape)}")
    return mu, sigma


def reference_stats_from_data(root: Path, extract: Extractor, *, split: str = "train", limit: int | None = None,
                              batch_size: int = 250, progress: bool = True) -> FeatureStats:
    """Feature statistics of the first `limit` (default all) images of a prepared ImageNet 64x64 split.

    Under torch.distributed the batches are shared out between ranks and the sums pooled.
    """
    from tqdm.auto import tqdm

    from ..data.imagenet64 import load_split

    rank, world_size = rank_and_world()
    images, _ = load_split(root, split)
    count = len(images) if limit is None else min(check_positive_int("limit", limit), len(images))
    starts = range(rank * batch_size, count, world_size * batch_size)
    stats = FeatureStats()
    for start in tqdm(starts, desc="reference features", disable=not progress or rank != 0):
        stats.update(extract(to_model_range(np.array(images[start:min(start + batch_size, count)])))[0])
    return stats.all_reduce(dim=extract(torch.zeros(1, 3, 64, 64))[0].shape[1])


def data_reference(root: Path, extract: Extractor, *, cache: bool = True, progress: bool = True) -> Moments:
    """(mu, sigma) of the features of a prepared training split; with `cache` (for the Inception network
    only) they are kept in ROOT/inception_train_stats.npz and read from there next time."""
    path = Path(root) / REFERENCE_CACHE
    if cache and path.is_file():
        return load_reference(path)
    moments = reference_stats_from_data(root, extract, progress=progress).moments()
    if cache and rank_and_world()[0] == 0:
        save_reference(moments, path)
    return moments


# ---- the protocol -----------------------------------------------------------------------------------------------

def check_rgb(model: nn.Module) -> None:
    """Inception scores RGB images; a network of other data is refused."""
    shape = tuple(getattr(model.config, "data_shape", ()))
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"this checkpoint's network takes {'x'.join(map(str, shape)) or 'no'} data; the imagenet "
                         f"protocol scores RGB images (3xHxW): use --protocol digits for a digits checkpoint")


def imagenet_protocol(inception: str | Path | None = None, reference: str | Path | None = None,
                      data: str | Path | None = None, *, extractor: Extractor | None = None, splits: int = 10,
                      device: torch.device | str | None = None, progress: bool = True) -> Protocol:
    """Table 1's protocol: Inception features (weights from `inception` or $CFGEDU_INCEPTION_WEIGHTS, loaded now so
    that a missing file fails first) unless an `extractor` is given, IS over `splits` splits, 256 steps and 50
    samples per class (50,000 for 1000 classes), the paper's numbers beside. Reference statistics: an ADM-style .npz
    (`reference`), else those of prepared training data (`data`, by default the folder the run trained on)."""
    extract = extractor or load_inception(inception, device or join_processes())

    def reference_moments(model: nn.Module, run_config: dict | None = None) -> Moments:
        if reference is not None:
            return load_reference(reference)
        root = data or (run_config or {}).get("data", {}).get("data")
        if root is None:
            raise ValueError("the run does not say which data it trained on: pass --reference NPZ or --data DIR")
        return data_reference(Path(root), extract, cache=extractor is None, progress=progress)

    return Protocol("imagenet", extract, reference_moments, is_splits=splits, steps=256, per_class=50,
                    paper=PAPER_TABLE1, check=check_rgb)
