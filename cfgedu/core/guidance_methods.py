"""Guidance methods that followed CFG, each written from its paper and each answering one of CFG's flaws. They wrap
any conditional eps_model as guided() does (CFG++ also hands the sampler the ε to renoise with), so every sampler,
metric and plot takes them as it takes CFG. In the paper's w (s = 1 + w):

- autoguidance (Karras et al. 2024, arXiv:2406.02507): ε̃ = (1 + w) ε(z, c) − w ε_weak(z, c), guided away from a
  weaker version of the same conditional model instead of the unconditional one;
- APG, adaptive projected guidance (Sadat et al. 2024, arXiv:2410.02416), on the denoised x̂: the CFG update
  Δ = x̂(z, c) − x̂(z, ∅) with reverse momentum Δ ← Δ + β Δ_previous, its norm capped at r, and its part parallel
  to x̂(z, c) weighted by η: x̂ = x̂(z, c) + w (Δ_⊥ + η Δ_∥);
- CFG++ (Chung et al. 2024, arXiv:2406.08070), with its own strength l ∈ [0, 1]: x̂ = x̂(z, ∅) + l (x̂(z, c) − x̂(z, ∅))
  (CFG's x̂ at w = l − 1), renoised by the DDIM step with the unconditional ε: z' = α' x̂ + σ' ε(z, ∅).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_choice, check_finite
from .guidance import EpsModel, GuidanceWeight, Guided, default_null_label, unconditional
from .parameterization import eps_to_x, x_to_eps
from .tensors import expand_like

METHODS = ("cfg", "autoguidance", "apg", "cfg++")


class Autoguided(Guided):
    """Autoguidance: CFG's combination with a weaker conditional model `guide` in the place of ε(z, ∅)."""

    def __init__(self, eps_model: EpsModel, guide: EpsModel, w: GuidanceWeight, null_label: int):
        super().__init__(eps_model, w, null_label)
        self.guide = guide

    def pair(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.eps_model(z, lam, c), self.guide(z, lam, c)


class AdaptiveProjected(Guided):
    """APG as an eps_model. Its momentum carries the update from one call to the next, so use one instance per
    sampling run (a sampler calls it once a step; Heun twice)."""

    def __init__(self, eps_model: EpsModel, w: GuidanceWeight, null_label: int, eta: float = 0.0,
                 momentum: float = -0.75, norm_threshold: float | None = 2.5):
        super().__init__(eps_model, w, null_label)
        self.eta, self.momentum = check_finite("eta", eta), check_finite("momentum", momentum)
        if norm_threshold is not None and not check_finite("norm_threshold", norm_threshold) > 0:
            raise ValueError(f"norm_threshold must be > 0 (None: no cap), got {norm_threshold}")
        self.norm_threshold = norm_threshold
        self.running: torch.Tensor | None = None

    def update(self, delta: torch.Tensor) -> torch.Tensor:
        """Δ + β·(the last call's update): with β < 0 it damps what the last step already pushed."""
        if self.running is not None and self.running.shape != delta.shape:
            raise ValueError(f"APG's momentum holds a batch of {tuple(self.running.shape)} but this call has "
                             f"{tuple(delta.shape)}: make one AdaptiveProjected per sampling run")
        self.running = delta if self.running is None else delta + self.momentum * self.running
        return self.running

    def capped(self, delta: torch.Tensor) -> torch.Tensor:
        """Δ·min(1, r/‖Δ‖), the norm taken per sample over all data dimensions."""
        if self.norm_threshold is None:
            return delta
        norm = delta.flatten(1).norm(dim=1)  # (B,)
        return delta * expand_like(torch.clamp(self.norm_threshold / norm, max=1.0), delta)

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cond, uncond = self.pair(z, lam, c)
        x_cond = eps_to_x(z, cond, lam)
        delta = self.capped(self.update(x_cond - eps_to_x(z, uncond, lam)))
        parallel = parallel_part(delta, x_cond)
        x_hat = x_cond + self.weight(lam, cond) * (delta - parallel + self.eta * parallel)
        return x_to_eps(z, x_hat, lam)


def parallel_part(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The projection of each sample of v on the same sample of u, (⟨v, u⟩/⟨u, u⟩) u over all data dimensions."""
    dot = (v * u).flatten(1).sum(dim=1) / u.flatten(1).pow(2).sum(dim=1).clamp_min(torch.finfo(u.dtype).tiny)
    return expand_like(dot, u) * u


class CFGPlusPlus(Guided):
    """CFG++ at strength l: the eps_model whose x̂ is x̂(z, ∅) + l (x̂(z, c) − x̂(z, ∅)), i.e. CFG at w = l − 1; the DDIM
    step must renoise with `renoise` (ε(z, ∅)), so sample with method="ddim" and renoise=self.renoise."""

    def __init__(self, eps_model: EpsModel, strength: float | torch.Tensor, null_label: int):
        super().__init__(eps_model, strength - 1, null_label)
        self.renoise = unconditional(eps_model, null_label)


@dataclass(frozen=True)
class Guidance:
    """A guidance method and its settings: `wrap` turns a conditional eps_model and a strength into the eps_model to
    sample and the sampler's extra arguments. The strength is the paper's w for cfg, autoguidance and apg (s = 1 + w),
    and CFG++'s own l for cfg++."""

    method: str = "cfg"
    guide: EpsModel | None = None  # autoguidance's weaker conditional model
    eta: float = 0.0  # APG: weight of the parallel part (1 with no momentum and no cap is CFG)
    momentum: float = -0.75  # APG: β of the reverse momentum (0: none)
    norm_threshold: float | None = 2.5  # APG: the cap r on ‖Δ‖ (None: no cap)

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        if (self.method == "autoguidance") != (self.guide is not None):
            raise ValueError("autoguidance needs guide= (a weaker conditional eps_model), and only it takes one")

    def wrap(self, eps_model: EpsModel, strength: GuidanceWeight, null_label: int | None = None
             ) -> tuple[EpsModel, dict]:
        null_label = default_null_label(eps_model, null_label, self.method)
        if self.method == "autoguidance":
            return Autoguided(eps_model, self.guide, strength, null_label), {}
        if self.method == "apg":
            return AdaptiveProjected(eps_model, strength, null_label, self.eta, self.momentum, self.norm_threshold), {}
        if self.method == "cfg++":
            model = CFGPlusPlus(eps_model, strength, null_label)
            return model, {"renoise": model.renoise}
        return Guided(eps_model, strength, null_label), {}

    @property
    def sampler(self) -> str | None:
        """The one sampler the method is defined for (CFG++: DDIM), or None when any will do."""
        return "ddim" if self.method == "cfg++" else None
