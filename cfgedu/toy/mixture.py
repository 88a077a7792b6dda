"""An exact Gaussian mixture at every noise level: densities, posteriors, scores and the optimal ε*.

x|c ~ N(μ_c, Σ_c) with weights π_c. At log-SNR λ, z = α x + σ ε has p_λ(z|c) = N(z; α μ_c, α² Σ_c + σ² I).
Everything is computed in float64 from one eigendecomposition Σ_c = U_c diag(ℓ_c) U_cᵀ, so that
V_c = α² Σ_c + σ² I has eigenvalues α² ℓ + σ² in the same basis.
"""
from __future__ import annotations

import math

import torch

from ..core.checks import check_batch, check_labels, check_positive_int
from ..core.parameterization import eps_to_score, eps_to_x
from ..core.schedule import alpha_sigma


class GaussianMixture:
    """K components in D dimensions. As an eps_model, label c < K gives ε*(z, c) and c = K (∅) gives ε*(z)."""

    def __init__(self, weights, means, covariances):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)  # (K,)
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)  # (K, D, D)
        self._validate()
        self.weights = self.weights / self.weights.sum()
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.covariances)  # (K, D), (K, D, D)

    def _validate(self):
        K = self.weights.shape[0] if self.weights.ndim == 1 else -1
        if K < 1 or self.means.ndim != 2 or self.means.shape[0] != K:
            raise ValueError(f"weights must be (K,) and means (K, D); got {tuple(self.weights.shape)} "
                             f"and {tuple(self.means.shape)}")
        D = self.means.shape[1]
        if self.covariances.shape != (K, D, D):
            raise ValueError(f"covariances must be ({K}, {D}, {D}), got {tuple(self.covariances.shape)}")
        if (self.weights <= 0).any() or not torch.isfinite(self.weights).all():
            raise ValueError("mixture weights must be positive and finite")
        if not torch.allclose(self.covariances, self.covariances.transpose(1, 2)):
            raise ValueError("covariances must be symmetric")
        if (torch.linalg.eigvalsh(self.covariances) <= 0).any():
            raise ValueError("covariances must be positive definite")

    @classmethod
    def three_gaussians(cls, radius: float = 1.0, std: float = 0.6) -> GaussianMixture:
        """cfgedu's Figure 2 toy (our choice; the paper gives no parameters): equal weights, isotropic std,
        means on a triangle of circumradius `radius` at 90°, 210° and 330° (class 0 at the top)."""
        angles = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(torch.ones(3), means, std**2 * torch.eye(2, dtype=torch.float64).expand(3, 2, 2))

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(),
                "covariances": self.covariances.tolist()}

    # ---- the noised mixture at level λ (lam=None means the clean data, α = 1, σ = 0) ----

    def _levels(self, z: torch.Tensor, lam: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(α, σ) of shape (B, 1, 1) in float64."""
        if lam is None:
            return torch.ones(z.shape[0], 1, 1, dtype=torch.float64), torch.zeros(z.shape[0], 1, 1, dtype=torch.float64)
        check_batch(z, lam)
        alpha, sigma = alpha_sigma(lam.to(torch.float64))
        return alpha[:, None, None], sigma[:, None, None]

    def _whitened(self, z: torch.Tensor, lam: torch.Tensor | None):
        """Residuals in each component's eigenbasis: y = U_cᵀ(z − α μ_c) and the variances α² ℓ + σ²."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape (B, {self.dim}), got {tuple(z.shape)}")
        alpha, sigma = self._levels(z, lam)
        residual = z.to(torch.float64)[:, None, :] - alpha * self.means[None]  # (B, K, D): z − α μ_c
        y = torch.einsum("bkd,kde->bke", residual, self.eigenvectors)  # (B, K, D)
        variance = alpha**2 * self.eigenvalues[None] + sigma**2  # (B, K, D)
        return y, variance, sigma

    def _gaussian_log_prob(self, y: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """log N for whitened residuals y and variances (B, K, D), shape (B, K)."""
        return -0.5 * (self.dim * math.log(2 * math.pi) + variance.log().sum(-1) + (y**2 / variance).sum(-1))

    def log_prob_components(self, z: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
        """log p_λ(z|c) for every c, shape (B, K)."""
        y, variance, _ = self._whitened(z, lam)
        return self._gaussian_log_prob(y, variance)

    def log_prob(self, z: torch.Tensor, lam: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        """log p_λ(z|c) for labels c of shape (B,) (c = K or None gives the marginal log p_λ(z)), shape (B,)."""
        log_joint = self.log_prob_components(z, lam) + self.weights.log()  # (B, K)
        marginal = torch.logsumexp(log_joint, dim=1)
        if c is None:
            return marginal
        check_labels(c, self.num_classes, batch=z.shape[0])
        conditional = (log_joint - self.weights.log()).gather(1, c.clamp(max=self.num_classes - 1)[:, None])[:, 0]
        return torch.where(c == self.num_classes, marginal, conditional)

    def cfg_log_prob(self, z: torch.Tensor, lam: torch.Tensor | None, c: torch.Tensor, w: float) -> torch.Tensor:
        """Unnormalised log ρ_λ(z|c) = (1 + w) log p_λ(z|c) − w log p_λ(z), whose gradient is the exact CFG score at
        level λ, shape (B,). At the data level (lam None) ρ is the tilted target π_w(x|c) ∝ p(x|c) p(c|x)^w; at a
        level λ it is NOT π_w noised to λ (cfgedu.toy.ideal.IdealTiltedModel has that one)."""
        return (1 + w) * self.log_prob(z, lam, c) - w * self.log_prob(z, lam)

    def posterior(self, z: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
        """p_λ(c|z) = softmax_c[log π_c + log p_λ(z|c)], shape (B, K)."""
        return torch.softmax(self.log_prob_components(z, lam) + self.weights.log(), dim=1)

    def eps_components(self, z: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ε*(z, c) = σ V_c^{−1}(z − α μ_c) for every c, (B, K, D), and the posterior p_λ(c|z), (B, K)."""
        y, variance, sigma = self._whitened(z, lam)
        posterior = torch.softmax(self._gaussian_log_prob(y, variance) + self.weights.log(), dim=1)
        return sigma * torch.einsum("bke,kde->bkd", y / variance, self.eigenvectors), posterior

    def eps(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """ε*(z, c) for labels c (B,), with c = K giving ε*(z) = Σ_c p_λ(c|z) ε*(z, c); float64 (B, D)."""
        check_labels(c, self.num_classes, batch=z.shape[0])
        per_class, posterior = self.eps_components(z, lam)  # (B, K, D), (B, K)
        marginal = torch.einsum("bk,bkd->bd", posterior, per_class)
        conditional = per_class[torch.arange(z.shape[0]), c.clamp(max=self.num_classes - 1)]
        return torch.where((c == self.num_classes)[:, None], marginal, conditional)

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The eps_model contract: ε*(z, λ, c) in z's dtype."""
        return self.eps(z, lam, c).to(z.dtype)

    def score(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """∇_z log p_λ(z|c) = −ε*/σ (c = K for the marginal), float64 (B, D)."""
        return eps_to_score(self.eps(z, lam, c), lam.to(torch.float64))

    def implicit_classifier_gradient(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """∇_z log p_λ(c|z) = −(ε*(z, c) − ε*(z))/σ, float64 (B, D)."""
        null = torch.full_like(c, self.num_classes)
        return eps_to_score(self.eps(z, lam, c) - self.eps(z, lam, null), lam.to(torch.float64))

    def x_hat(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tweedie's E[x|z_λ, c] = (z − σ ε*)/α, float64 (B, D)."""
        return eps_to_x(z.to(torch.float64), self.eps(z, lam, c), lam.to(torch.float64))

    def sample(self, n: int, c: int | None, generator: torch.Generator) -> torch.Tensor:
        """n clean draws from p(x|c), or from the mixture when c is None; float64 (n, D)."""
        n = check_positive_int("n", n)
        if c is None:
            labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            labels = torch.full((n,), int(c), dtype=torch.long)
            check_labels(labels, self.num_classes, allow_null=False)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale = self.eigenvectors[labels] * self.eigenvalues[labels].sqrt()[:, None, :]  # (n, D, D): U diag(√ℓ)
        return self.means[labels] + torch.einsum("nde,ne->nd", scale, noise)

    def sample_labelled(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n clean draws (x, c) ~ p(x, c): labels from the weights, then x ~ p(x|c); float64 (n, D) and (n,)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = torch.empty(n, self.dim, dtype=torch.float64)
        for k in range(self.num_classes):
            chosen = labels == k
            if chosen.any():
                x[chosen] = self.sample(int(chosen.sum()), k, generator)
        return x, labels
