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
# **What you learn.** How one network learns both the conditional noise predictor $\varepsilon_\theta(z, c)$ and
# the unconditional one $\varepsilon_\theta(z) = \varepsilon_\theta(z, \varnothing)$ by *label dropout*
# (Algorithm 1 of Ho & Salimans 2022), trained through the same loop cfgedu uses for images; how close it
# gets to the exact optimum $\varepsilon^*$ of notebook 01, level by level; and what the dropout rate
# $p_\text{uncond}$ trades between the two.
#
# **Time.** About 20 s in fast mode (`CFGEDU_FAST=1`, what CI runs: a small network, a few hundred steps)
# and 2–4 minutes in full mode on a 2-core CPU (three 3000-step runs of the 3×128 MLP).

# %% tags=["parameters"]
import os

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
STEPS = 300 if FAST else 3000  # optimisation steps per run
BATCH = 256 if FAST else 1024
LR = 5e-3 if FAST else 2e-3
WIDTH = 64 if FAST else 128  # hidden units per layer
DEPTH = 2 if FAST else 3  # hidden layers
EVAL_POINTS = 10_000 if FAST else 20_000  # fresh (z, λ, c) draws for the ε error
P_UNCOND = (0.1, 0.5)  # dropout rates compared in the last section

# %%
import matplotlib.pyplot as plt
import torch

from cfgedu import GaussianMixture
from cfgedu.engine.experiment import build_network, train_experiment
from cfgedu.engine.presets import toy_experiment
from cfgedu.frontend.widgets import LossCurve
from cfgedu.toy.learned import eps_relative_errors

mixture = GaussianMixture.three_gaussians()
settings = {"batch_size": BATCH, "lr": LR, "width": WIDTH, "depth": DEPTH}


def train_toy(p_uncond: float, on_log=None):
    """The toy preset's ε-MLP trained in memory with Algorithm 1; returns its EMA weights and their ε errors."""
    experiment = toy_experiment("mlp", STEPS, p_uncond=p_uncond, **settings)
    ema = train_experiment(experiment, None, progress=False, on_log=on_log).ema.eval()
    return ema, eps_relative_errors(ema, mixture, EVAL_POINTS)

# %% [markdown]
# ## 1. Algorithm 1, with a live loss curve
#
# Each step draws fresh $(x, c) \sim p(x, c)$ from the mixture, replaces $c$ by the null label $\varnothing$ with
# probability $p_\text{uncond}$, draws $\lambda \sim p(\lambda)$ (the truncated hyperbolic secant of §2) and
# $\varepsilon \sim \mathcal N(0, I)$, and takes an AdamW step on
#
# $$\big\|\varepsilon_\theta(\alpha_\lambda x + \sigma_\lambda \varepsilon,\ \lambda,\ c) - \varepsilon\big\|^2 .$$
#
# The network is a SiLU MLP on $z$, low-frequency features of $\lambda$ and a class embedding with one extra
# row for $\varnothing$. It is *preconditioned*: $\varepsilon_\theta = \sigma(\kappa z + \alpha F_\theta)$ with
# $\kappa = 1/(\alpha^2 s^2 + \sigma^2)$ ($s$ = 1, the data scale, so $\kappa = 1$ here; see `cfgedu/nets/mlp.py`):
# its trunk $F_\theta$ has an $O(1)$ target at every noise level, and the class only acts through $\alpha F_\theta$,
# which vanishes at pure noise exactly as the class dependence of $\varepsilon^*$ does.
# The loss never reaches 0: at high $\lambda$ the noise $\varepsilon$ is
# unpredictable from $z$, so what is learned is its conditional mean $\varepsilon^*$.

# %%
curve = LossCurve()
display(curve)  # noqa: F821 (IPython's display)
model, errors = train_toy(P_UNCOND[0], on_log=curve)
errors

# %% [markdown]
# The relative errors $\mathbb E\|\varepsilon_\theta - \varepsilon^*\|^2 / \mathbb E\|\varepsilon^*\|^2$ above are
# measured on fresh draws $\lambda \sim p(\lambda)$, $z \sim p_\lambda(z|c)$ (cond) or $z \sim p_\lambda(z)$ with
# the null label (uncond), against the closed-form $\varepsilon^*$ of the mixture. The full run reaches ≈ 2e-4
# (cond) and ≈ 4e-3 (uncond). An untrained network is not at 1: its preconditioner is the exact
# $\varepsilon$ of $\mathcal N(0, I)$ data, already a fair guess of the marginal (the uncond baseline is a few
# percent), but it knows nothing of the classes.

# %%
untrained = eps_relative_errors(build_network(toy_experiment("mlp", STEPS, **settings)).eval(), mixture, EVAL_POINTS)
print({"untrained": untrained})
assert errors["cond"] < 0.1 * untrained["cond"]
assert errors["uncond"] < untrained["uncond"]
if not FAST:
    assert errors["cond"] <= 0.01 and errors["uncond"] <= 0.01

# %% [markdown]
# ## 2. Learned against exact, level by level
#
# The same error at fixed $\lambda$. Both ends are easy for this network: at low $\lambda$, $\varepsilon^* \approx z$
# (built into the preconditioner), at high $\lambda$ it shrinks like $\sigma_\lambda$. The unconditional
# predictor is learned from only $p_\text{uncond}$ of the batch, and must represent a posterior-weighted blend
# of three components, so it is the harder of the two.

# %%
levels = torch.linspace(-8, 8, 9).tolist()
by_level = [eps_relative_errors(model, mixture, 4000, lam=lam) for lam in levels]
fig, ax = plt.subplots(figsize=(5, 3.2))
for key in ("cond", "uncond"):
    ax.semilogy(levels, [errors[key] for errors in by_level], "o-", label=key)
ax.set(xlabel="λ", ylabel="relative ε error", title="learned vs exact ε* per level")
ax.legend()

# %% [markdown]
# Arrows of $\varepsilon_\theta$ (red) and $\varepsilon^*$ (black) at $\lambda = 0$, for class 0 and for $\varnothing$.

# %%
from cfgedu.toy.grid import Grid2D  # noqa: E402

points = Grid2D(2.6, 13).points()
lam0 = torch.zeros(len(points), dtype=torch.float64)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
for ax, label, title in zip(axes, (0, mixture.num_classes), ("class 0", "null label ∅"), strict=True):
    c = torch.full((len(points),), label)
    with torch.no_grad():
        learned = model(points.float(), lam0.float(), c).double()
    exact = mixture.eps(points, lam0, c)
    ax.quiver(*points.T, *exact.T, color="k", angles="xy", scale_units="xy", scale=3)
    ax.quiver(*points.T, *learned.T, color="tab:red", angles="xy", scale_units="xy", scale=3, alpha=0.7)
    ax.set(aspect="equal", xticks=[], yticks=[], title=f"ε at λ = 0, {title}")

# %% [markdown]
# ## 3. The effect of $p_\text{uncond}$
#
# Label dropout splits one network's capacity and one batch's examples between two tasks. More dropout feeds
# the unconditional predictor (which CFG needs for its $-w\,\varepsilon_\theta(z)$ term) at the cost of the
# conditional one. The paper found $p_\text{uncond} = 0.1$ or $0.2$ best on ImageNet and $0.5$ worse.

# %%
runs = {P_UNCOND[0]: errors}
for p in P_UNCOND[1:]:
    runs[p] = train_toy(p)[1]
fig, ax = plt.subplots(figsize=(5, 3.2))
width = 0.35
for i, key in enumerate(("cond", "uncond")):
    ax.bar([j + i * width for j in range(len(runs))], [runs[p][key] for p in runs], width,
           label=key)
ax.set(xticks=[j + width / 2 for j in range(len(runs))], xticklabels=[f"p_uncond = {p}" for p in runs],
       yscale="log", ylabel="relative ε error")
ax.legend()

# %%
assert runs[P_UNCOND[-1]]["uncond"] < runs[P_UNCOND[0]]["uncond"]
