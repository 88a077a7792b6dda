"""The exact ε of a finite dataset: the optimal denoiser of its empirical distribution, class by class.

Noising the images x_1..x_N of class c gives the mixture p_λ(z|c) = mean_{i: c_i = c} N(z; α x_i, σ² I), whose
posterior mean is E[x|z, c] = Σ_i softmax_i(−‖z − α x_i‖² / 2σ²) x_i, so ε*(z, c) = (z − α E[x|z, c]) / σ. The null
label ∅ = num_classes mixes all N images. A sampler driven by ε* can only return training images: it shows what a
network that fitted its loss perfectly would produce (memorised digits), and checks the sampler and the protocol
apart from any network.
"""
from __future__ import annotations

import torch

from ..core.checks import check_batch, check_labels
from ..core.parameterization import x_to_eps
from ..core.schedule import alpha_sigma


class EmpiricalScore:
    """ε*(z, λ, c) of the images x (N, *data_shape) with labels c (N,), as an eps_model (float64 inside)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
        if images.ndim < 2 or labels.shape != images.shape[:1]:
            raise ValueError(f"images must be (N, *data_shape) and labels (N,); got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        check_labels(labels, num_classes, allow_null=False)
        if set(labels.tolist()) != set(range(num_classes)):
            raise ValueError(f"every class 0..{num_classes - 1} needs at least one image")
        self.num_classes = int(num_classes)
        self.data_shape = tuple(images.shape[1:])
        self.points = images.reshape(len(images), -1).double()  # (N, D)
        self.sq_norms = self.points.pow(2).sum(1)  # (N,)
        self.labels = labels.long()

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        check_batch(z, lam)
        if tuple(z.shape[1:]) != self.data_shape:
            raise ValueError(f"z must have shape (B, {', '.join(map(str, self.data_shape))}), got {tuple(z.shape)}")
        check_labels(c, self.num_classes, batch=len(z))
        alpha, sigma = alpha_sigma(lam.double())
        flat = z.reshape(len(z), -1).double()  # (B, D)
        # ‖z − α x_i‖² = ‖z‖² − 2α z·x_i + α²‖x_i‖², without a (B, N, D) tensor
        sq_dist = (flat.pow(2).sum(1, keepdim=True) - 2 * alpha[:, None] * flat @ self.points.T
                   + alpha[:, None] ** 2 * self.sq_norms[None])  # (B, N)
        other_class = (self.labels[None] != c[:, None]) & (c[:, None] != self.num_classes)
        logits = (-sq_dist / (2 * sigma[:, None] ** 2)).masked_fill(other_class, -torch.inf)
        x_hat = torch.softmax(logits, dim=1) @ self.points  # (B, D): E[x | z, c]
        return x_to_eps(flat, x_hat, lam.double()).reshape(z.shape).to(z.dtype)
