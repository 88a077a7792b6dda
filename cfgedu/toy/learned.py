"""Learned scores on the three-Gaussian toy: Algorithm 1 through the shared training loop, and how close
the learned ε_θ gets to the exact ε* of the mixture.

The error is E‖ε_θ(z, λ, c) − ε*(z, λ, c)‖² / E‖ε*(z, λ, c)‖² with λ ~ p(λ); "cond" uses the real classes and
z ~ p_λ(z|c), "uncond" the null label ∅ and z ~ p_λ(z) (the same draws, since (x, c) ~ p(x, c)).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..core.checks import check_choice, check_finite, check_in_range, check_positive_int
from ..data.toy import ToyData, draw_labelled
from .mixture import GaussianMixture
from ..core.guidance import EpsModel
from ..core.io import atomic_write_json
from ..nets.registry import build_model, save_model
from ..nets.mlp import MLPConfig
from ..core.schedule import LogSNRSchedule, q_sample
from ..core.tensors import make_generator
from ..engine.config import TrainConfig
from ..engine.loop import train

MODELS = ("mlp", "energy")

# The toy preset (SPEC §4.5): 3×128 SiLU MLP, batch 1024, AdamW at 2e-3 after a short warm-up.
TOY_TRAIN = {"steps": 3000, "batch_size": 1024, "lr": 2e-3, "warmup_steps": 100, "grad_clip": 1.0, "log_every": 50}


def toy_ema_decay(steps: int) -> float:
    """An EMA that forgets the initial weights in a short run: 1 − 20/steps (e^{−20} of them left), at most 0.995."""
    return min(0.995, max(0.0, 1 - 20 / steps))


def eps_relative_errors(eps_model: EpsModel, mixture: GaussianMixture, points: int = 20_000, seed: int = 12345,
                        schedule: LogSNRSchedule = LogSNRSchedule(), chunk: int = 8192,
                        lam: float | None = None) -> dict[str, float]:
    """{"cond", "uncond"}: E‖ε_θ − ε*‖² / E‖ε*‖² on `points` fresh draws of λ ~ p(λ) (or the fixed `lam`),
    (x, c) ~ p(x, c) and ε ~ N(0, I)."""
    points = check_positive_int("points", points)
    generator = make_generator(seed)
    x, c = draw_labelled(mixture, points, generator)
    if lam is None:
        lam = schedule.sample_lam(points, generator, dtype=torch.float64)
    else:
        lam = torch.full((points,), check_finite("lam", lam), dtype=torch.float64)
    z = q_sample(x.double(), lam, torch.randn(points, mixture.dim, generator=generator, dtype=torch.float64))
    null = torch.full_like(c, mixture.num_classes)
    return {name: _relative_error(eps_model, mixture, z, lam, labels, chunk)
            for name, labels in (("cond", c), ("uncond", null))}


def _relative_error(eps_model, mixture, z, lam, labels, chunk) -> float:
    squared_error, squared_target = 0.0, 0.0
    for part in zip(z.split(chunk), lam.split(chunk), labels.split(chunk)):
        exact = mixture.eps(*part)  # float64 (b, 2)
        with torch.no_grad():
            learned = eps_model(part[0].float(), part[1].float(), part[2]).double()
        squared_error += ((learned - exact) ** 2).sum().item()
        squared_target += (exact**2).sum().item()
    return squared_error / squared_target


def toy_train_config(steps: int, p_uncond: float, seed: int, **overrides) -> TrainConfig:
    """The training engine's TrainConfig for the toy preset, with any field overridden."""
    return TrainConfig(**{**TOY_TRAIN, "steps": steps, "p_uncond": p_uncond, "seed": seed,
                          "ema_decay": toy_ema_decay(steps), **overrides})


def train_toy(model: str = "mlp", p_uncond: float = 0.1, steps: int = TOY_TRAIN["steps"], seed: int = 0,
              progress: bool = True, *, net: MLPConfig | None = None, eval_points: int = 20_000,
              on_log: Callable[[dict], None] | None = None, **train_overrides):
    """Train the toy ε-MLP ("mlp") or energy MLP ("energy") with Algorithm 1 on fresh mixture draws, then
    measure the ε error of its EMA weights. Returns (ema_model in eval mode, metrics dict).

    metrics: eps_rel_error_cond, eps_rel_error_uncond, train_seconds, loss_curve ([step, loss] pairs),
    train_config (the TrainConfig used, as a dict). Other TrainConfig fields (batch_size, lr, ema_decay,
    ...) can be overridden by keyword; on_log receives the training loop's log records as they come.
    """
    check_choice("model", model, MODELS)
    check_in_range("p_uncond", p_uncond, 0.0, 1.0)
    steps = check_positive_int("steps", steps)
    mixture = GaussianMixture.three_gaussians()
    net = net or MLPConfig(num_classes=mixture.num_classes, data_dim=mixture.dim)
    with torch.random.fork_rng(devices=[]):  # nn.Linear initialises from the global RNG: seed it locally
        torch.manual_seed(seed)
        network = build_model(model, vars(net))
    config = toy_train_config(steps, p_uncond, seed, **train_overrides)
    result = train(network, ToyData(mixture, seed), config, kind=model, progress=progress, on_log=on_log)
    ema = result.ema.eval()
    errors = eps_relative_errors(ema, mixture, eval_points)
    return ema, {"model": model, "p_uncond": p_uncond, "steps": result.step, "seed": seed,
                 "eps_rel_error_cond": errors["cond"], "eps_rel_error_uncond": errors["uncond"],
                 "eval_points": eval_points, "train_seconds": result.seconds,
                 "loss_curve": [[record["step"], record["loss"]] for record in result.history],
                 "train_config": asdict(config)}


def write_toy_run(out_dir: Path, *, model: str = "mlp", **kwargs) -> dict:
    """train_toy(model, **kwargs), then out_dir/model.pt (EMA weights, weights-only loadable), config.json
    (network, training setup, mixture) and metrics.json; returns the metrics."""
    ema, metrics = train_toy(model, **kwargs)
    out_dir = Path(out_dir)
    save_model(out_dir / "model.pt", ema, model)
    atomic_write_json({"kind": model, "model": asdict(ema.config), "train": metrics.pop("train_config"),
                       "mixture": GaussianMixture.three_gaussians().to_dict()}, out_dir / "config.json")
    atomic_write_json(metrics, out_dir / "metrics.json")
    return metrics
