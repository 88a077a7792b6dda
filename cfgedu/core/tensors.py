"""Small tensor helpers shared by every layer: broadcasting, seeding and devices."""
from __future__ import annotations

import hashlib

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
