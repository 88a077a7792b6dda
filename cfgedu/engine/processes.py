"""One process or a torchrun group: which rank this is, its device, and the process group (NCCL or gloo)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import PROCESS_GROUP_TIMEOUT_S, TrainConfig


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # train() created the process group and destroys it at the end

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use device 'auto' or 'cpu'")
    if config.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def start_processes(config: TrainConfig) -> Processes:
    """One process, or the torchrun group described by RANK/WORLD_SIZE/LOCAL_RANK (NCCL on CUDA, else gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not dist.is_initialized():
        return Processes(0, 1, resolve_device(config, 0), False)
    device = resolve_device(config, int(os.environ.get("LOCAL_RANK", "0")))
    owns_group = join_process_group(device, config.process_group_timeout_s)
    return Processes(dist.get_rank(), dist.get_world_size(), device, owns_group)


def join_process_group(device: torch.device, timeout_s: float = PROCESS_GROUP_TIMEOUT_S) -> bool:
    """Bind this process to `device` and join torchrun's group (NCCL on CUDA, else gloo), unless a group exists;
    returns whether this call created it (and so should destroy it). Collectives fail after `timeout_s` seconds."""
    if dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return True


def mean_over_processes(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    if processes.world_size > 1:
        dist.all_reduce(value)  # SUM: gloo has no AVG
        value = value / processes.world_size
    return value
