"""Conditioning inputs of the networks: the log-SNR λ and the class label with its null row.

The paper does not say how λ enters the network. We follow the same authors' distillation code
(`logsnr_input_type='inv_cos'`): map λ to the schedule time u = arctan(e^{−λ/2})/(π/2) ∈ [0, 1]
and embed 1000·u with sinusoidal features, exactly as ADM embeds its timestep t ∈ [0, 1000).
"""
from __future__ import annotations

import math

import torch
from torch import nn

TIME_SCALE = 1000.0  # u ∈ [0, 1] is embedded as 1000·u, ADM's timestep range


def inv_cos(lam: torch.Tensor) -> torch.Tensor:
    """u = arctan(e^{−λ/2})/(π/2): the cosine-schedule time of λ (u = 0 clean, u = 1 pure noise), float32 (B,)."""
    return torch.atan(torch.exp(-lam.float() / 2)) / (math.pi / 2)


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[cos(t·f_k), sin(t·f_k)] with f_k = max_period^{−k/(dim/2)}, k < dim/2: (B,) -> (B, dim)."""
    if dim % 2:
        raise ValueError(f"the sinusoidal embedding needs an even dimension, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class LogSNREmbedding(nn.Module):
    """λ -> sinusoidal features of 1000·u(λ) -> MLP (Linear, SiLU, Linear), as ADM's time embedding."""

    def __init__(self, feature_dim: int, embed_dim: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.mlp = nn.Sequential(nn.Linear(feature_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, lam: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, embed_dim)
        return self.mlp(sinusoidal(TIME_SCALE * inv_cos(lam), self.feature_dim))


class ClassEmbedding(nn.Embedding):
    """A learned vector per class plus one for the null label ∅ = num_classes (row num_classes)."""

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__(num_classes + 1, embed_dim)
        self.num_classes = num_classes
