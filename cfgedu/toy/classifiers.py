"""How good a classifier hides inside a generative model? Three noisy classifiers of the 2D toy, side by side.

The paper doubts (Sec. 3.2, after Grandvalet & Bengio 2004) that inverting a generative model with Bayes' rule gives
a good classifier. Here the question is measured, per log-SNR λ, by accuracy and log-loss on the same noised draws
(x, c) ~ p(x, c), z = α_λ x + σ_λ ε, for
- the exact posterior p_λ(c|z) of the mixture (the Bayes-optimal classifier: `exact_classifier`);
- a trained noisy classifier p_φ(c | z_λ, λ) (cfgedu.nets.classifier, `toy-train --model classifier`);
- the implicit classifier p^i(c|z) of a learned ε_θ (`ImplicitClassifier`).
Every classifier is a callable classifier(z, lam) -> logits (B, K), as classifier guidance takes it.
"""
from __future__ import annotations

import math

import torch

from ..core.checks import check_batch, check_logits
from ..core.guidance import Classifier, EpsModel
from ..core.parameterization import eps_to_score
from .fields import as_float64, check_2d, noised_draws
from .grid import Grid2D
from .helmholtz import bilinear, helmholtz_hodge
from .mixture import GaussianMixture

CLASSIFIER_LAMS = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0)  # from near-prior noise to nearly clean data


def exact_classifier(mixture: GaussianMixture) -> Classifier:
    """(z, λ) ↦ log p_λ(c|z) for every c, (B, K) (GaussianMixture.log_posterior: a log-softmax, so that it neither
    underflows nor loses its gradient far from the data)."""
    return mixture.log_posterior


class ImplicitClassifier:
    """The implicit classifier p^i(c|z_λ) of a learned 2D eps_model, as probabilities (our construction: the paper
    uses only its gradient −(ε_θ(z, c) − ε_θ(z, ∅))/σ_λ, Sec. 3.2). At each level λ:

    1. the learned conditional scores s_c = −ε_θ(·, λ, c)/σ_λ on `grid` (which must cover the noised data);
    2. their conservative part ∇φ_c by the Helmholtz–Hodge split (cfgedu.toy.helmholtz): a learned field need not
       be a gradient, and its curl is dropped; the potential φ_c is log p_θ(z|c) up to a constant;
    3. p_θ(z|c) = exp(φ_c) / Σ_grid exp(φ_c)·Δ², normalised on the grid;
    4. Bayes' rule with the class weights π_c: p^i(c|z) = π_c p_θ(z|c) / Σ_c' π_c' p_θ(z|c'), with log p_θ(z|c)
       read at z by bilinear interpolation (clamped to the edge outside the grid).

    The unconditional ε_θ(z, ∅) is not used: its p_θ(z) need not equal Σ_c π_c p_θ(z|c), and dividing by it would
    not give probabilities that sum to 1. With the exact ε* this reproduces the mixture's posterior up to O(Δ²).
    """

    def __init__(self, eps_model: EpsModel, weights: torch.Tensor, grid: Grid2D = Grid2D(5.0, 128)):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.ndim != 1 or not (self.weights > 0).all():
            raise ValueError(f"class weights must be a 1-D tensor of positive numbers, got {self.weights.tolist()}")
        check_2d(eps_model, len(self.weights))
        self.eps_model, self.grid = as_float64(eps_model), grid
        self.num_classes = len(self.weights)

    def log_likelihoods(self, lam: float) -> torch.Tensor:
        """log p_θ(z|c) on the grid for every class, normalised there, float64 (n, n, K) [y, x, c]."""
        return torch.stack([self._log_likelihood(lam, c) for c in range(self.num_classes)], dim=-1)

    def _log_likelihood(self, lam: float, c: int) -> torch.Tensor:
        points, n = self.grid.points(), self.grid.n
        lam_batch = torch.full((len(points),), float(lam), dtype=torch.float64)
        with torch.no_grad():
            eps = self.eps_model(points, lam_batch, torch.full((len(points),), c)).to(torch.float64)
        potential = helmholtz_hodge(eps_to_score(eps, lam_batch).reshape(n, n, 2), self.grid).potential  # (n, n)
        return potential - torch.logsumexp(potential.reshape(-1), 0) - 2 * math.log(self.grid.cell)

    def __call__(self, z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """log p^i(c|z) at each point, (B, K) float64; one grid solve per distinct λ in the batch."""
        check_batch(z, lam)
        out = torch.empty(z.shape[0], self.num_classes, dtype=torch.float64)
        for level in torch.unique(lam).tolist():
            chosen = lam == level
            log_likelihood, _ = bilinear(self.grid, self.log_likelihoods(level), z[chosen])  # (b, K)
            out[chosen] = torch.log_softmax(log_likelihood + self.weights.log(), dim=1)
        return out


def classifier_scores(classifier: Classifier, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> dict:
    """{"accuracy", "log_loss"} of classifier(z, lam) -> logits against the labels c: the fraction of argmax hits
    and the mean −log p(c|z) in nats."""
    with torch.no_grad():
        logits = check_logits(classifier(z, lam), z.shape[0], c)
    log_probs = torch.log_softmax(logits.to(torch.float64), dim=1)  # (B, K)
    return {"accuracy": (log_probs.argmax(dim=1) == c).double().mean().item(),
            "log_loss": -log_probs.gather(1, c[:, None]).mean().item()}


def classifier_table(classifiers: dict[str, Classifier], mixture: GaussianMixture, lams=CLASSIFIER_LAMS,
                     points: int = 20_000, seed: int = 0) -> list[dict]:
    """Rows {"lambda", "model", "accuracy", "log_loss"}: every classifier at every λ, on the same `points` noised
    draws (x, c) ~ p(x, c), z = α_λ x + σ_λ ε (noised_draws with `seed`)."""
    if not classifiers or not lams:
        raise ValueError("classifier_table needs at least one classifier and one λ")
    rows = []
    for lam in lams:
        z, c, lam_batch = noised_draws(mixture, lam, points, seed)
        rows += [{"lambda": lam, "model": name, **classifier_scores(classifier, z, lam_batch, c)}
                 for name, classifier in classifiers.items()]
    return rows
