"""The training setup of one run: TrainConfig, and which of its fields a resumed run may change."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.checks import check_choice, check_in_range, check_positive_int
from ..core.schedule import LogSNRSchedule

PROCESS_GROUP_TIMEOUT_S = 600.0  # a collective waits this long for a frozen or lost peer (torch's default: 30 min)


PRECISIONS = ("fp32", "bf16")


DEVICES = ("auto", "cpu", "cuda")


# TrainConfig fields a resumed run may change: they decide how the steps are computed, not which steps.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "grad_accum", "per_device_batch", "precision",
                     "compile", "channels_last", "device", "process_group_timeout_s")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run. batch_size is the global batch: summed over processes and micro-steps.

    Micro-batches: per_device_batch > 0 fixes the examples per process per micro-step and derives
    grad_accum = batch_size / (world_size · per_device_batch); otherwise grad_accum is used as given.
    """

    steps: int  # optimisation steps in all
    batch_size: int  # global batch
    lr: float = 3e-4  # AdamW learning rate after warm-up
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    ema_decay: float = 0.9999
    p_uncond: float = 0.1  # Algorithm 1: probability of training on the null label ∅
    lambda_min: float = -20.0  # p(λ) truncation
    lambda_max: float = 20.0
    seed: int = 0  # data order, noise, dropout and (via train_experiment) network initialisation
    grad_accum: int = 1  # micro-steps per step
    per_device_batch: int = 0  # > 0: examples per process per micro-step, grad_accum derived
    precision: str = "fp32"  # or "bf16": autocast on CUDA and on CPUs with bf16 instructions (else fp32)
    compile: bool = False  # torch.compile the network
    channels_last: bool = False  # channels-last memory format for 4-D inputs and weights
    device: str = "auto"  # "auto" (CUDA if available), "cpu" or "cuda"
    checkpoint_every: int = 0  # 0: only at the end
    log_every: int = 10  # steps per metrics.jsonl record
    process_group_timeout_s: float = PROCESS_GROUP_TIMEOUT_S  # DDP: how long a collective waits for a peer

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            check_positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "checkpoint_every", "per_device_batch", "seed"):
            _check_count(name, getattr(self, name))
        for name in ("lr", "process_group_timeout_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        check_in_range("weight_decay", self.weight_decay, 0.0, math.inf)
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a finite number > 0 or None (no clipping), got {self.grad_clip}")
        check_in_range("ema_decay", self.ema_decay, 0.0, 1.0)
        check_in_range("p_uncond", self.p_uncond, 0.0, 1.0)
        LogSNRSchedule(self.lambda_min, self.lambda_max)  # validates the λ range
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("device", self.device, DEVICES)
        if self.per_device_batch and self.grad_accum != 1:
            raise ValueError("set per_device_batch (grad_accum is then derived) or grad_accum, not both")

    def micro_batch(self, world_size: int) -> tuple[int, int]:
        """(examples per process per micro-step, micro-steps per step) when `world_size` processes train."""
        if self.per_device_batch:
            accum, rest = divmod(self.batch_size, world_size * self.per_device_batch)
            if rest or not accum:
                raise ValueError(f"batch_size {self.batch_size} is not a multiple of world_size {world_size} × "
                                 f"per_device_batch {self.per_device_batch}")
            return self.per_device_batch, accum
        size, rest = divmod(self.batch_size, world_size * self.grad_accum)
        if rest or not size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of world_size {world_size} × "
                             f"grad_accum {self.grad_accum}")
        return size, self.grad_accum

    def schedule(self) -> LogSNRSchedule:
        return LogSNRSchedule(self.lambda_min, self.lambda_max)
