"""One training loop for every cfgedu network: Algorithm 1 of Ho & Salimans (2022), from the 2D toy to ImageNet.

λ ~ p(λ), labels dropped to ∅ with probability p_uncond, the unweighted ε-MSE (Eq. 5); AdamW with a linear
learning-rate warm-up, gradient clipping and an EMA of the weights; bf16 autocast on CUDA; DDP under torchrun;
atomic checkpoints and exact resume.

Every random draw is a pure function of (seed, step, position in the global batch): the DataSource hands out
the examples, and the noise of a step (dropped labels, λ, ε) is drawn here for the whole global batch and
sliced. So a run resumed after a crash, split over more processes, or accumulated over micro-batches takes
the same optimisation steps, up to the order of floating-point sums. (Dropout inside a network draws from
the global generator, which is reseeded per (seed, step, micro, rank) and restored afterwards: exact on
resume, but a different split gives different dropout masks.)
"""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ..core.checks import check_choice, check_in_range, check_positive_int
from ..core.io import atomic_torch_save, atomic_write_json, atomic_write_text, first_sentence, safe_torch_load
from ..nets.registry import (MODEL_ENTRIES, build_model, check_entries, check_state_dict, model_record, rebuild_model,
                   saved_config)
from ..core.schedule import LogSNRSchedule, q_sample
from ..core.tensors import make_generator

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG_JSON = "config.json"
LOCK = ".train.lock"  # flock'ed by the process that writes a run folder, for as long as it trains
PROCESS_GROUP_TIMEOUT_S = 600.0  # a collective waits this long for a frozen or lost peer (torch's default: 30 min)
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
# TrainConfig fields a resumed run may change: they decide how the steps are computed, not which steps.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "grad_accum", "per_device_batch", "precision",
                     "compile", "channels_last", "device", "process_group_timeout_s")
_NOISE_STREAM, _DROPOUT_STREAM, _INIT_STREAM = 1, 2, 3


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
    precision: str = "fp32"  # or "bf16": autocast on CUDA (fp32 on the CPU)
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


class DataSource(Protocol):
    """Training examples as a pure function of (seed, step, micro, rank), so resume is exact.

    A source that slices one global batch per step at offset (micro·world_size + rank)·size gives the same
    step for any split of the batch over processes and micro-steps (see TensorData).
    """

    num_classes: int
    data_shape: tuple[int, ...]

    def batch(self, step: int, micro: int, rank: int, world_size: int, size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The local (x, c): x of shape (size, *data_shape), c of shape (size,) in 0..num_classes-1."""


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module
    history: list[dict]
    seconds: float  # spent by this call (metrics.jsonl's `seconds` also counts the runs it resumed)
    step: int
    resumed_from: int = 0  # the checkpoint's step (0: a fresh run); equal to `step` when there was nothing to do


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of the integers given (a hash, so nearby keys are unrelated)."""
    digest = hashlib.blake2b(repr(tuple(int(key) for key in keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def slot_offset(micro: int, rank: int, world_size: int, size: int) -> int:
    """Where the local batch of (micro, rank) starts in the global batch of its step."""
    return (micro * world_size + rank) * size


@dataclass
class TensorData:
    """An in-memory dataset as a DataSource: each step shuffles it with a generator seeded by (seed, step)
    and hands (micro, rank) its slot of that order; the order wraps into a fresh shuffle when a global
    batch is larger than the dataset."""

    x: torch.Tensor  # (N, *data_shape)
    c: torch.Tensor  # (N,) labels in 0..num_classes-1
    num_classes: int
    seed: int = 0

    def __post_init__(self):
        if self.x.ndim < 2 or self.c.shape != (self.x.shape[0],) or self.c.dtype != torch.long:
            raise ValueError(f"TensorData needs x of shape (N, *data_shape) and long labels c of shape (N,); "
                             f"got {tuple(self.x.shape)} and {tuple(self.c.shape)} {self.c.dtype}")
        if self.c.numel() and not 0 <= int(self.c.min()) <= int(self.c.max()) < self.num_classes:
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}")

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def batch(self, step, micro, rank, world_size, size):
        start = slot_offset(micro, rank, world_size, size)
        generator = make_generator(derive_seed(self.seed, step))
        n = self.x.shape[0]
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-(start + size) // n))])
        index = order[start:start + size]
        return self.x[index], self.c[index]


@dataclass
class StepNoise:
    """Algorithm 1's draws for a batch: labels dropped to ∅ (step 2), λ ~ p(λ) (step 3), ε ~ N(0, I) (step 4)."""

    drop: torch.Tensor  # (B,) bool
    lam: torch.Tensor  # (B,)
    eps: torch.Tensor  # (B, *data_shape)

    def slice(self, start: int, size: int) -> "StepNoise":
        return StepNoise(self.drop[start:start + size], self.lam[start:start + size], self.eps[start:start + size])


def draw_noise(batch: int, data_shape: tuple[int, ...], config: TrainConfig, generator: torch.Generator) -> StepNoise:
    """The draws of cfgedu.core.losses.diffusion_loss, in its order, so a whole batch gets exactly its noise."""
    device = generator.device
    drop = torch.rand(batch, generator=generator, device=device) < config.p_uncond
    lam = config.schedule().sample_lam(batch, generator, device=device)
    eps = torch.randn((batch, *data_shape), generator=generator, device=device)
    return StepNoise(drop, lam, eps)


def algorithm1_loss(eps_model, x: torch.Tensor, c: torch.Tensor, noise: StepNoise, null_label: int) -> torch.Tensor:
    """Mean of ‖ε_θ(z_λ, c̃) − ε‖² over all elements, z_λ = α_λ x + σ_λ ε, c̃ = ∅ where noise.drop (Eq. 5)."""
    c = torch.where(noise.drop, torch.full_like(c, null_label), c)
    z = q_sample(x, noise.lam, noise.eps)
    return torch.mean((eps_model(z, noise.lam, c).float() - noise.eps) ** 2)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up to config.lr over the first warmup_steps steps (step 0 takes lr/warmup_steps), then constant."""
    return config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.lr


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers are copied."""
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


# ---------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _Processes:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # train() created the process group and destroys it at the end

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use device 'auto' or 'cpu'")
    if config.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def _start_processes(config: TrainConfig) -> _Processes:
    """One process, or the torchrun group described by RANK/WORLD_SIZE/LOCAL_RANK (NCCL on CUDA, else gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not dist.is_initialized():
        return _Processes(0, 1, _resolve_device(config, 0), False)
    device = _resolve_device(config, int(os.environ.get("LOCAL_RANK", "0")))
    owns_group = join_process_group(device, config.process_group_timeout_s)
    return _Processes(dist.get_rank(), dist.get_world_size(), device, owns_group)


def join_process_group(device: torch.device, timeout_s: float = PROCESS_GROUP_TIMEOUT_S) -> bool:
    """Bind this process to `device` and join torchrun's group (NCCL on CUDA, else gloo), unless a group exists;
    returns whether this call created it (and so should destroy it). Collectives fail after `timeout_s` seconds."""
    if dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return True


def _mean_over_processes(value: torch.Tensor, processes: _Processes) -> torch.Tensor:
    if processes.world_size > 1:
        dist.all_reduce(value)  # SUM: gloo has no AVG
        value = value / processes.world_size
    return value


# ---------------------------------------------------------------------------------------------- files


_WHAT = "cfgedu training checkpoint"
# entry -> (what it must be, test); log_window and seconds are absent from older checkpoints
_ENTRY_TYPES = {
    "step": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "train_config": ("a dict", lambda v: isinstance(v, dict)),
    "optimizer": ("a dict", lambda v: isinstance(v, dict)),
    "log_window": ("a [loss, steps] pair", lambda v: isinstance(v, (list, tuple)) and len(v) == 2),
    "seconds": ("a finite number >= 0", lambda v: isinstance(v, (int, float)) and 0 <= v < math.inf),
}


def _check_checkpoint(checkpoint, path: Path) -> dict:
    """A training checkpoint's entries are all there and of their types (the weights are checked against a network)."""
    check_entries(checkpoint, ("model", "ema", "optimizer", "step", "train_config"), path, _WHAT)
    check_entries(checkpoint["model"], MODEL_ENTRIES, path, _WHAT, where="model.")
    for key, (what, fits) in _ENTRY_TYPES.items():
        if key in checkpoint and not fits(checkpoint[key]):
            raise ValueError(f"{path}: the checkpoint's {key!r} entry must be {what}, got {checkpoint[key]!r:.80}")
    return checkpoint


def _check_resumable(checkpoint: dict, model: nn.Module, kind: str, config: TrainConfig, path: Path) -> None:
    """The checkpoint must hold the same network, weights that fit it, and the same optimisation problem as this run."""
    saved = checkpoint["model"]
    if saved["kind"] != kind or saved_config(type(model.config), saved["config"], path) != model.config:
        raise ValueError(f"{path} holds a {saved['kind']!r} network with config {saved['config']}, but this "
                         f"run trains a {kind!r} network with config {asdict(model.config)}: use another output folder")
    check_state_dict(saved["state_dict"], model, path, "state_dict")
    check_state_dict(checkpoint["ema"], model, path, "ema")
    now = asdict(config)
    changed = sorted(name for name, value in checkpoint["train_config"].items()
                     if name not in RESUMABLE_CHANGES and now.get(name) != value)
    if changed:
        diffs = ", ".join(f"{name} {checkpoint['train_config'][name]!r} -> {now.get(name)!r}" for name in changed)
        raise ValueError(f"cannot resume {path} with a different training setup ({diffs}); only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change: use another output folder")


def _trim_metrics(path: Path, last_step: int) -> None:
    """Keep the metric lines up to the resumed step (a killed run may have logged past its checkpoint); the file is
    replaced atomically, so a kill meanwhile leaves the old history whole."""
    if not path.exists():
        return
    lines, kept = path.read_text().splitlines(), []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            continue
    if kept != lines:
        atomic_write_text("".join(f"{line}\n" for line in kept), path)


@contextmanager
def _folder_lock(out_dir: Path):
    """Hold an exclusive flock on out_dir/.train.lock while this process writes the folder; the OS drops it when
    the process ends, crash or kill included, so a stale lock file never blocks a later run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out_dir} is in use: another cfgedu train holds {out_dir / LOCK}; wait for it to end "
                             f"or choose another output folder") from None
        yield


def load_checkpoint_model(path: Path, use_ema: bool = True, map_location="cpu") -> nn.Module:
    """The network of a training checkpoint (a file, or a folder holding checkpoint.pt), in eval mode."""
    path = Path(path)
    path = path / CHECKPOINT if path.is_dir() else path
    checkpoint = _check_checkpoint(safe_torch_load(path, map_location), path)
    return rebuild_model({**checkpoint["model"], "ema": checkpoint["ema"]}, path, "ema" if use_ema else "state_dict")


# ---------------------------------------------------------------------------------------------- the loop


def _check_inputs(model: nn.Module, data: DataSource, config: TrainConfig, kind: str) -> None:
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module) or not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise ValueError("model must be an nn.Module with a dataclass `config` (a cfgedu network)")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must name the network kind (see cfgedu.nets.MODEL_KINDS), got {kind!r}")
    if getattr(model, "num_classes", data.num_classes) != data.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes but the data has {data.num_classes}")


def _local_batch(data: DataSource, step: int, micro: int, processes: _Processes, size: int,
                 channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, c = data.batch(step, micro, processes.rank, processes.world_size, size)
    if tuple(x.shape) != (size, *data.data_shape) or tuple(c.shape) != (size,):
        raise ValueError(f"the data source returned x {tuple(x.shape)} and c {tuple(c.shape)}; expected "
                         f"({size}, {', '.join(map(str, data.data_shape))}) and ({size},)")
    x = x.to(processes.device, torch.float32, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, c.to(processes.device, non_blocking=True)


def _seed_global_generator(seed: int, device: torch.device) -> None:
    """Seed the generators that dropout draws from: the CPU's and, on CUDA, this process's device."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


@dataclass
class _LogWindow:
    """The steps since the last metrics record: their summed loss (carried across a resume) and timing."""

    loss: float = 0.0
    steps: int = 0
    timed_steps: int = 0  # those taken by this process since `since`
    since: float = dataclasses.field(default_factory=time.perf_counter)
    began: float = dataclasses.field(default_factory=time.perf_counter)  # when this call started training
    carried: float = 0.0  # seconds trained by the runs this one resumed (from the checkpoint)

    def start(self) -> None:
        self.since = self.began = time.perf_counter()

    def elapsed(self) -> float:
        """Training seconds of the whole run: carried + (now − began)."""
        return self.carried + time.perf_counter() - self.began

    def add(self, loss: float) -> None:
        self.loss, self.steps, self.timed_steps = self.loss + loss, self.steps + 1, self.timed_steps + 1

    def record(self, done: int, loss: float, grad_norm: float, config: TrainConfig) -> dict:
        """The mean loss of the window, the last step's loss, lr and gradient norm, and the throughput; resets."""
        now = time.perf_counter()
        record = {"step": done, "loss": self.loss / self.steps, "last_loss": loss,
                  "lr": learning_rate(config, done - 1), "grad_norm": grad_norm,
                  "images_per_s": self.timed_steps * config.batch_size / max(now - self.since, 1e-9),
                  "seconds": self.elapsed()}
        self.loss, self.steps, self.timed_steps, self.since = 0.0, 0, 0, now
        return record


class _Trainer:
    """The state of one run: the network as trained (maybe DDP-wrapped and compiled), its EMA and AdamW."""

    def __init__(self, model: nn.Module, data: DataSource, config: TrainConfig, processes: _Processes):
        self.model, self.data, self.config, self.processes = model, data, config, processes
        self.micro_size, self.accum = config.micro_batch(processes.world_size)
        device = processes.device
        model.to(device).train()
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay, fused=device.type == "cuda")
        self.bf16 = config.precision == "bf16" and device.type == "cuda"
        if config.precision == "bf16" and not self.bf16:
            warnings.warn("bf16 autocast is CUDA-only; training in fp32 on the CPU", stacklevel=3)
        self.ddp = None
        self.net = model
        if processes.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = self.net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if config.compile:
            self.net = torch.compile(self.net)

    def save(self, path: Path, kind: str, step: int, window: _LogWindow) -> None:
        if not all(torch.isfinite(param).all() for param in self.model.parameters()):
            raise FloatingPointError(f"non-finite weights after step {step}; kept the last good checkpoint {path}")
        atomic_torch_save({"model": model_record(self.model, kind), "ema": self.ema.state_dict(),
                           "optimizer": self.optimizer.state_dict(), "step": step,
                           "train_config": asdict(self.config), "log_window": [window.loss, window.steps],
                           "seconds": window.elapsed()}, path)

    def restore(self, path: Path, kind: str, window: _LogWindow) -> int:
        """Load a checkpoint written by save(), every entry checked before it is used; returns its step."""
        checkpoint = _check_checkpoint(safe_torch_load(path, self.processes.device), path)
        _check_resumable(checkpoint, self.model, kind, self.config, path)
        self.model.load_state_dict(checkpoint["model"]["state_dict"])
        self.ema.load_state_dict(checkpoint["ema"])
        self._load_optimizer(checkpoint["optimizer"], path)
        window.loss, window.steps = checkpoint.get("log_window", (0.0, 0))
        window.carried = float(checkpoint.get("seconds", 0.0))
        return checkpoint["step"]

    def _load_optimizer(self, state: dict, path: Path) -> None:
        """AdamW's state, refused (ValueError naming the file) unless every moment has its parameter's shape."""
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:
            raise ValueError(f"{path}: the 'optimizer' entry does not fit this network's AdamW "
                             f"({type(error).__name__}: {first_sentence(error)})") from None
        for param, moments in self.optimizer.state.items():
            if any(name != "step" and getattr(value, "shape", param.shape) != param.shape
                   for name, value in moments.items()):
                raise ValueError(f"{path}: the 'optimizer' entry holds moments of another shape than the parameter "
                                 f"{tuple(param.shape)} they belong to")

    def step(self, step: int) -> tuple[float, float]:
        """One optimisation step on the global batch number `step`; returns (loss, gradient norm)."""
        config, processes = self.config, self.processes
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        generator = make_generator(derive_seed(config.seed, step, _NOISE_STREAM), processes.device)
        noise = draw_noise(config.batch_size, self.data.data_shape, config, generator)  # the global batch's
        total = torch.zeros((), device=processes.device)
        for micro in range(self.accum):
            x, c = _local_batch(self.data, step, micro, processes, self.micro_size, config.channels_last)
            local = noise.slice(slot_offset(micro, processes.rank, processes.world_size, self.micro_size),
                                self.micro_size)
            last = micro == self.accum - 1
            with nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                _seed_global_generator(derive_seed(config.seed, step, micro, processes.rank, _DROPOUT_STREAM),
                                       processes.device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
                    loss = algorithm1_loss(self.net, x, c, local, self.data.num_classes)
                (loss / self.accum).backward()
            total += loss.detach()
        loss = float(_mean_over_processes(total / self.accum, processes))
        max_norm = config.grad_clip if config.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise FloatingPointError(f"non-finite loss {loss} (gradient norm {grad_norm}) at step {step + 1}; "
                                     f"stopped before updating the weights, so the last checkpoint is intact")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_ema(self.ema, self.model, config.ema_decay)
        return loss, grad_norm


def train(model: nn.Module, data: DataSource, config: TrainConfig, out_dir: Path | None = None, *, kind: str,
          resume: bool = False, progress: bool = True, on_log: Callable[[dict], None] | None = None,
          config_record: dict | None = None) -> TrainResult:
    """Train `model` (a cfgedu network of `kind`) on `data` with Algorithm 1 for config.steps steps.

    With out_dir, writes out_dir/checkpoint.pt (atomically, every checkpoint_every steps and at the end),
    out_dir/metrics.jsonl and, if given, config_record as out_dir/config.json, all under an exclusive lock on
    the folder and only once a checkpoint to resume has been verified. resume=True continues from
    out_dir/checkpoint.pt when it exists; without resume an existing checkpoint is an error. Under torchrun
    only rank 0 takes the lock, writes files and shows the bar.
    """
    _check_inputs(model, data, config, kind)
    out_dir = Path(out_dir) if out_dir is not None else None
    processes = _start_processes(config)
    try:
        with _folder_lock(out_dir) if out_dir is not None and processes.is_main else nullcontext():
            result = _run(_Trainer(model, data, config, processes), out_dir, kind, resume, progress, on_log,
                          config_record)
        if processes.owns_group:
            dist.barrier()  # no rank tears gloo down while another still writes its files
        return result
    finally:
        if processes.owns_group:
            dist.destroy_process_group()


def _resume(trainer: _Trainer, checkpoint: Path, kind: str, resume: bool, window: _LogWindow) -> int:
    """The verified step of an existing checkpoint (0 when there is none); refuses one beyond config.steps."""
    if not checkpoint.exists():
        return 0
    if not resume:
        raise ValueError(f"{checkpoint} exists: resume it (resume=True, or run the same command again) "
                         f"or choose another output folder")
    start = trainer.restore(checkpoint, kind, window)
    if start > trainer.config.steps:
        raise ValueError(f"{checkpoint.parent} holds step {start}, beyond steps {trainer.config.steps}; nothing was "
                         f"trained (ask for more steps to continue it, or use another output folder)")
    return start


def _prepare_folder(out_dir: Path, start: int, config_record: dict | None) -> None:
    """Once the checkpoint is verified: record the experiment, drop metrics past it and any cut-short writes."""
    if config_record is not None:
        atomic_write_json(config_record, out_dir / CONFIG_JSON)
    _trim_metrics(out_dir / METRICS, start)
    for partial in out_dir.glob(f".{CHECKPOINT}.*.tmp"):  # a checkpoint write cut short by a kill
        partial.unlink()


def _run(trainer: _Trainer, out_dir: Path | None, kind: str, resume: bool, progress: bool, on_log,
         config_record: dict | None) -> TrainResult:
    from tqdm.auto import tqdm

    config, main = trainer.config, trainer.processes.is_main
    checkpoint = out_dir / CHECKPOINT if out_dir is not None else None
    window = _LogWindow()
    start = _resume(trainer, checkpoint, kind, resume, window) if checkpoint is not None else 0
    if start == config.steps:  # nothing to do, and nothing is written
        return TrainResult(trainer.model, trainer.ema, [], 0.0, start, resumed_from=start)
    if out_dir is not None and main:
        _prepare_folder(out_dir, start, config_record)
    history = []
    window.start()
    with torch.random.fork_rng(devices=[trainer.processes.device] if trainer.processes.device.type == "cuda" else []), \
            tqdm(total=config.steps, initial=start, desc="train", unit="step", disable=not (progress and main)) as bar:
        for step in range(start, config.steps):
            loss, grad_norm = trainer.step(step)
            done = step + 1
            window.add(loss)
            bar.update()
            if done % config.log_every == 0 or done == config.steps:
                record = window.record(done, loss, grad_norm, config)
                history.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                if main:
                    _append_metrics(out_dir, record, on_log)
            if checkpoint is not None and main and (done == config.steps or
                                                    (config.checkpoint_every and done % config.checkpoint_every == 0)):
                trainer.save(checkpoint, kind, done, window)
    return TrainResult(trainer.model, trainer.ema, history, time.perf_counter() - window.began, config.steps,
                       resumed_from=start)


def _append_metrics(out_dir: Path | None, record: dict, on_log) -> None:
    if out_dir is not None:
        with open(out_dir / METRICS, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    if on_log is not None:
        on_log(record)


# ---------------------------------------------------------------------------------------------- experiments


def _flatten(record: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat = {}
    for key, value in record.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _check_same_experiment(path: Path, record: dict) -> None:
    """An output folder holds one experiment: only the RESUMABLE_CHANGES training fields may differ."""
    saved, now = _flatten(json.loads(path.read_text())), _flatten(record)
    changed = [key for key in sorted(saved.keys() | now.keys()) if saved.get(key) != now.get(key)
               and not (key.startswith("train.") and key[len("train."):] in RESUMABLE_CHANGES)]
    if changed:
        diffs = ", ".join(f"{key} {saved.get(key)!r} -> {now.get(key)!r}" for key in changed)
        raise ValueError(f"{path.parent} holds a run of preset {saved.get('preset')!r} with another setup ({diffs}; "
                         f"see {path}): use another output folder, or the same settings to resume it")


def train_experiment(experiment, out_dir: Path, *, preset_name: str = "", require_checkpoint: bool = False,
                     progress: bool = True) -> TrainResult:
    """Build a cfgedu.engine.config.Experiment's network and data and train it in out_dir, resuming its checkpoint.

    out_dir/config.json records the experiment (written once a checkpoint to resume is verified); an existing
    one must describe the same experiment.
    """
    out_dir = Path(out_dir)
    checkpoint, saved = out_dir / CHECKPOINT, out_dir / CONFIG_JSON
    if require_checkpoint and not checkpoint.exists():
        raise FileNotFoundError(f"no checkpoint to resume at {checkpoint}")
    record = {"preset": preset_name, **experiment.to_dict()}
    if checkpoint.exists() and saved.exists():
        _check_same_experiment(saved, record)
    with torch.random.fork_rng(devices=[]):  # networks initialise from the global generator: seed it, then restore
        torch.manual_seed(derive_seed(experiment.train.seed, _INIT_STREAM))
        model = build_model(experiment.kind, asdict(experiment.model))
    data = experiment.data.build(experiment.train.seed)
    return train(model, data, experiment.train, out_dir, kind=experiment.kind, resume=True, progress=progress,
                 config_record=record)
