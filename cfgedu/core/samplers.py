"""Algorithm 2 of Ho & Salimans (2022) and three deterministic solvers of the probability-flow ODE, for any eps_model.

Sampling runs on an increasing λ grid from λ_min (noise) to λ_max and returns x̂ at λ_max. All noise
comes from the `generator` argument. A guided model is just another eps_model (see guidance.py).

The deterministic methods are all DDIM steps z' = α' x̂ + σ' (z − α x̂)/σ, which solve the ODE exactly while x̂
stays constant; the higher-order ones only feed the step a better x̂ (Lu et al. 2022, Karras et al. 2022):
- "ddim": x̂ at the start of the step (first order);
- "heun": the x̂ of the mean of the ε at the start and at the DDIM prediction of the end (second order, two
  evaluations a step; the last step, into λ_max, stays first order as in EDM's Algorithm 1);
- "dpm++2m": DPM-Solver++(2M), x̂ extrapolated linearly in the half log-SNR from this step's and the last
  step's x̂ (second order, one evaluation a step: it reuses the previous one); the first step has no previous x̂
  and the last, into λ_max, stays first order (DPM-Solver++'s lower_order_final).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_in_range, check_labels, check_positive_int
from .guidance import EpsModel
from .parameterization import eps_to_x, x_to_eps
from .schedule import LogSNRSchedule, alpha_sigma, posterior, transition
from .tensors import expand_like

METHODS = ("ancestral", "ddim", "heun", "dpm++2m")
Corrector = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def ancestral_step(z: torch.Tensor, x_hat: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor,
                   v: float, generator: torch.Generator, noise_scale: float = 1.0) -> torch.Tensor:
    """z' ~ N(μ̃_{λ'|λ}(z, x̂), (σ̃²_{λ'|λ})^{1−v} (σ²_{λ|λ'})^v) (Eq. 4), the noise's std times noise_scale."""
    mean, posterior_var = posterior(z, x_hat, lam, lam_next)
    _, forward_var = transition(lam, lam_next)
    std = noise_scale * (posterior_var ** (1 - v) * forward_var ** v).sqrt()
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return mean + expand_like(std, z) * noise


def ddim_step(z: torch.Tensor, x_hat: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor,
              eps: torch.Tensor | None = None) -> torch.Tensor:
    """The deterministic DDIM update z' = α' x̂ + σ' ε̂, with ε̂ = (z − α x̂)/σ unless `eps` is given (CFG++ renoises
    with the unconditional ε instead)."""
    alpha_next, sigma_next = alpha_sigma(lam_next)
    eps = x_to_eps(z, x_hat, lam) if eps is None else eps
    return expand_like(alpha_next, z) * x_hat + expand_like(sigma_next, z) * eps


def heun_x_hat(eps_model: EpsModel, z: torch.Tensor, x_hat: torch.Tensor, lam: torch.Tensor,
               lam_next: torch.Tensor, c: torch.Tensor, clip_x: float | None) -> torch.Tensor:
    """Heun's x̂ for the step λ → λ': with y = z/α and σ̄ = σ/α = e^{−λ/2} the ODE is dy/dσ̄ = ε, so the trapezoid
    rule averages ε at the start and at the DDIM (Euler) prediction z'_pred of the end: x̂ = (z − σ (ε + ε')/2)/α."""
    eps = x_to_eps(z, x_hat, lam)
    predicted = ddim_step(z, x_hat, lam, lam_next)
    eps_end = x_to_eps(predicted, denoise(eps_model, predicted, lam_next, c, clip_x), lam_next)
    return eps_to_x(z, (eps + eps_end) / 2, lam)


def dpm_solver_2m_x_hat(x_hat: torch.Tensor, previous_x_hat: torch.Tensor, lam_previous: torch.Tensor,
                        lam: torch.Tensor, lam_next: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M)'s x̂ for the step λ → λ': D = (1 + 1/(2r)) x̂_i − (1/(2r)) x̂_{i−1}, with r = h_{i−1}/h_i the
    ratio of the last step to this one in half log-SNR h = (λ' − λ)/2 (Lu et al. 2022, Algorithm 2)."""
    r = expand_like((lam - lam_previous) / (lam_next - lam), x_hat)
    return x_hat + (x_hat - previous_x_hat) / (2 * r)


def evaluations(method: str, steps: int) -> int:
    """Network evaluations (NFE) of one sample on a grid of `steps` points: one per point, and for Heun one more
    on every step but the last (a guided model's evaluation runs cond and null as one doubled batch)."""
    check_choice("method", method, METHODS)
    steps = check_positive_int("steps", steps)
    return steps + max(steps - 2, 0) if method == "heun" else steps


def steps_for(method: str, nfe: int) -> int:
    """The grid size whose sampling costs exactly `nfe` evaluations; a ValueError when none does."""
    nfe = check_positive_int("nfe", nfe)
    steps = nfe // 2 + 1 if method == "heun" and nfe > 1 else nfe
    if evaluations(method, steps) != nfe:
        raise ValueError(f"{method} costs an even number of evaluations (2T − 2 for T grid points); got nfe={nfe}")
    return steps


def denoise(eps_model: EpsModel, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor,
            clip_x: float | None = None) -> torch.Tensor:
    """x̃ = (z − σ ε̃)/α, optionally clipped to [−clip_x, clip_x]; lam is (B,), or (1,) for one level for all."""
    x_hat = eps_to_x(z, eps_model(z, lam.expand(len(z)), c), lam)
    return x_hat.clamp(-clip_x, clip_x) if clip_x is not None else x_hat


def sample(eps_model: EpsModel, data_shape: tuple[int, ...], c: torch.Tensor, *, generator: torch.Generator,
           schedule: LogSNRSchedule = LogSNRSchedule(), steps: int = 256, v: float = 0.3,
           method: str = "ancestral", dtype: torch.dtype = torch.float32, clip_x: float | None = None,
           num_classes: int | None = None, trajectory: bool = False, progress: bool = False,
           corrector: Corrector | None = None, noise_scale: float = 1.0, renoise: EpsModel | None = None):
    """Draw len(c) samples with Algorithm 2 (or a deterministic method) and return x̂ at λ_max, (B, *data_shape).

    With trajectory=True also returns the list of z_t, one (B, *data_shape) tensor per grid point.
    Labels are checked against num_classes (or eps_model.num_classes) when known.
    `corrector(z, lam, c, generator) -> z`, if given, is applied after every step at the λ the new state
    belongs to (λ_{t+1}, and λ_T for the final x̂), e.g. Langevin/MALA steps (see cfgedu.toy.correctors).
    `renoise(z, lam, c) -> ε`, if given, is the ε a DDIM step renoises x̂ with (CFG++: CFGPlusPlus.renoise in
    guidance_methods).
    """
    steps = check_positive_int("steps", steps)
    v = check_in_range("v", v, 0.0, 1.0)
    noise_scale = check_in_range("noise_scale", noise_scale, 0.0, math.inf)
    check_choice("method", method, METHODS)
    if renoise is not None and method != "ddim":
        raise ValueError(f"renoise= defines a DDIM step (CFG++); use method='ddim', not {method!r}")
    num_classes = num_classes if num_classes is not None else getattr(eps_model, "num_classes", None)
    if num_classes is not None:
        check_labels(c, num_classes)
    device = generator.device
    c = c.to(device)
    grid = schedule.grid(steps).to(device=device, dtype=dtype)  # (T,) increasing λ
    z = torch.randn((len(c), *data_shape), generator=generator, device=device, dtype=dtype)
    path, previous_x_hat = [z], None
    for t in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
        lam, lam_next = grid[t:t + 1], grid[t + 1:t + 2]  # (1,): the step's coefficients once, not once per sample
        x_hat = denoise(eps_model, z, lam, c, clip_x)
        if t == steps - 1:
            z = x_hat
        elif method == "ancestral":
            z = ancestral_step(z, x_hat, lam, lam_next, v, generator, noise_scale)
        else:
            step_x_hat = x_hat
            if method == "heun" and t < steps - 2:
                step_x_hat = heun_x_hat(eps_model, z, x_hat, lam, lam_next, c, clip_x)
            elif method == "dpm++2m" and previous_x_hat is not None and t < steps - 2:
                step_x_hat = dpm_solver_2m_x_hat(x_hat, previous_x_hat, grid[t - 1:t], lam, lam_next)
            eps = renoise(z, lam.expand(len(z)), c) if renoise is not None else None
            z = ddim_step(z, step_x_hat, lam, lam_next, eps)
        previous_x_hat = x_hat
        if corrector is not None:
            z = corrector(z, grid[min(t + 1, steps - 1)].expand(len(c)), c, generator)
        path.append(z)
    return (z, path) if trajectory else z
