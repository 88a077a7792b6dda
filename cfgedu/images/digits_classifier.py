"""A small CNN digits classifier: the paper's FID/IS protocol at toy scale.

FID uses its penultimate features and IS its softmax, as Inception plays both roles on ImageNet. It is
trained once on the digits training split (a few seconds on a CPU) and cached under
$CFGEDU_CACHE (default ~/.cache/cfgedu), written atomically and read with weights_only=True.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core.io import atomic_torch_save, safe_torch_load
from .evaluation import Extractor, Protocol
from .metrics import FeatureStats, Moments

CACHE_VERSION = 1


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 16
    width: int = 16
    feature_dim: int = 128
    num_classes: int = 10
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    shift: int = 1  # random translation of up to `shift` pixels while training
    seed: int = 0


class DigitsClassifier(nn.Module):
    """conv-conv-pool twice, then a `feature_dim` hidden layer (the FID features) and the class logits."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * w * (config.image_size // 4) ** 2, config.feature_dim), nn.ReLU())
        self.logits = nn.Linear(config.feature_dim, config.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, S, S) in [−1, 1] -> (features (B, feature_dim), logits (B, num_classes))."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, self.config.image_size, self.config.image_size):
            raise ValueError(f"the digits classifier takes images of shape (B, 1, {self.config.image_size}, "
                             f"{self.config.image_size}), got {tuple(x.shape)}")
        features = self.body(x)
        return features, self.logits(features)


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate a batch by one random offset of up to ±shift pixels, filling with the background −1."""
    if shift == 0:
        return x
    dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()
    size = x.shape[-1]
    return F.pad(x, (shift,) * 4, value=-1.0)[..., dy:dy + size, dx:dx + size]


@torch.enable_grad()  # also when called to fill the cache from inside a no_grad extractor
def train_classifier(config: ClassifierConfig = ClassifierConfig(),
                     progress: bool = True) -> tuple[DigitsClassifier, float]:
    """Adam on cross-entropy over the training split; returns the model (eval mode) and its validation accuracy."""
    from ..data.digits import load_digits_split

    x, c = load_digits_split("train", config.image_size)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG: seed it without leaking
        torch.manual_seed(config.seed)
        model = DigitsClassifier(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, epochs=config.epochs,
                                                   steps_per_epoch=-(-len(c) // config.batch_size))
    for _ in tqdm(range(config.epochs), desc="digits classifier", disable=not progress, leave=False):
        for idx in torch.randperm(len(c), generator=generator).split(config.batch_size):
            loss = F.cross_entropy(model(random_shift(x[idx], config.shift, generator))[1], c[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return model, validation_accuracy(model)


@torch.no_grad()
def validation_accuracy(model: DigitsClassifier) -> float:
    from ..data.digits import load_digits_split

    x, c = load_digits_split("val", model.config.image_size)
    return (model(x)[1].argmax(1) == c).double().mean().item()


def cache_dir() -> Path:
    """$CFGEDU_CACHE, or ~/.cache/cfgedu."""
    return Path(os.environ.get("CFGEDU_CACHE") or Path.home() / ".cache" / "cfgedu")


def load_classifier(config: ClassifierConfig = ClassifierConfig(), progress: bool = True) -> DigitsClassifier:
    """The cached classifier for `config`, training and caching it first if needed (a few seconds)."""
    path = cache_dir() / f"digits_classifier_v{CACHE_VERSION}_{config.image_size}px_seed{config.seed}.pt"
    if path.is_file():
        try:
            record = safe_torch_load(path)
            if record.get("config") == asdict(config):
                model = DigitsClassifier(config)
                model.load_state_dict(record["state_dict"])
                return model.eval()
        except (ValueError, KeyError, RuntimeError, AttributeError):
            pass  # a stale or damaged cache file is rebuilt below
    model, accuracy = train_classifier(config, progress)
    atomic_torch_save({"config": asdict(config), "state_dict": model.state_dict(), "val_accuracy": accuracy}, path)
    return model


def digits_features(batch_size: int = 500) -> Extractor:
    """The extractor images (N, 1, S, S) in [−1, 1] -> (features (N, D), logits (N, 10)), with the cached
    classifier of the images' size S."""
    models = {}

    @torch.no_grad()
    def extract(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = images.shape[-1]
        if size not in models:
            models[size] = load_classifier(ClassifierConfig(image_size=size))
        parts = [models[size](chunk.float().cpu()) for chunk in images.split(batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return extract


def check_digits_fit(model: nn.Module) -> None:
    """The digits protocol scores 1-channel 8/16/32-pixel digits of 10 classes; any other network is refused."""
    from ..data.digits import NUM_CLASSES, SIZES

    shape = tuple(getattr(model.config, "data_shape", ()))
    if model.num_classes == NUM_CLASSES and shape in {(1, size, size) for size in SIZES}:
        return
    takes = f"{'x'.join(map(str, shape))} images" if len(shape) == 3 else "points, not images,"
    raise ValueError(f"this checkpoint's network takes {takes} with {model.num_classes} classes; the digits protocol "
                     f"needs 1-channel {'/'.join(map(str, SIZES))}-pixel digits with {NUM_CLASSES} classes: "
                     f"use --protocol imagenet --inception PATH for an ImageNet 64x64 checkpoint")


def split_at_model_size(split: str) -> Callable[[nn.Module], torch.Tensor]:
    """model -> the images (N, 1, S, S) of a digits split at the model's image size S."""
    from ..data.digits import load_digits_split

    def images(model: nn.Module) -> torch.Tensor:
        return load_digits_split(split, model.config.image_size)[0]

    return images


def digits_protocol(batch_size: int = 500) -> Protocol:
    """The toy-scale FID/IS protocol: the cached CNN of the model's image size plays Inception (features for FID,
    class logits for IS and accuracy), the validation split is the FID reference and the training split the pool
    of the real-data floor; one IS split, 128 steps, 100 samples per class."""
    extract, validation = digits_features(batch_size), split_at_model_size("val")

    def reference(model: nn.Module, run_config: dict | None = None) -> Moments:
        return FeatureStats.of(extract(validation(model))[0]).moments()

    return Protocol("digits", extract, reference, floor_pool=split_at_model_size("train"), class_logits=True,
                    check=check_digits_fit)
