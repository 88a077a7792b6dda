"""Toy networks for 2D data: an ε-output MLP (free to be non-conservative) and an energy MLP (conservative).

Both read z, smooth features of λ and a class embedding with a null row ∅ = num_classes. Both are
preconditioned around the score of N(0, d²I) data (d = data_std), which the exact ε* approaches at both ends:

    ε_θ(z, λ, c) = σ_λ · (κ_λ z + α_λ F_θ(z, λ, c)),   κ_λ = 1/(α_λ² d² + σ_λ²).

- The trunk's target F is O(1) at every λ for data with a non-degenerate covariance (for the toy,
  F* = (κ_c − κ) z/α − κ_c μ_c with κ_c = 1/(α²τ² + σ²)), so one small MLP fits pure noise and clean data.
- The class enters only through α·F: as α → 0 the model's ε(z, c) − ε(z, ∅) vanishes like α, as the exact
  one does. Without this, Algorithm 2's first steps (α_λ ≈ 5e−5 at λ = −20) divide the guided ε's class
  error by α in x̂ = (z − σ ε̃)/α and large-w samples fly off; here x̂ = αd²κ z − σ²F stays bounded.

- EpsMLP:    F_θ: R^2 → R^2 unconstrained (its Jacobian need not be symmetric): the paper's kind of network.
- EnergyMLP: ε_θ = σ_λ ∇_z U_θ with U_θ = κ‖z‖²/2 + α E_θ(z, λ, c), E_θ scalar; score = −∇_z U_θ is a
  gradient field by construction, and so is every CFG combination of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.checks import check_batch, check_labels, check_positive_int
from ..core.schedule import LogSNRSchedule, alpha_sigma
from .embeddings import ClassEmbedding

_SCHEDULE = LogSNRSchedule()  # u(λ) of the default p(λ) on [−20, 20]: u = 0 clean, u = 1 pure noise


@dataclass(frozen=True)
class MLPConfig:
    """A width×depth SiLU MLP on [z, λ features, class embedding]."""

    num_classes: int = 3
    data_dim: int = 2
    width: int = 128
    depth: int = 3
    class_dim: int = 32
    lambda_frequencies: int = 4  # sin/cos(k·π·u(λ)) for k = 1..lambda_frequencies, plus λ/lambda_scale
    lambda_scale: float = 20.0
    data_std: float = 1.0  # d of the preconditioner: roughly the data's standard deviation per coordinate

    def __post_init__(self):
        for name in ("num_classes", "data_dim", "width", "depth", "class_dim", "lambda_frequencies"):
            check_positive_int(name, getattr(self, name))
        for name in ("lambda_scale", "data_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def input_dim(self) -> int:
        return self.data_dim + 1 + 2 * self.lambda_frequencies + self.class_dim


def lambda_features(lam: torch.Tensor, frequencies: int, scale: float) -> torch.Tensor:
    """[λ/scale, sin(kπu), cos(kπu)]_{k=1..frequencies} with u = u(λ) ∈ [0, 1]: (B,) -> (B, 1 + 2·frequencies).

    Low frequencies only: ε* varies smoothly with λ, and a small MLP fits smooth inputs fastest."""
    u = _SCHEDULE.u(lam.double()).float()
    angles = math.pi * u[:, None] * torch.arange(1, frequencies + 1, device=lam.device)  # (B, F)
    return torch.cat([lam.float()[:, None] / scale, torch.sin(angles), torch.cos(angles)], dim=1)


def silu_mlp(in_dim: int, width: int, depth: int, out_dim: int) -> nn.Sequential:
    """Linear → SiLU, `depth` times, then a linear read-out."""
    layers, dim = [], in_dim
    for _ in range(depth):
        layers += [nn.Linear(dim, width), nn.SiLU()]
        dim = width
    return nn.Sequential(*layers, nn.Linear(dim, out_dim))


class _ToyMLP(nn.Module):
    """The shared trunk: inputs are checked, embedded and concatenated; subclasses decide what it outputs."""

    Config = MLPConfig

    def __init__(self, config: MLPConfig, out_dim: int | None):
        super().__init__()
        if not isinstance(config, MLPConfig):
            raise ValueError(f"{type(self).__name__} takes an MLPConfig, got {type(config).__name__}")
        self.config = config
        self.num_classes = config.num_classes
        self.class_embedding = ClassEmbedding(config.num_classes, config.class_dim)  # row num_classes: ∅
        self.trunk = silu_mlp(config.input_dim, config.width, config.depth, out_dim or config.data_dim)

    def _check(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> None:
        check_batch(z, lam)
        if z.ndim != 2 or z.shape[1] != self.config.data_dim:
            raise ValueError(f"{type(self).__name__} takes z of shape (B, {self.config.data_dim}), "
                             f"got {tuple(z.shape)}")
        check_labels(c, self.num_classes, batch=z.shape[0])

    def _trunk(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        dtype = self.trunk[0].weight.dtype
        cfg = self.config
        features = torch.cat([z.to(dtype), lambda_features(lam, cfg.lambda_frequencies, cfg.lambda_scale).to(dtype),
                              self.class_embedding(c)], dim=1)  # (B, input_dim)
        return self.trunk(features)

    def _levels(self, lam: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(σ, α, κ = 1/(α²d² + σ²)), each (B, 1) in like's dtype."""
        alpha, sigma = alpha_sigma(lam.to(like.dtype))
        kappa = 1 / (alpha**2 * self.config.data_std**2 + sigma**2)
        return sigma[:, None], alpha[:, None], kappa[:, None]


class EpsMLP(_ToyMLP):
    """ε_θ(z, λ, c) = σ(κ z + α F_θ(z, λ, c)): an unconstrained vector field, as in the paper's networks."""

    def __init__(self, config: MLPConfig):
        super().__init__(config, out_dim=None)  # one output per data dimension

    def forward(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self._check(z, lam, c)
        sigma, alpha, kappa = self._levels(lam, z)
        return sigma * (kappa * z + alpha * self._trunk(z, lam, c).to(z.dtype))


class EnergyMLP(_ToyMLP):
    """ε_θ(z, λ, c) = σ_λ ∇_z U_θ(z, λ, c) by autograd: score = −∇_z U, so every CFG combination
    (1 + w)·ε_θ(z, c) − w·ε_θ(z, ∅) = σ_λ ∇_z[(1 + w) U_c − w U_∅] is a gradient field (curl zero)."""

    def __init__(self, config: MLPConfig):
        super().__init__(config, out_dim=1)

    def energy(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """U_θ(z, λ, c) = κ‖z‖²/2 + α E_θ(z, λ, c), the negative log-density up to a constant, shape (B,)."""
        self._check(z, lam, c)
        _, alpha, kappa = self._levels(lam, z)
        return (kappa * z**2 / 2).sum(1) + alpha[:, 0] * self._trunk(z, lam, c)[:, 0].to(z.dtype)

    def forward(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # Keep the graph when the caller differentiates (training, curl by autograd); skip it under no_grad.
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z_in = z if z.requires_grad else z.detach().requires_grad_(True)
            energy = self.energy(z_in, lam, c)
            (grad,) = torch.autograd.grad(energy.sum(), z_in, create_graph=create_graph)  # (B, D): ∇_z U
        return self._levels(lam, z)[0] * grad.to(z.dtype)
