"""One training loop for every cfgedu network: Algorithm 1 of Ho & Salimans (2022), from the 2D toy to ImageNet.

λ ~ p(λ), labels dropped to ∅ with probability p_uncond, the unweighted ε-MSE (Eq. 5); AdamW with a linear
learning-rate warm-up, gradient clipping and an EMA of the weights; bf16 autocast on CUDA and on CPUs with bf16
instructions; DDP under torchrun; atomic checkpoints and exact resume. The loss and gradient norm stay on the device:
the host reads them, and checks they are finite, only at the log interval and before each checkpoint.

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
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..core.io import atomic_write_json, first_sentence
from ..core.losses import draw_noise, loss_for
from ..core.tensors import autocast, bf16_supported, derive_seed, make_generator
from ..data.source import DataSource, slot_offset
from .config import TrainConfig
from .processes import Processes, mean_over_processes, start_processes
from .runs import (
    CHECKPOINT,
    CONFIG_JSON,
    METRICS,
    append_metrics,
    check_resumable,
    folder_lock,
    read_checkpoint,
    trim_metrics,
    write_checkpoint,
)

_NOISE_STREAM, _DROPOUT_STREAM = 1, 2


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module
    history: list[dict]
    seconds: float  # spent by this call (metrics.jsonl's `seconds` also counts the runs it resumed)
    step: int
    resumed_from: int = 0  # the checkpoint's step (0: a fresh run); equal to `step` when there was nothing to do


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up to config.lr over the first warmup_steps steps (step 0 takes lr/warmup_steps), then constant."""
    return config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.lr


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ, in one multi-tensor (foreach) update; buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def _check_inputs(model: nn.Module, data: DataSource, config: TrainConfig, kind: str) -> None:
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module) or not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise ValueError("model must be an nn.Module with a dataclass `config` (a cfgedu network)")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must name the network kind (see cfgedu.nets.MODEL_KINDS), got {kind!r}")
    if getattr(model, "num_classes", data.num_classes) != data.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes but the data has {data.num_classes}")


def _local_batch(data: DataSource, step: int, micro: int, processes: Processes, size: int,
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

    def add(self, loss: torch.Tensor) -> None:
        """Count one step, its loss summed on the device (no host synchronisation)."""
        self.loss, self.steps, self.timed_steps = self.loss + loss, self.steps + 1, self.timed_steps + 1

    def state(self) -> list:
        """[summed loss, steps], as a checkpoint keeps them."""
        return [float(self.loss), self.steps]

    def record(self, done: int, loss: torch.Tensor, grad_norm: torch.Tensor, config: TrainConfig) -> dict:
        """The mean loss of the window, the last step's loss, lr and gradient norm, and the throughput; resets."""
        now = time.perf_counter()
        record = {"step": done, "loss": float(self.loss) / self.steps, "last_loss": float(loss),
                  "lr": learning_rate(config, done - 1), "grad_norm": float(grad_norm),
                  "images_per_s": self.timed_steps * config.batch_size / max(now - self.since, 1e-9),
                  "seconds": self.elapsed()}
        self.loss, self.steps, self.timed_steps, self.since = 0.0, 0, 0, now
        return record


class _FiniteWatch:
    """The first non-finite step of a run (its number, loss and gradient norm), kept on the device: add() never waits
    for it, check() reads it and stops the run."""

    def __init__(self, device: torch.device):
        self.step = torch.zeros((), dtype=torch.long, device=device)  # 0: every step so far was finite
        self.values = torch.zeros(2, device=device)  # (loss, gradient norm) of that step

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        values = torch.stack([loss, grad_norm]).float()
        first = ~torch.isfinite(values).all() & (self.step == 0)
        self.step = torch.where(first, step + 1, self.step)
        self.values = torch.where(first, values, self.values)

    def check(self, done: int) -> None:
        """FloatingPointError if a step up to `done` was not finite: raised before the weights that step touched reach
        a metrics record or a checkpoint."""
        bad = int(self.step)
        if bad:
            loss, grad_norm = self.values.tolist()
            raise FloatingPointError(f"non-finite loss {loss} (gradient norm {grad_norm}) at step {bad}; stopped at "
                                     f"step {done} before writing a checkpoint, so the last checkpoint is intact")


class _Trainer:
    """The state of one run: the network as trained (maybe DDP-wrapped and compiled), its EMA and AdamW."""

    def __init__(self, model: nn.Module, data: DataSource, config: TrainConfig, processes: Processes):
        self.model, self.data, self.config, self.processes = model, data, config, processes
        self.micro_size, self.accum = config.micro_batch(processes.world_size)
        device = processes.device
        model.to(device).train()
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay, fused=device.type == "cuda")
        if config.precision == "bf16" and not bf16_supported(device):
            warnings.warn(f"bf16 autocast needs CUDA or a CPU with bf16 instructions (AVX512-BF16 or AMX), which "
                          f"{device} lacks; training in fp32", stacklevel=3)
        self.watch = _FiniteWatch(device)
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
        write_checkpoint(path, model=self.model, kind=kind, ema=self.ema, optimizer=self.optimizer, step=step,
                         config=self.config, log_window=window.state(), seconds=window.elapsed())

    def restore(self, path: Path, kind: str, window: _LogWindow) -> int:
        """Load a checkpoint written by save(), every entry checked before it is used; returns its step."""
        checkpoint = read_checkpoint(path, self.processes.device)
        check_resumable(checkpoint, self.model, kind, self.config, path)
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

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on the global batch number `step`; returns (loss, gradient norm) on the device,
        unread: a non-finite step is recorded by self.watch, which the caller checks."""
        config, processes = self.config, self.processes
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        generator = make_generator(derive_seed(config.seed, step, _NOISE_STREAM), processes.device)
        noise = draw_noise(config.batch_size, self.data.data_shape, config.p_uncond, generator,
                           config.schedule())  # the global batch's
        total = torch.zeros((), device=processes.device)
        for micro in range(self.accum):
            x, c = _local_batch(self.data, step, micro, processes, self.micro_size, config.channels_last)
            local = noise.slice(slot_offset(micro, processes.rank, processes.world_size, self.micro_size),
                                self.micro_size)
            last = micro == self.accum - 1
            with nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                _seed_global_generator(derive_seed(config.seed, step, micro, processes.rank, _DROPOUT_STREAM),
                                       processes.device)
                with autocast(processes.device, config.precision):
                    loss = loss_for(self.model)(self.net, x, c, local, self.data.num_classes)
                (loss / self.accum).backward()
            total += loss.detach()
        loss = mean_over_processes(total / self.accum, processes)
        max_norm = config.grad_clip if config.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.watch.add(step, loss, grad_norm)
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
    processes = start_processes(config)
    try:
        with folder_lock(out_dir) if out_dir is not None and processes.is_main else nullcontext():
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
    trim_metrics(out_dir / METRICS, start)
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
            save = checkpoint is not None and (done == config.steps or
                                               (config.checkpoint_every and done % config.checkpoint_every == 0))
            log = done % config.log_every == 0 or done == config.steps
            if log or save:  # on every rank, so that all stop together
                trainer.watch.check(done)
            if log:
                record = window.record(done, loss, grad_norm, config)
                history.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                if main and out_dir is not None:
                    append_metrics(out_dir, record)
                if main and on_log is not None:
                    on_log(record)
            if save and main:
                trainer.save(checkpoint, kind, done, window)
    return TrainResult(trainer.model, trainer.ema, history, time.perf_counter() - window.began, config.steps,
                       resumed_from=start)
