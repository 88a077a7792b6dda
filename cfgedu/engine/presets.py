"""Named experiments: `python -m cfgedu train --preset NAME` runs PRESETS[NAME](), adjusted by `--key value`
overrides (cfgedu.core.configs.apply_overrides) or dataclasses.replace. Each preset is a plain function
returning an Experiment; the network configs are written out in full here, where they are chosen."""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable

from ..core.checks import check_positive_int
from ..core.configs import apply_overrides
from ..data.digits import DigitsData
from ..data.imagenet64 import ImageNet64Source
from ..data.toy import MixtureSamples, ToyMixture
from ..nets.classifier import ClassifierConfig
from ..nets.mlp import MLPConfig
from ..nets.unet import UNetConfig
from .config import TrainConfig
from .experiment import Experiment

TOY_STEPS = 3000
CLASSIFIER_STEPS = 1000


def toy_ema_decay(steps: int) -> float:
    """An EMA that forgets the initial weights within a short run: 1 − 20/steps (e^{−20} of them left), at most
    0.995."""
    return min(0.995, max(0.0, 1 - 20 / check_positive_int("steps", steps)))


def _toy_train(steps: int = TOY_STEPS) -> TrainConfig:
    """The toy's training setup (SPEC §4.5): batch 1024 of fresh draws, AdamW at 2e-3 after a short warm-up."""
    return TrainConfig(steps=steps, batch_size=1024, lr=2e-3, warmup_steps=100, grad_clip=1.0,
                       ema_decay=toy_ema_decay(steps), p_uncond=0.1, log_every=50)


def toy() -> Experiment:
    """The 3×128 SiLU ε-MLP on fresh draws from the three-Gaussian toy, 3000 steps (about a minute on a CPU)."""
    return Experiment("mlp", MLPConfig(), ToyMixture(), _toy_train())


def toy_energy() -> Experiment:
    """The toy's energy-parameterised twin: ε = σ·∇_z U, so every CFG field it gives is a gradient."""
    return dataclasses.replace(toy(), kind="energy")


def toy_classifier() -> Experiment:
    """The noisy classifier p_φ(c | z_λ, λ) that classifier guidance needs (Sec. 3.1): a 3×128 SiLU MLP on the toy's
    fresh draws, trained by cross-entropy on Algorithm 1's forward process (labels never dropped, so p_uncond is 0),
    1000 steps (about a third of the toy preset's time; within 0.002 of the exact posterior's accuracy)."""
    train = dataclasses.replace(_toy_train(CLASSIFIER_STEPS), p_uncond=0.0)
    return Experiment("classifier", ClassifierConfig(), ToyMixture(), train)


def toy_experiment(kind: str = "mlp", steps: int | None = None, **overrides) -> Experiment:
    """The toy preset of `kind` ("mlp", "energy" or "classifier") for `steps` steps (None: the preset's own) with its
    EMA fitted to that length (toy_ema_decay), and any other field set by keyword (apply_overrides: p_uncond=0.5,
    width=64, ...)."""
    base = {"mlp": toy, "energy": toy_energy, "classifier": toy_classifier}
    if kind not in base:
        raise ValueError(f"the toy network kind must be one of {', '.join(base)}; got {kind!r}")
    experiment = base[kind]()
    steps = experiment.train.steps if steps is None else steps
    return apply_overrides(experiment, {"steps": steps, "ema_decay": toy_ema_decay(steps), **overrides})


def toy_tiny() -> Experiment:
    """A 2-layer, 32-wide ε-MLP on 384 toy points for 200 steps: seconds on a CPU."""
    return Experiment("mlp", MLPConfig(num_classes=3, width=32, depth=2, class_dim=8), MixtureSamples(),
                      TrainConfig(steps=200, batch_size=64, lr=2e-3, ema_decay=0.99, p_uncond=0.2,
                                  checkpoint_every=50, log_every=20))


def digits() -> Experiment:
    """A 3.9M-parameter ε-U-Net on scikit-learn's digits at 16x16: 1000 steps of 64 images (64k images,
    1.04 GFLOP each to train), aimed at under 10 minutes on an idle 2-core CPU. Most parameters sit at 8x8 and
    4x4, where attention is: they buy class fidelity for less compute than a wider 16x16 level."""
    network = UNetConfig(image_size=16, in_channels=1, num_classes=10, model_channels=32, channel_mult=(1, 3, 4),
                         num_res_blocks=1, attention_resolutions=(8, 4), head_channels=32, dropout=0.1, norm_groups=8)
    return Experiment("unet", network, DigitsData(size=16),
                      TrainConfig(steps=1000, batch_size=64, lr=1e-3, warmup_steps=100, grad_clip=1.0,
                                  ema_decay=0.99, p_uncond=0.1, checkpoint_every=100, log_every=25))


def imagenet64() -> Experiment:
    """The paper's 64x64 run (SPEC 7.1-7.2): ADM-64 (guided-diffusion's README flags) predicting ε with a null class
    row, λ ∈ [−20, 20], p_uncond 0.1 (0.2, 0.5 via --p_uncond), global batch 2048 (64 per GPU, gradient
    accumulation when fewer than 32 GPUs), lr 3e-4, EMA 0.9999, dropout 0.1, 400k steps, bf16 on CUDA. Sample it
    with v = 0.3 and T = 256. Warm-up (1000 steps) and clipping (1.0) follow the authors' distillation config,
    which the paper does not confirm."""
    network = UNetConfig(image_size=64, in_channels=3, num_classes=1000, model_channels=192,
                         channel_mult=(1, 2, 3, 4), num_res_blocks=3, attention_resolutions=(32, 16, 8),
                         head_channels=64, dropout=0.1, norm_groups=32)
    return Experiment("unet", network, ImageNet64Source("data/imagenet64"),
                      TrainConfig(steps=400_000, batch_size=2048, per_device_batch=64, lr=3e-4, warmup_steps=1000,
                                  grad_clip=1.0, ema_decay=0.9999, p_uncond=0.1, lambda_min=-20.0, lambda_max=20.0,
                                  precision="bf16", checkpoint_every=5000, log_every=100))


def imagenet64_tiny() -> Experiment:
    """imagenet64 shrunk to an imagenet64-shaped network (3x64x64 inputs, 1000 classes, ~80k parameters, attention
    only in the middle block) for 2 CPU steps of 2 images: the whole ImageNet path in seconds."""
    full = imagenet64()
    network = dataclasses.replace(full.model, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                  attention_resolutions=(), head_channels=8, norm_groups=4, dropout=0.0)
    train = dataclasses.replace(full.train, steps=2, batch_size=2, per_device_batch=1, warmup_steps=0,
                                precision="fp32", device="cpu", checkpoint_every=1, log_every=1)
    return dataclasses.replace(full, model=network, train=train)


PRESETS: dict[str, Callable[[], Experiment]] = {
    "toy": toy, "toy-energy": toy_energy, "toy-classifier": toy_classifier, "toy-tiny": toy_tiny, "digits": digits,
    "imagenet64": imagenet64, "imagenet64-tiny": imagenet64_tiny,
}


def preset(name: str) -> Experiment:
    """The Experiment registered as `name` in PRESETS."""
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
