# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Learning the score: Algorithm 1 on the three-Gaussian toy
#
# **What you will learn**
# - how one network learns both $\varepsilon_\theta(z, c)$ and $\varepsilon_\theta(z, \varnothing)$ by *label dropout*
#   (Algorithm 1 of Ho & Salimans 2022), written out as a ten-line training step
# - what the noise-level distribution $p(\lambda) \propto \operatorname{sech}(\lambda/2)$ is and why training
#   draws λ from it
# - how close a small network gets to the exact $\varepsilon^*$ of notebook 01, noise level by noise level
# - what the dropout rate $p_\text{uncond}$ trades between the conditional and the unconditional model
#
# **Assumes** notebook 01 (the forward process, $\varepsilon^* = -\sigma\nabla\log p_\lambda$, the null label
# $\varnothing$). **Takes** about 10 seconds in fast mode (a small network, a few hundred steps) and about 1 minute in
# full mode on a 2-core CPU (two 3000-step runs of the 3×128 MLP).

# %% tags=["parameters"]
import os

import cfgedu  # noqa: F401 (first, before torch: it lets idle OpenMP threads sleep, not spin)

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
STEPS = 300 if FAST else 3000  # optimisation steps per run
BATCH = 256 if FAST else 1024
LR = 5e-3 if FAST else 2e-3
WIDTH = 64 if FAST else 128  # hidden units per layer
DEPTH = 2 if FAST else 3  # hidden layers
EVAL_POINTS = 10_000 if FAST else 20_000  # fresh (z, λ, c) draws for the ε error
P_UNCOND = (0.1, 0.5)  # dropout rates compared in §4

# %%
import matplotlib.pyplot as plt
import torch

from cfgedu import GaussianMixture
from cfgedu.core.losses import algorithm1_loss, draw_noise
from cfgedu.core.schedule import LogSNRSchedule, alpha_sigma
from cfgedu.core.tensors import make_generator
from cfgedu.engine.experiment import build_network, train_experiment
from cfgedu.engine.presets import toy_experiment
from cfgedu.frontend.widgets import LossCurve
from cfgedu.toy.grid import Grid2D
from cfgedu.toy.learned import eps_relative_errors

mixture = GaussianMixture.three_gaussians()
settings = {"batch_size": BATCH, "lr": LR, "width": WIDTH, "depth": DEPTH}

# %% [markdown]
# ## 1. One network, two models: Algorithm 1
#
# CFG needs two predictions at sampling time, $\varepsilon(z, c)$ and $\varepsilon(z, \varnothing)$. Training two
# networks would double the cost; the paper trains **one** network whose class input has an extra value, the null
# label $\varnothing$, and simply forgets the label of a random fraction $p_\text{uncond}$ of each batch. Algorithm 1,
# for one example:
#
# 1. draw $(x, c)$ from the data;
# 2. with probability $p_\text{uncond}$ replace $c$ by $\varnothing$;
# 3. draw a noise level $\lambda \sim p(\lambda)$;
# 4. draw $\varepsilon \sim \mathcal N(0, I)$ and noise the data,
#    $z_\lambda = \alpha_\lambda x + \sigma_\lambda\varepsilon$;
# 5. take a gradient step on $\|\varepsilon_\theta(z_\lambda, \lambda, c) - \varepsilon\|^2$.
#
# Step 5's minimiser is $\varepsilon^*(z, c) = \mathbb E[\varepsilon|z, c]$ for the examples that kept their label,
# and $\varepsilon^*(z, \varnothing) = \mathbb E[\varepsilon|z]$, the unconditional noise prediction, for those that
# did not: one loss, both models (each is $-\sigma$ times a score, notebook 01, §2).
#
# **Which noise levels?** Step 3 draws λ from a truncated hyperbolic secant, $p(\lambda) \propto
# \operatorname{sech}(\lambda/2)$ on $[-20, 20]$, by drawing $u \sim U[0, 1]$ and setting
# $\lambda = -2\log\tan(a u + b)$ (with $a, b$ chosen to hit the two ends). It is the cosine schedule of improved
# DDPM written in λ: most training happens around $\lambda = 0$, where the data is half signal, half noise. That is
# where the examples teach the network most: at the two ends $\varepsilon^*$ is nearly trivial ($\approx z$ at pure
# noise, and small for nearly clean data), while in the middle it depends on everything about the data.

# %%
schedule = LogSNRSchedule()
draws = schedule.sample_lam(200_000, make_generator(0), dtype=torch.float64)
levels = torch.linspace(-20, 20, 401, dtype=torch.float64)
fig, ax = plt.subplots(figsize=(5, 3))
ax.hist(draws.numpy(), bins=200, range=(-20, 20), density=True, alpha=0.5, label="draws λ = −2 log tan(a·u + b)")
ax.plot(levels.numpy(), schedule.density(levels).numpy(), "k", label="sech(λ/2)/(4a)")
ax.set(xlabel="λ (log-SNR)", ylabel="density", title="p(λ): where training spends its examples")
ax.legend(fontsize=8);

# %% [markdown]
# Here is one training step of Algorithm 1 written out for a batch. The library's engine does exactly this (with
# the noise of a whole global batch drawn once, so that a run split over several processes takes the same steps):

# %%
def algorithm1_step(model, optimizer, x, c, p_uncond: float, generator: torch.Generator) -> float:
    """One AdamW step on a batch x (B, 2), c (B,): Algorithm 1, steps 2-5."""
    drop = torch.rand(len(c), generator=generator) < p_uncond  # step 2: which labels become ∅
    lam = schedule.sample_lam(len(c), generator)  # step 3: λ ~ p(λ)
    eps = torch.randn(x.shape, generator=generator)  # step 4
    alpha, sigma = alpha_sigma(lam)
    z = alpha[:, None] * x + sigma[:, None] * eps  # z_λ = α x + σ ε
    labels = torch.where(drop, torch.full_like(c, mixture.num_classes), c)  # ∅ = num_classes
    loss = ((model(z, lam, labels) - eps) ** 2).mean()  # step 5: ‖ε_θ(z_λ, c̃) − ε‖²
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


network = build_network(toy_experiment("mlp", STEPS, **settings))
x, c = mixture.sample_labelled(64, make_generator(1))
frozen = torch.optim.SGD(network.parameters(), lr=0.0)  # lr 0: the weights stay put for the comparison
ours = algorithm1_step(network, frozen, x.float(), c, 0.1, make_generator(2))
library = algorithm1_loss(network, x.float(), c, draw_noise(64, (2,), 0.1, make_generator(2)), mixture.num_classes)
print(f"this step's loss {ours:.6f}; the library's Algorithm 1 on the same draws {library.item():.6f}")

# %% [markdown]
# ## 2. Training, with a live loss curve
#
# The network is a SiLU MLP on $z$, a few smooth features of λ and a learned class embedding with one extra row for
# $\varnothing$. It is *preconditioned*: $\varepsilon_\theta = \sigma(\kappa z + \alpha F_\theta)$ with
# $\kappa = 1/(\alpha^2 d^2 + \sigma^2)$, where $d = 1$ is the data's scale. The term $\sigma\kappa z$ is the exact
# $\varepsilon$ of $\mathcal N(0, d^2 I)$ data, so the trunk $F_\theta$ only learns a correction of size $O(1)$ at every
# noise level; and the class enters only through $\alpha F_\theta$, which vanishes at pure noise exactly as the class
# dependence of $\varepsilon^*$ does (notebook 01's implicit classifier is flat at low λ).
#
# The `toy` preset trains it with AdamW on fresh draws from the mixture. The loss never reaches 0: the noise
# $\varepsilon$ is not predictable from $z$ (at high λ hardly at all), so what is learned is its conditional mean.

# %%
def train_toy(p_uncond: float, on_log=None):
    """The toy preset's ε-MLP trained in memory with Algorithm 1; returns its EMA weights and their ε errors."""
    experiment = toy_experiment("mlp", STEPS, p_uncond=p_uncond, **settings)
    ema = train_experiment(experiment, None, progress=False, on_log=on_log).ema.eval()
    return ema, eps_relative_errors(ema, mixture, EVAL_POINTS)


curve = LossCurve().show()
model, errors = train_toy(P_UNCOND[0], on_log=curve)
untrained = eps_relative_errors(build_network(toy_experiment("mlp", STEPS, **settings)).eval(), mixture, EVAL_POINTS)
print(f"relative ε error, trained:   cond {errors['cond']:.1e}, uncond {errors['uncond']:.1e}")
print(f"relative ε error, untrained: cond {untrained['cond']:.1e}, uncond {untrained['uncond']:.1e}")

# %% [markdown]
# The **relative ε error** is $\mathbb E\|\varepsilon_\theta - \varepsilon^*\|^2 / \mathbb E\|\varepsilon^*\|^2$ on
# fresh draws $\lambda \sim p(\lambda)$, $z \sim p_\lambda(z|c)$ with the true class ("cond"), or with the null label
# ("uncond"), against the closed-form $\varepsilon^*$ of the mixture. The weights measured are the exponential moving
# average (EMA) of the trained ones, which is what every sampler in this course uses. The untrained network is not at
# 1: its preconditioner is already the exact ε of $\mathcal N(0, I)$ data, a fair guess of the marginal, but it knows
# nothing of the classes. The full run reaches about 2e-4 (cond) and 4e-3 (uncond).
#
# ## 3. Learned against exact, level by level
#
# The same error at fixed λ tells where the network is good. At the noisy end (low λ) it is tiny: there
# $\varepsilon^* \approx z$, which the preconditioner builds in. Toward the clean end the *relative* error grows,
# because $\varepsilon^*$ itself shrinks like $\sigma_\lambda$ (nearly clean data leaves little noise to explain), and
# the unconditional model, which must tell which class a point came from, has the harder job there.

# %%
lams = torch.linspace(-8, 8, 9).tolist()
by_level = [eps_relative_errors(model, mixture, 4000, lam=lam) for lam in lams]
fig, ax = plt.subplots(figsize=(5, 3.2))
for key in ("cond", "uncond"):
    ax.semilogy(lams, [errors_at[key] for errors_at in by_level], "o-", label=key)
ax.set(xlabel="λ", ylabel="relative ε error", title="learned vs exact ε* per level")
ax.legend();

# %% [markdown]
# A large relative error at the clean end costs little when sampling: the sampler uses
# $\hat x = (z - \sigma\varepsilon)/\alpha$, whose error is $(\sigma/\alpha)$ times the ε error, and
# $\sigma/\alpha \to 0$ there. The middle levels, where the classes overlap, are where ε errors turn into sample
# errors. Seen as arrows at $\lambda = 0$: $\varepsilon_\theta$ (red) over $\varepsilon^*$ (blue), for class 0 and
# for $\varnothing$.

# %%
points = Grid2D(2.6, 13).points()
lam0 = torch.zeros(len(points), dtype=torch.float64)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
for ax, label, title in zip(axes, (0, mixture.num_classes), ("class 0", "null label ∅"), strict=True):
    labels = torch.full((len(points),), label)
    with torch.no_grad():
        learned = model(points.float(), lam0.float(), labels).double()
    exact = mixture.eps(points, lam0, labels)
    ax.quiver(*points.T, *exact.T, color="tab:blue", angles="xy", scale_units="xy", scale=3)
    ax.quiver(*points.T, *learned.T, color="tab:red", angles="xy", scale_units="xy", scale=3, alpha=0.7)
    ax.set(aspect="equal", xticks=[], yticks=[], title=f"ε at λ = 0, {title}")

# %% [markdown]
# ## 4. The effect of $p_\text{uncond}$
#
# Label dropout splits one network's capacity and each batch's examples between two tasks. More dropout feeds the
# unconditional predictor (which CFG needs for its $-w\,\varepsilon_\theta(z, \varnothing)$ term) at the cost of the
# conditional one. The paper found $p_\text{uncond} = 0.1$ or $0.2$ best on ImageNet and $0.5$ worse (its Table 1).

# %%
runs = {P_UNCOND[0]: errors}
for p in P_UNCOND[1:]:
    runs[p] = train_toy(p)[1]
fig, ax = plt.subplots(figsize=(5, 3.2))
width = 0.35
for i, key in enumerate(("cond", "uncond")):
    ax.bar([j + i * width for j in range(len(runs))], [runs[p][key] for p in runs], width, label=key)
ax.set(xticks=[j + width / 2 for j in range(len(runs))], xticklabels=[f"p_uncond = {p}" for p in runs],
       yscale="log", ylabel="relative ε error")
ax.legend();

# %% [markdown]
# With $p_\text{uncond} = 0.5$ the unconditional error drops and the conditional error rises: the trade the paper
# describes. Notebook 04 shows what it does to the FID/IS trade-off once the two models are combined by guidance.
#
# ## Takeaways
# - Algorithm 1 is the ordinary ε-prediction loss with one change: a fraction $p_\text{uncond}$ of the labels is
#   replaced by $\varnothing$, so one network learns $\varepsilon(z, c)$ and $\varepsilon(z, \varnothing)$ at once.
# - The loss's minimiser is the conditional mean of the noise, i.e. the score (notebook 01); the loss itself stays
#   far above 0.
# - Noise levels are drawn from $p(\lambda) \propto \operatorname{sech}(\lambda/2)$, concentrated around λ = 0.
# - A small preconditioned MLP gets close to the exact ε on this toy (relative errors of about $2\cdot10^{-4}$
#   conditional and $4\cdot10^{-3}$ unconditional in full mode); the unconditional model is the harder of the two,
#   and $p_\text{uncond}$ moves error from one to the other.
#
# ## Try this
# - Set `P_UNCOND = (0.1, 0.9)`: with 90% of labels dropped, how much worse does the conditional model get, and does
#   the unconditional one still improve?
# - Train with `LR = 2e-2`: watch the live loss curve. What does the EMA buy you when the raw weights are noisy?
# - Set `STEPS = 1000` (full mode) and compare the per-level errors of §3 with the 3000-step run: which noise levels
#   improve last?
#
# ## References
# - J. Ho, T. Salimans, *Classifier-Free Diffusion Guidance*, [arXiv:2207.12598](https://arxiv.org/abs/2207.12598):
#   §2 (p(λ), Eq. 5), §3.2 (Algorithm 1), Table 1 (p_uncond).
# - A. Nichol, P. Dhariwal, *Improved Denoising Diffusion Probabilistic Models*,
#   [arXiv:2102.09672](https://arxiv.org/abs/2102.09672): the cosine schedule.
# - T. Karras et al., *Elucidating the Design Space of Diffusion-Based Generative Models*,
#   [arXiv:2206.00364](https://arxiv.org/abs/2206.00364): preconditioning the network's input and output.

# %% [markdown]
# ## Checks

# %%
assert abs(ours - library.item()) < 1e-5, "the written-out step must compute the library's Algorithm 1 loss"
assert errors["cond"] < 0.1 * untrained["cond"] and errors["uncond"] < untrained["uncond"], "training must help"
if not FAST:
    assert errors["cond"] <= 0.01 and errors["uncond"] <= 0.01, "the full run must get within 1% of ε*"
assert runs[P_UNCOND[-1]]["uncond"] < runs[P_UNCOND[0]]["uncond"], "more dropout must help the unconditional model"
print("all checks passed")
