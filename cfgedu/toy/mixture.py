"""An exact Gaussian mixture at every noise level: densities, posteriors, scores and the optimal ε*.

Components k = 1..M, x|k ~ N(μ_k, Σ_k) with weights w_k, each belonging to a class c(k); by default every component is
its own class. A class's density is the mixture of its components, p(x|c) = Σ_{k∈c} w_k N(x; μ_k, Σ_k) / π_c with
π_c = Σ_{k∈c} w_k. At log-SNR λ, z = α x + σ ε has p_λ(z|k) = N(z; α μ_k, α² Σ_k + σ² I). Everything is computed from
one eigendecomposition Σ_k = U_k diag(ℓ_k) U_kᵀ, so that V_k = α² Σ_k + σ² I has eigenvalues α² ℓ + σ² in the same
basis: in float64, except the eps_model call, which computes in z's dtype (a float32 sampler's steps in float32).
"""
from __future__ import annotations

import math

import torch

from ..core.checks import check_batch, check_labels, check_positive_int
from ..core.parameterization import eps_to_score, eps_to_x
from ..core.schedule import alpha_sigma


class GaussianMixture:
    """M Gaussian components in D dimensions grouped into K classes (`classes[k]` is component k's class; default:
    one component per class). As an eps_model, label c < K gives ε*(z, c) and c = K (∅) gives ε*(z)."""

    def __init__(self, weights, means, covariances, classes=None):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)  # (M,)
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (M, D)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)  # (M, D, D)
        self._validate()
        self.weights = self.weights / self.weights.sum()
        self.classes = self._check_classes(classes)  # (M,) long
        self.members = self.classes[None] == torch.arange(self.num_classes)[:, None]  # (K, M): component k in class c
        self.class_weights = self.members.double() @ self.weights  # (K,): π_c
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.covariances)  # (M, D), (M, D, D)

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

    def _check_classes(self, classes) -> torch.Tensor:
        """Each component's class: 0..K−1 with every class present (default: component k is class k)."""
        if classes is None:
            return torch.arange(len(self.weights))
        classes = torch.as_tensor(classes, dtype=torch.long)
        if classes.shape != self.weights.shape or classes.min() < 0 or \
                set(classes.tolist()) != set(range(int(classes.max()) + 1)):
            raise ValueError(f"classes must give each of the {len(self.weights)} components a class 0..K−1, every "
                             f"class used; got {classes.tolist()}")
        return classes

    @classmethod
    def three_gaussians(cls, radius: float = 1.0, std: float = 0.6) -> GaussianMixture:
        """cfgedu's Figure 2 toy (our choice; the paper gives no parameters): equal weights, isotropic std,
        means on a triangle of circumradius `radius` at 90°, 210° and 330° (class 0 at the top)."""
        angles = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(torch.ones(3), means, std**2 * torch.eye(2, dtype=torch.float64).expand(3, 2, 2))

    @classmethod
    def two_modes(cls, std: float = 0.45) -> GaussianMixture:
        """A toy where class 0 has two modes, at (−1.5, 0) and (1.5, 0), and class 1 sits near the right one, at
        (0.9, −1.2): guidance decides which mode a class-0 sample joins (notebook 04's guidance interval)."""
        means = torch.tensor([[-1.5, 0.0], [1.5, 0.0], [0.9, -1.2]], dtype=torch.float64)
        return cls(torch.tensor([0.25, 0.25, 0.5]), means, std**2 * torch.eye(2, dtype=torch.float64).expand(3, 2, 2),
                   classes=[0, 0, 1])

    @property
    def num_classes(self) -> int:
        return int(self.classes.max()) + 1

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to_dict(self) -> dict:
        record = {"weights": self.weights.tolist(), "means": self.means.tolist(),
                  "covariances": self.covariances.tolist()}
        return record if self.num_classes == len(self.weights) else {**record, "classes": self.classes.tolist()}

    def class_moments(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (D,) and covariance (D, D) of p(x|c), a mixture of the class's components."""
        w = self.weights * self.members[c] / self.class_weights[c]  # (M,): zero outside the class
        mean = w @ self.means
        second = torch.einsum("k,kde->de", w, self.covariances + self.means[:, :, None] * self.means[:, None, :])
        return mean, second - torch.outer(mean, mean)

    # ---- the noised mixture at level λ (lam=None means the clean data, α = 1, σ = 0) ----

    def _levels(self, z: torch.Tensor, lam: torch.Tensor | None,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(α, σ) of shape (1, 1, B), or (1, 1, 1) when every sample is at one level (a sampler's step, where each
        level's variances are then computed once rather than once per sample)."""
        if lam is None:
            return torch.ones(1, 1, 1, dtype=dtype), torch.zeros(1, 1, 1, dtype=dtype)
        check_batch(z, lam)
        lam = lam.to(dtype)
        alpha, sigma = alpha_sigma(lam[:1] if bool((lam == lam[:1]).all()) else lam)
        return alpha[None, None], sigma[None, None]

    def _whitened(self, z: torch.Tensor, lam: torch.Tensor | None, dtype: torch.dtype = torch.float64):
        """Residuals in each component's eigenbasis, y = U_kᵀ(z − α μ_k), their variances α² ℓ + σ² and σ, computed
        in dtype. The batch is the last axis, (M, D, B), so that sums over components and dimensions run along it."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape (B, {self.dim}), got {tuple(z.shape)}")
        alpha, sigma = self._levels(z, lam, dtype)
        rotate = self.eigenvectors.mT.to(dtype)  # (M, D, D): U_kᵀ
        y = rotate @ z.to(dtype).T - alpha * (rotate @ self.means[:, :, None].to(dtype))  # (M, D, B)
        variance = alpha**2 * self.eigenvalues[:, :, None].to(dtype) + sigma**2  # (M, D, B), or (M, D, 1) at one level
        return y, variance, sigma

    def _gaussian_log_prob(self, y: torch.Tensor, variance: torch.Tensor,
                           precision_y: torch.Tensor | None = None) -> torch.Tensor:
        """log N for whitened residuals y and variances (M, D, B) (and y / variance, when at hand), shape (M, B)."""
        precision_y = y / variance if precision_y is None else precision_y
        return -0.5 * (self.dim * math.log(2 * math.pi) + variance.log().sum(1) + (y * precision_y).sum(1))

    def log_prob_components(self, z: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
        """log p_λ(z|k) for every component k, shape (B, M)."""
        y, variance, _ = self._whitened(z, lam)
        return self._gaussian_log_prob(y, variance).T

    def _class_log_joint(self, z: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
        """log π_c p_λ(z|c) = logsumexp over the class's components of log w_k p_λ(z|k), shape (K, B)."""
        y, variance, _ = self._whitened(z, lam)
        component_log_joint = self._gaussian_log_prob(y, variance) + self.weights.log()[:, None]  # (M, B)
        masked = component_log_joint[None].masked_fill(~self.members[:, :, None], -torch.inf)  # (K, M, B)
        return torch.logsumexp(masked, dim=1)

    def log_prob_classes(self, z: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
        """log p_λ(z|c) for every class c, shape (B, K)."""
        return (self._class_log_joint(z, lam) - self.class_weights.log()[:, None]).T

    def log_prob(self, z: torch.Tensor, lam: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        """log p_λ(z|c) for labels c of shape (B,) (c = K or None gives the marginal log p_λ(z)), shape (B,)."""
        log_joint = self._class_log_joint(z, lam)  # (K, B)
        marginal = torch.logsumexp(log_joint, dim=0)
        if c is None:
            return marginal
        check_labels(c, self.num_classes, batch=z.shape[0])
        conditional = (log_joint - self.class_weights.log()[:, None]).gather(0, c.clamp(max=self.num_classes - 1)[None])
        return torch.where(c == self.num_classes, marginal, conditional[0])

    def cfg_log_prob(self, z: torch.Tensor, lam: torch.Tensor | None, c: torch.Tensor, w: float) -> torch.Tensor:
        """Unnormalised log ρ_λ(z|c) = (1 + w) log p_λ(z|c) − w log p_λ(z), whose gradient is the exact CFG score at
        level λ, shape (B,). At the data level (lam None) ρ is the tilted target π_w(x|c) ∝ p(x|c) p(c|x)^w; at a
        level λ it is NOT π_w noised to λ (cfgedu.toy.ideal.IdealTiltedModel has that one)."""
        return (1 + w) * self.log_prob(z, lam, c) - w * self.log_prob(z, lam)

    def log_posterior(self, z: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
        """log p_λ(c|z) = log_softmax_c[log π_c + log p_λ(z|c)], shape (B, K)."""
        return torch.log_softmax(self._class_log_joint(z, lam), dim=0).T

    def posterior(self, z: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
        """p_λ(c|z), shape (B, K)."""
        return self.log_posterior(z, lam).exp()

    def eps_components(self, z: torch.Tensor, lam: torch.Tensor,
                       dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """ε*(z, k) = σ V_k^{−1}(z − α μ_k) = σ U_k (y / variance) for every component, (M, D, B) with the batch last,
        and log w_k p_λ(z|k), (M, B)."""
        y, variance, sigma = self._whitened(z, lam, dtype)
        precision_y = y / variance  # (M, D, B): U_kᵀ V_k^{−1}(z − α μ_k)
        log_joint = self._gaussian_log_prob(y, variance, precision_y) + self.weights.log().to(dtype)[:, None]
        return sigma * (self.eigenvectors.to(dtype) @ precision_y), log_joint

    def eps(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor,
            dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """ε*(z, c) = Σ_{k∈c} p_λ(k|z, c) ε*(z, k) for labels c (B,); c = K gives ε*(z), the sum over every
        component; (B, D) computed in dtype."""
        check_labels(c, self.num_classes, batch=z.shape[0])
        return self._class_eps(*self.eps_components(z, lam, dtype), c)

    def _class_eps(self, per_component: torch.Tensor, log_joint: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Σ_{k∈c} p_λ(k|z, c) ε*(z, k) from eps_components' (M, D, B) and (M, B), shape (B, D)."""
        allowed = (self.classes[:, None] == c) | (c == self.num_classes)  # (M, B): the class's components (∅: all)
        responsibility = torch.softmax(log_joint.masked_fill(~allowed, -torch.inf), dim=0)  # (M, B): p_λ(k|z, c)
        return (responsibility[:, None] * per_component).sum(0).T

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The eps_model contract: ε*(z, λ, c) computed in z's dtype (a float32 sampler gets float32 arithmetic; the
        named methods compute in float64)."""
        return self.eps(z, lam, c, dtype=z.dtype)

    def cond_and_uncond(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ε*(z, c) and ε*(z) in z's dtype from one evaluation of the components, half the work of a doubled batch:
        guided(mixture, w) calls this (cfgedu.core.guidance.cond_and_uncond)."""
        check_labels(c, self.num_classes, batch=z.shape[0])
        parts = self.eps_components(z, lam, z.dtype)
        return self._class_eps(*parts, c), self._class_eps(*parts, torch.full_like(c, self.num_classes))

    def score(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """∇_z log p_λ(z|c) = −ε*/σ (c = K for the marginal), float64 (B, D)."""
        return eps_to_score(self.eps(z, lam, c), lam.to(torch.float64))

    def implicit_classifier_gradient(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """∇_z log p_λ(c|z) = −(ε*(z, c) − ε*(z))/σ, float64 (B, D)."""
        cond, uncond = self.cond_and_uncond(z.to(torch.float64), lam, c)
        return eps_to_score(cond - uncond, lam.to(torch.float64))

    def x_hat(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tweedie's E[x|z_λ, c] = (z − σ ε*)/α, float64 (B, D)."""
        return eps_to_x(z.to(torch.float64), self.eps(z, lam, c), lam.to(torch.float64))

    def _components(self, n: int, c: int | None, generator: torch.Generator) -> torch.Tensor:
        """The components of n draws from p(x|c) (c None: from the whole mixture), (n,) long."""
        if c is None:
            return torch.multinomial(self.weights, n, replacement=True, generator=generator)
        check_labels(torch.tensor([int(c)]), self.num_classes, allow_null=False)
        members = self.members[int(c)].nonzero()[:, 0]
        if len(members) == 1:
            return members.expand(n)
        return members[torch.multinomial(self.weights[members], n, replacement=True, generator=generator)]

    def sample(self, n: int, c: int | None, generator: torch.Generator) -> torch.Tensor:
        """n clean draws from p(x|c), or from the mixture when c is None; float64 (n, D)."""
        components = self._components(check_positive_int("n", n), c, generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale = self.eigenvectors[components] * self.eigenvalues[components].sqrt()[:, None, :]  # (n, D, D): U diag(√ℓ)
        return self.means[components] + torch.einsum("nde,ne->nd", scale, noise)

    def sample_labelled(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n clean draws (x, c) ~ p(x, c): labels from the class weights, then x ~ p(x|c); float64 (n, D) and (n,)."""
        labels = torch.multinomial(self.class_weights, n, replacement=True, generator=generator)
        x = torch.empty(n, self.dim, dtype=torch.float64)
        for k in range(self.num_classes):
            chosen = labels == k
            if chosen.any():
                x[chosen] = self.sample(int(chosen.sum()), k, generator)
        return x, labels
