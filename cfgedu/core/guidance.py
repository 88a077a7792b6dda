"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6) as a wrapper around any eps_model.

The paper's w: ε̃ = (1 + w)·ε(z, c) − w·ε(z, ∅). w = 0 is the plain conditional model and w = −1
the unconditional one. Diffusers, Imagen, EDM2 and DiT write the same rule with the scale s = 1 + w:
ε̃ = ε(z, ∅) + s·(ε(z, c) − ε(z, ∅)).

Classifier guidance, the baseline CFG replaces (Sec. 3.1), wraps an eps_model and a noisy classifier the same way:
ε̃ = ε(z, c) − w·σ_λ·∇_z log p_φ(c|z_λ) (`classifier_guided`).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .checks import check_finite, check_labels, check_logits
from .schedule import alpha_sigma
from .tensors import expand_like

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # classifier(z, lam) -> logits (B, K)
GuidanceWeight = float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]  # a float, one per sample, or w(λ)
# Beyond this |w| (the paper sweeps 0..4, the course goes to 16) the w·(ε(z, c) − ε(z, ∅)) term swamps ε and the
# samples saturate: every one is pushed to the far edge of its class.
SATURATED_W = 100.0


class GuidanceWarning(UserWarning):
    """A guidance strength w that runs but is unlikely to be what was meant."""


def check_w(w: float) -> float:
    """w as a finite float; a GuidanceWarning when w < −1 (negative scale s = 1 + w) or w > SATURATED_W."""
    w = check_finite("w", w)
    if w < -1:
        warnings.warn(f"w = {w:g} < -1 gives a negative scale s = 1 + w = {1 + w:g}: guidance pushes the samples "
                      f"away from their class", GuidanceWarning, stacklevel=2)
    elif w > SATURATED_W:
        warnings.warn(f"w = {w:g} is above {SATURATED_W:g} (the paper uses 0..4): the guidance term swamps the "
                      f"model and the samples saturate", GuidanceWarning, stacklevel=2)
    return w


def scale_from_w(w: float) -> float:
    """The diffusers/Imagen guidance scale s = 1 + w."""
    return 1.0 + w


def w_from_scale(s: float) -> float:
    """The paper's guidance strength w = s − 1."""
    return s - 1.0


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, w: torch.Tensor | float) -> torch.Tensor:
    """(1 + w)·cond − w·uncond (Eq. 6). The weights sum to 1, so this works on ε, x̂ or scores alike."""
    return cond + w * (cond - uncond)


def cond_and_uncond(eps_model: EpsModel, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor,
                    null_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ε(z, c) and ε(z, ∅), each (B, *data_shape), from one doubled batch (cond + null) through eps_model, or from
    eps_model.cond_and_uncond(z, lam, c) when the model has one: an exact model gets both for less than two forwards."""
    if hasattr(eps_model, "cond_and_uncond"):
        return eps_model.cond_and_uncond(z, lam, c)
    null = torch.full_like(c, null_label)
    return eps_model(torch.cat([z, z]), torch.cat([lam, lam]), torch.cat([c, null])).chunk(2)


class Guided:
    """An eps_model that applies CFG with strength w to `eps_model`, using one doubled batch (cond + null).

    w may be a float, a (B,) tensor with one w per sample (several guidance strengths in one batch), or a function
    of λ of shape (B,) -> (B,) (a guidance schedule or interval).
    """

    def __init__(self, eps_model: EpsModel, w: GuidanceWeight, null_label: int):
        self.eps_model = eps_model
        if isinstance(w, torch.Tensor):
            for value in w.unique().tolist():  # each distinct w checked (and warned about) once
                check_w(value)
        elif not callable(w):
            w = check_w(w)
        self.w = w
        self.null_label = int(null_label)
        self.num_classes = self.null_label

    def weight(self, lam: torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
        """w as a scalar, or broadcast against `like` when it is per sample or depends on λ."""
        w = self.w(lam) if callable(self.w) else self.w
        return expand_like(w, like) if isinstance(w, torch.Tensor) else w

    def pair(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction guidance starts from and the one it steers away from: ε(z, c) and ε(z, ∅)."""
        return cond_and_uncond(self.eps_model, z, lam, c, self.null_label)

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if isinstance(self.w, float) and self.w == 0:
            return self.eps_model(z, lam, c)
        cond, reference = self.pair(z, lam, c)
        return cfg_combine(cond, reference, self.weight(lam, cond))


def guided(eps_model: EpsModel, w: GuidanceWeight, null_label: int | None = None) -> Guided:
    """Wrap a conditional eps_model with CFG of strength w (s = 1 + w).

    The null label defaults to `eps_model.num_classes`, as every cfgedu model defines it.
    """
    return Guided(eps_model, w, default_null_label(eps_model, null_label, "guided"))


def unconditional(eps_model: EpsModel, null_label: int) -> EpsModel:
    """eps_model with every label replaced by ∅: ε(z, ∅) as a model of (z, λ, c)."""
    return lambda z, lam, c: eps_model(z, lam, torch.full_like(c, null_label))


def default_null_label(eps_model: EpsModel, null_label: int | None, caller: str) -> int:
    """null_label, or eps_model.num_classes when it is None; a ValueError naming `caller` when neither exists."""
    if null_label is None:
        null_label = getattr(eps_model, "num_classes", None)
        if null_label is None:
            raise ValueError(f"{caller}() needs null_label= for a model without a num_classes attribute")
    return null_label


def interval_weight(w: float, lam_low: float, lam_high: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Guidance applied only for λ in [lam_low, lam_high] and 0 elsewhere (Kynkäänniemi et al. 2024)."""
    w = check_w(w)
    if not lam_low < lam_high:
        raise ValueError(f"the guidance interval needs lam_low < lam_high, got {lam_low} and {lam_high}")
    return lambda lam: torch.where((lam >= lam_low) & (lam <= lam_high), w, 0.0).to(lam.dtype)


# ---------------------------------------------------------------------------------------------- classifier guidance


def classifier_log_prob_gradient(classifier: Classifier, z: torch.Tensor, lam: torch.Tensor,
                                 c: torch.Tensor) -> torch.Tensor:
    """∇_z log p_φ(c|z_λ) by autograd through log_softmax(classifier(z, λ)), z's shape. Differentiable in turn when
    z requires grad and grad mode is on (a Jacobian of the guided field); otherwise it keeps no graph."""
    create_graph = torch.is_grad_enabled() and z.requires_grad
    with torch.enable_grad():
        z_in = z if z.requires_grad else z.detach().requires_grad_(True)
        logits = check_logits(classifier(z_in, lam), z.shape[0])
        check_labels(c, logits.shape[1], batch=z.shape[0], allow_null=False)
        log_prob = torch.log_softmax(logits, dim=1).gather(1, c[:, None]).sum()
        (grad,) = torch.autograd.grad(log_prob, z_in, create_graph=create_graph)
    return grad


class ClassifierGuided:
    """Classifier guidance as an eps_model (Ho & Salimans 2022, Sec. 3.1; Dhariwal & Nichol 2021):

        ε̃(z, c) = ε(z, c) − w·σ_λ·∇_z log p_φ(c|z_λ)  ≈  −σ_λ ∇_z [log p(z|c) + w log p_φ(c|z)].

    w = 0 is the conditional model itself. With unconditional=True the base is ε(z, ∅) instead (the classifier
    still guides towards c): weight w + 1 there equals weight w on the conditional model, since
    p(z|c)·p(c|z)^w ∝ p(z)·p(c|z)^{w+1}. With the exact posterior as the classifier this is exact-score CFG.
    """

    def __init__(self, eps_model: EpsModel, classifier: Classifier, w: float, null_label: int,
                 unconditional: bool = False):
        self.eps_model, self.classifier, self.w = eps_model, classifier, check_w(w)
        self.num_classes = self.null_label = int(null_label)
        self.unconditional = unconditional

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        check_labels(c, self.num_classes, batch=z.shape[0], allow_null=False)
        eps = self.eps_model(z, lam, torch.full_like(c, self.null_label) if self.unconditional else c)
        if self.w == 0:
            return eps
        sigma = alpha_sigma(lam.to(eps.dtype))[1]
        gradient = classifier_log_prob_gradient(self.classifier, z, lam, c)
        return eps - self.w * expand_like(sigma, eps) * gradient.to(eps.dtype)


def classifier_guided(eps_model: EpsModel, classifier: Classifier, w: float, null_label: int | None = None,
                      unconditional: bool = False) -> ClassifierGuided:
    """Wrap eps_model with classifier guidance of strength w by `classifier(z, lam) -> logits` (any callable:
    a trained noisy classifier, or an exact posterior's log). The null label defaults to eps_model.num_classes."""
    null_label = default_null_label(eps_model, null_label, "classifier_guided")
    return ClassifierGuided(eps_model, classifier, w, null_label, unconditional)
