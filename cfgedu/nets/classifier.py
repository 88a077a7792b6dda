"""A noisy classifier p_φ(c | z_λ, λ) for 2D data: the network that classifier guidance needs (Ho & Salimans 2022,
Sec. 3.1; Dhariwal & Nichol 2021), trained on the same forward process z_λ = α_λ x + σ_λ ε as the ε-MLPs.

`classifier(z, lam) -> logits` of shape (B, num_classes): a SiLU MLP on [z, the λ features of the ε-MLP]. It is not
an eps_model; its `objective = "classifier"` tells the training loop to take the cross-entropy loss
(cfgedu.core.losses.LOSSES), and cfgedu.core.guidance.classifier_guided turns it into guidance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.checks import check_batch, check_positive_int
from .mlp import lambda_features, silu_mlp


@dataclass(frozen=True)
class ClassifierConfig:
    """A width×depth SiLU MLP on [z, λ/lambda_scale, sin/cos(kπu(λ)) for k = 1..lambda_frequencies]."""

    num_classes: int = 3
    data_dim: int = 2
    width: int = 128
    depth: int = 3
    lambda_frequencies: int = 4
    lambda_scale: float = 20.0

    def __post_init__(self):
        for name in ("num_classes", "data_dim", "width", "depth", "lambda_frequencies"):
            check_positive_int(name, getattr(self, name))
        if not self.lambda_scale > 0:
            raise ValueError(f"lambda_scale must be > 0, got {self.lambda_scale}")


class NoisyClassifier(nn.Module):
    """logits of p_φ(c | z_λ, λ), (B, num_classes): log p_φ(c|z) = log_softmax(logits)[c]."""

    Config = ClassifierConfig
    objective = "classifier"  # the training loop's loss: cross-entropy, labels never dropped

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if not isinstance(config, ClassifierConfig):
            raise ValueError(f"NoisyClassifier takes a ClassifierConfig, got {type(config).__name__}")
        self.config, self.num_classes = config, config.num_classes
        in_dim = config.data_dim + 1 + 2 * config.lambda_frequencies
        self.trunk = silu_mlp(in_dim, config.width, config.depth, config.num_classes)

    def forward(self, z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        check_batch(z, lam)
        if z.ndim != 2 or z.shape[1] != self.config.data_dim:
            raise ValueError(f"NoisyClassifier takes z of shape (B, {self.config.data_dim}), got {tuple(z.shape)}")
        dtype = self.trunk[0].weight.dtype
        features = lambda_features(lam, self.config.lambda_frequencies, self.config.lambda_scale)  # (B, 1 + 2F)
        return self.trunk(torch.cat([z.to(dtype), features.to(dtype)], dim=1)).to(z.dtype)
