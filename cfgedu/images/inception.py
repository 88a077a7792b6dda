"""FID and Inception score for image samples (SPEC 8), with torch-fidelity's Inception network.

The network is the TensorFlow 2015-12-05 Inception ported by torch-fidelity (agreement with the TF
reference ≈ 1e-6 relative FID). No package ships its weights: download
weights-inception-2015-12-05-6726825d.pth once and pass its path (`--inception PATH`) or set
CFGEDU_INCEPTION_WEIGHTS. torch-fidelity itself is the optional extra `imagenet`, installed with
`pip install --no-deps torch-fidelity` (its dependency on torchvision would replace a CPU torch with
a multi-GB CUDA build; the Inception module does not need torchvision).

FID = Fréchet distance of Gaussian fits to the 2048-d pool features; IS = exp(E KL(p(y|x) ‖ p(y)))
over the 1008 unbiased logits, the mean and std over 10 splits (torch-fidelity's defaults).
Features are accumulated as sums in float64, so shards on several ranks merge exactly.
"""
from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import check_positive_int
from ..core.io import atomic_write
from ..toy.metrics import frechet_gaussians, inception_score

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "CFGEDU_INCEPTION_WEIGHTS"

# An extractor maps uint8 images (B, 3, H, W) to (features (B, D), logits (B, K)), both float.
Extractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ---- feature extractors ---------------------------------------------------------------------------------------

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
        x = _check_images(images).float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
        pooled = F.adaptive_avg_pool2d(x, 4).flatten(1)  # (B, 48)
        features = torch.tanh(pooled @ self.project)  # (B, D)
        return features, features @ self.classify  # (B, D), (B, K)


class InceptionExtractor(nn.Module):
    """torch-fidelity's TF-compatible Inception v3: 2048 pool features and 1008 unbiased logits."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = _check_images(images).to(next(self.network.parameters()).device)
        return self.network(images)  # resizes to 299 x 299 like TF1 internally


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (B, 3, H, W) RGB in 0..255, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} of shape {tuple(getattr(images, 'shape', ()))}")
    return images


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


# ---- statistics -----------------------------------------------------------------------------------------------

@dataclass
class FeatureStats:
    """Running float64 sums of features: count, Σx (D,) and Σxxᵀ (D, D); mean and unbiased covariance."""

    count: int = 0
    total: torch.Tensor | None = None
    outer: torch.Tensor | None = None

    def _zeros(self, dim: int) -> None:
        if self.total is None:
            self.total = torch.zeros(dim, dtype=torch.float64)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> "FeatureStats":
        x = features.detach().to("cpu", torch.float64)  # (B, D)
        self._zeros(x.shape[1])
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Pool the sums of another shard (what an all-reduce does across ranks)."""
        if other.count:
            self._zeros(other.total.shape[0])
            self.count += other.count
            self.total += other.total
            self.outer += other.outer
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def cov(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return (self.outer - self.count * torch.outer(self.mean, self.mean)) / (self.count - 1)

    def save_npz(self, path: Path) -> Path:
        """Write ADM-style reference statistics atomically: mu (D,), sigma (D, D)."""
        mu, sigma = self.mean.numpy(), self.cov.numpy()
        return atomic_write(Path(path), lambda handle: np.savez(handle, mu=mu, sigma=sigma))


def load_reference(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) from an ADM-style .npz (e.g. VIRTUAL_imagenet64_labeled.npz) or one saved by save_npz."""
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


def fid_from_stats(stats: FeatureStats, reference: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Fréchet distance between the Gaussian fit of `stats` and reference (mu, sigma)."""
    mu, sigma = reference
    if mu.shape != stats.mean.shape:
        raise ValueError(f"features have dimension {stats.mean.shape[0]} but the reference has {mu.shape[0]}: "
                         f"compute both with the same extractor")
    return frechet_gaussians(stats.mean, stats.cov, mu, sigma)


def inception_score_splits(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and (population) std of the IS over `splits` consecutive equal splits of the logits (N, K)."""
    check_positive_int("splits", splits)
    if logits.shape[0] < splits:
        raise ValueError(f"need at least {splits} samples for {splits} IS splits, got {logits.shape[0]}")
    probs = torch.softmax(logits.double(), dim=1)
    scores = torch.tensor([inception_score(part) for part in torch.tensor_split(probs, splits)])
    return scores.mean().item(), scores.std(correction=0).item()


# ---- sharded evaluation ---------------------------------------------------------------------------------------

def class_balanced_labels(n: int, num_classes: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of the n labels 0, 1, ..., K-1, 0, 1, ...: sample i has class i mod K and lives on
    rank i mod world_size, so the ranks together cover every class n/K times (± 1)."""
    check_positive_int("n", n)
    check_positive_int("num_classes", num_classes)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    return torch.arange(rank, n, world_size) % num_classes


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device():
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce_stats(stats: FeatureStats, dim: int, world_size: int) -> FeatureStats:
    """Sum every rank's count, Σx and Σxxᵀ (a rank with no samples contributes zeros)."""
    if world_size == 1:
        return stats
    import torch.distributed as dist

    stats._zeros(dim)
    sums = torch.cat([torch.tensor([float(stats.count)], dtype=torch.float64), stats.total, stats.outer.flatten()])
    sums = sums.to(_collective_device())
    dist.all_reduce(sums)
    sums = sums.cpu()
    return FeatureStats(int(sums[0].item()), sums[1:1 + dim], sums[1 + dim:].view(dim, dim))


def _gather_in_sample_order(logits: torch.Tensor, count: int, world_size: int) -> torch.Tensor:
    """Every rank's logits, interleaved back into the global order (sample i lives on rank i mod world_size)."""
    if world_size == 1:
        return logits
    import torch.distributed as dist

    device = _collective_device()
    rows = torch.zeros(-(-count // world_size), logits.shape[1], dtype=logits.dtype)  # padded to the largest shard
    rows[: len(logits)] = logits
    gathered = [torch.empty_like(rows, device=device) for _ in range(world_size)]
    dist.all_gather(gathered, rows.to(device))
    return torch.stack([g.cpu() for g in gathered], dim=1).flatten(0, 1)[:count]  # (count, K)


def evaluate_generator(generate: Callable[[torch.Tensor], torch.Tensor], n: int, num_classes: int,
                       extractor: Extractor, reference: tuple[torch.Tensor, torch.Tensor], *, batch_size: int = 250,
                       splits: int = 10, progress: bool = True) -> dict:
    """FID and IS of n class-balanced samples; generate(labels (B,)) returns uint8 images (B, 3, H, W).

    Under torch.distributed each rank generates its share (class_balanced_labels) and the statistics
    are pooled; every rank returns the same numbers.
    """
    from tqdm.auto import tqdm

    check_positive_int("batch_size", batch_size)
    rank, world_size = _distributed()
    if n < world_size:
        raise ValueError(f"n = {n} samples cannot be shared out between {world_size} ranks")
    labels = class_balanced_labels(n, num_classes, rank, world_size)
    stats, logits = FeatureStats(), []
    for chunk in tqdm(labels.split(batch_size), desc="FID/IS samples", disable=not progress or rank != 0):
        features, chunk_logits = extractor(generate(chunk))
        stats.update(features)
        logits.append(chunk_logits.detach().float().cpu())
    logits = torch.cat(logits)
    stats = _all_reduce_stats(stats, features.shape[1], world_size)
    all_logits = _gather_in_sample_order(logits, stats.count, world_size)
    is_mean, is_std = inception_score_splits(all_logits, splits)
    return {"n": stats.count, "fid": fid_from_stats(stats, reference), "is": is_mean, "is_std": is_std}


def reference_stats_from_data(root: Path, extractor: Extractor, *, split: str = "train", limit: int | None = None,
                              batch_size: int = 250, progress: bool = True) -> FeatureStats:
    """Feature statistics of the first `limit` (default all) images of a prepared ImageNet 64x64 split.

    Under torch.distributed the batches are shared out between ranks and the sums pooled.
    """
    from tqdm.auto import tqdm

    from ..data.imagenet64 import load_split

    rank, world_size = _distributed()
    images, _ = load_split(root, split)
    count = len(images) if limit is None else min(check_positive_int("limit", limit), len(images))
    starts = range(rank * batch_size, count, world_size * batch_size)
    stats = FeatureStats()
    for start in tqdm(starts, desc="reference features", disable=not progress or rank != 0):
        stats.update(extractor(torch.from_numpy(np.array(images[start:min(start + batch_size, count)])))[0])
    dim = extractor(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))[0].shape[1]
    return _all_reduce_stats(stats, dim, world_size)


# ---- the paper's Table 1: FID/IS of a checkpoint for several w --------------------------------------------------

# Ho & Salimans (2022), Table 1 (ImageNet 64x64, 50,000 samples): w -> (FID, IS) for p_uncond 0.1, 0.2, 0.5.
PAPER_TABLE1 = {
    p_uncond: dict(zip((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0), zip(fids, inception)))
    for p_uncond, fids, inception in (
        (0.1, (1.8, 1.55, 2.04, 3.03, 4.3, 5.74, 7.19, 8.62, 10.08, 11.41, 12.6, 21.03, 24.83, 26.22),
         (53.71, 66.11, 78.91, 92.8, 106.2, 119.3, 131.1, 141.8, 151.6, 161, 170.1, 225.5, 250.4, 260.2)),
        (0.2, (1.8, 1.62, 2.1, 2.93, 4, 5.19, 6.48, 7.73, 8.9, 10.09, 11.21, 18.79, 22.36, 23.84),
         (52.9, 64.58, 76.99, 88.64, 101.11, 112.15, 122.13, 131.6, 140.82, 150.26, 158.29, 212.98, 237.65, 248.97)),
        (0.5, (2.21, 1.91, 2.08, 2.65, 3.44, 4.34, 5.27, 6.23, 7.25, 8.21, 9.13, 16.16, 19.75, 21.48),
         (47.61, 56.1, 65.6, 74.92, 84.27, 92.95, 102, 109.8, 116.9, 124.6, 131.1, 183, 208.9, 225.1)))
}


def guided_generator(model: nn.Module, w: float, *, steps: int = 256, v: float = 0.3,
                     seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """generate(labels) -> uint8 images: Algorithm 2 with CFG strength w (s = 1 + w) on the model's device,
    x̂ clipped to [-1, 1] as in ADM. Batch k on a rank uses the seed (seed, rank, k), the same for every w."""
    from ..data.imagenet64 import to_uint8
    from .sampling import sample_images
    from ..core.tensors import derive_seed

    rank, _ = _distributed()
    batches = iter(range(1 << 62))

    def generate(labels: torch.Tensor) -> torch.Tensor:
        seed_k = derive_seed(seed, rank, next(batches))
        return to_uint8(sample_images(model, labels, w, steps=steps, v=v, seed=seed_k, batch_size=len(labels),
                                      clip_x=1.0))

    return generate


def guidance_sweep(model: nn.Module, ws: list[float], n: int, extractor: Extractor,
                   reference: tuple[torch.Tensor, torch.Tensor], *, steps: int = 256, v: float = 0.3,
                   batch_size: int = 250, seed: int = 0, splits: int = 10, progress: bool = True) -> list[dict]:
    """One row {"w", "n", "fid", "is", "is_std"} per guidance strength: the columns of Table 1."""
    return [{"w": float(w), **evaluate_generator(guided_generator(model, w, steps=steps, v=v, seed=seed), n,
                                                 model.num_classes, extractor, reference, batch_size=batch_size,
                                                 splits=splits, progress=progress)}
            for w in ws]


def table1_markdown(rows: list[dict], p_uncond: float = 0.1) -> str:
    """A Markdown table shaped like the paper's Table 1, with the paper's numbers beside ours where it has w."""
    if p_uncond not in PAPER_TABLE1:
        raise ValueError(f"the paper reports p_uncond {', '.join(map(str, PAPER_TABLE1))}; got {p_uncond}")
    lines = [f"| w | s = 1 + w | FID | IS | paper FID (p_uncond {p_uncond}) | paper IS |", "|---|---|---|---|---|---|"]
    for row in rows:
        paper = PAPER_TABLE1[p_uncond].get(round(row["w"], 6))
        theirs = f"{paper[0]:g} | {paper[1]:g}" if paper else "– | –"
        lines.append(f"| {row['w']:g} | {1 + row['w']:g} | {row['fid']:.2f} | {row['is']:.2f} ± {row['is_std']:.2f} "
                     f"| {theirs} |")
    return "\n".join(lines)


def _join_processes() -> torch.device:
    """This process's device; under torchrun (WORLD_SIZE > 1) also joins the process group (NCCL or gloo)."""
    from ..engine.processes import join_process_group

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else \
        torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        join_process_group(device)
    return device


def data_reference(root: Path, extractor: Extractor, *, cache: bool = True,
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of the features of a prepared training split; with `cache` (for the Inception network
    only) they are kept in ROOT/inception_train_stats.npz and read from there next time."""
    path = Path(root) / "inception_train_stats.npz"
    if cache and path.is_file():
        return load_reference(path)
    stats = reference_stats_from_data(root, extractor, progress=progress)
    if cache and _distributed()[0] == 0:
        stats.save_npz(path)
    return stats.mean, stats.cov


def evaluate_run(run: Path, ws: list[float], n: int = 50_000, *, inception: str | Path | None = None,
                 reference: str | Path | None = None, data: str | Path | None = None, steps: int = 256,
                 v: float = 0.3, batch_size: int = 250, seed: int = 0, splits: int = 10,
                 extractor: Extractor | None = None, progress: bool = True) -> dict:
    """Table 1 for a training folder: FID/IS of n class-balanced samples per w from its EMA weights.

    The features come from the Inception network (`inception` or $CFGEDU_INCEPTION_WEIGHTS) unless an
    `extractor` is given. Reference statistics: an ADM-style .npz (`reference`), else those of the run's
    prepared training data (`data`, by default the folder the run trained on). Under torchrun each
    process takes its share of the samples.
    """
    from ..engine.runs import load_checkpoint_model

    run = Path(run).parent if Path(run).suffix == ".pt" else Path(run)  # the folder or its checkpoint.pt
    device, inception_features = _join_processes(), extractor is None
    extractor = extractor or load_inception(inception, device)  # fails early when the weights are missing
    model = load_checkpoint_model(run / "checkpoint.pt", use_ema=True).to(device)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    if reference is not None:
        stats = load_reference(reference)
    else:
        root = data or config.get("data", {}).get("data")
        if root is None:
            raise ValueError(f"{run} does not say which data it trained on: pass --reference NPZ or --data DIR")
        stats = data_reference(Path(root), extractor, cache=inception_features, progress=progress)
    rows = guidance_sweep(model, ws, n, extractor, stats, steps=steps, v=v, batch_size=batch_size, seed=seed,
                          splits=splits, progress=progress)
    p_uncond = config.get("train", {}).get("p_uncond", 0.1)
    return {"rows": rows, "p_uncond": p_uncond, "steps": steps, "v": v,
            "table": table1_markdown(rows, p_uncond if p_uncond in PAPER_TABLE1 else 0.1)}


def write_evaluation(result: dict, out: Path, checkpoint: Path) -> str:
    """Write OUT/eval.json and OUT/eval.md (the Table-1-shaped table) on rank 0; return the table."""
    from ..core.io import atomic_write_json, atomic_write_text

    if _distributed()[0] == 0:
        out = Path(out)
        atomic_write_json({"checkpoint": str(checkpoint), **{k: v for k, v in result.items() if k != "table"}},
                          out / "eval.json")
        atomic_write_text(result["table"] + "\n", out / "eval.md")
    return result["table"]
