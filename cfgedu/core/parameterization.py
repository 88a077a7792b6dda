"""Conversions between the network's ε prediction, the denoised x̂ and the score at log-SNR λ.

ε = −σ_λ ∇ log p(z_λ) (note the minus sign), x̂ = (z − σ_λ ε)/α_λ.
"""
from __future__ import annotations

import torch

from .schedule import alpha_sigma
from .tensors import expand_like


def eps_to_x(z: torch.Tensor, eps: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """x̂ = (z − σ ε)/α."""
    alpha, sigma = alpha_sigma(lam)
    return (z - expand_like(sigma, z) * eps) / expand_like(alpha, z)


def x_to_eps(z: torch.Tensor, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """ε = (z − α x̂)/σ."""
    alpha, sigma = alpha_sigma(lam)
    return (z - expand_like(alpha, z) * x) / expand_like(sigma, z)


def eps_to_score(eps: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """∇_z log p(z_λ) = −ε/σ."""
    _, sigma = alpha_sigma(lam)
    return -eps / expand_like(sigma, eps)


def score_to_eps(score: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """ε = −σ ∇_z log p(z_λ)."""
    _, sigma = alpha_sigma(lam)
    return -expand_like(sigma, score) * score
