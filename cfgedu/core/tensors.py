"""Small tensor helpers shared by every layer: broadcasting, seeding, devices and precision."""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

import torch


def expand_like(value: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or a (B,) tensor so that it broadcasts against x of shape (B, *data_shape)."""
    value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed`: the only source of randomness we use."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of the integers given (a hash, so nearby keys are unrelated)."""
    digest = hashlib.blake2b(repr(tuple(int(key) for key in keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def batch_of(value: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor on like's device and dtype filled with a scalar (or passed through if already (B,))."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.expand(batch) if value.ndim == 0 else value


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), which make bf16 autocast pay off on it."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def bf16_supported(device: torch.device | str) -> bool:
    """Whether networks run in bf16 on `device`: on CUDA, and on a CPU with bf16 instructions."""
    device_type = torch.device(device).type
    return device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16())


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The context a network runs under at `precision` ("fp32" or "bf16") on `device`: bf16 autocast where
    bf16_supported(device), else none (fp32)."""
    device_type = torch.device(device).type
    enabled = precision == "bf16" and bf16_supported(device_type)
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


def at_precision(network: torch.nn.Module, precision: str) -> Callable[..., torch.Tensor]:
    """network(*inputs) under autocast(its device, precision), its output cast to float32: bf16 changes only the
    network's arithmetic, never the dtype of what a sampler or a loss computes from its output."""
    device = next(network.parameters()).device

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return network(*inputs).float()

    return run
