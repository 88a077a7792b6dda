"""A small CNN digits classifier: the paper's FID/IS protocol at toy scale.

FID uses its penultimate features and IS its softmax, as Inception plays both roles on ImageNet. It is
trained once on the digits training split (a few seconds on a CPU) and cached under
$CFGEDU_CACHE (default ~/.cache/cfgedu), written atomically and read with weights_only=True.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core.io import atomic_torch_save, safe_torch_load

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


def train_classifier(config: ClassifierConfig = ClassifierConfig(), progress: bool = True) -> tuple[DigitsClassifier, float]:
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


def digits_features(config: ClassifierConfig = ClassifierConfig(), batch_size: int = 500):
    """A feature extractor images (N, 1, S, S) -> (features (N, D), logits (N, K)) for image_eval."""
    model = load_classifier(config)

    @torch.no_grad()
    def extract(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [model(chunk.float().cpu()) for chunk in images.split(batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return extract


def digits_protocol(image_size: int = 16):
    """The toy-scale FID/IS protocol: the cached CNN's features, the validation split as FID reference and the
    training split as the pool of the real-data floor."""
    from ..data.digits import load_digits_split
    from .evaluation import EvalProtocol

    return EvalProtocol(digits_features(ClassifierConfig(image_size=image_size)),
                        load_digits_split("val", image_size)[0], load_digits_split("train", image_size)[0], 10)
