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
# # 04 · The guidance trade-off, and what CFG really samples
#
# **What you learn.** Ho & Salimans (2022) sweep the guidance strength $w$ in
# $\tilde\varepsilon = (1+w)\,\varepsilon_\theta(z,c) - w\,\varepsilon_\theta(z)$ (scale $s = 1 + w$) and read FID
# against IS (Tables 1–2): more guidance buys class-typical samples (IS up) at the price of diversity (FID up
# beyond a small $w$). On the three-Gaussian toy every quantity is exact, so we redo that sweep — over $w$,
# `p_uncond` of learned MLPs and the number of steps $T$ — and then ask what no image experiment can: how far
# CFG samples are from the tilted distribution $\pi_w(x|c) \propto p(x|c)\,p(c|x)^w$ they are said to follow.
#
# **Time.** About 30 s in fast mode (`CFGEDU_FAST=1`, what CI runs: one briefly trained MLP, small sample
# sets) and about 15 minutes in full mode on a 2-core CPU (`python -m cfgedu toy-tradeoff --out DIR` runs the
# same sweep from the command line and caches the three trained MLPs).

# %% tags=["parameters"]
import os

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
OUT = "runs/toy_tradeoff_fast" if FAST else "runs/toy_tradeoff"  # the trained MLPs are cached here

# %%
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from cfgedu import GaussianMixture
from cfgedu.engine.experiment import train_experiment
from cfgedu.engine.presets import toy_experiment
from cfgedu.frontend.plotting import plot_boundary_push, plot_tradeoff
from cfgedu.frontend.widgets import GuidanceIntervalWidget
from cfgedu.toy.tradeoff import SWEEPS, run_sweep
from cfgedu.toy.tradeoff_tables import corrector_table, metric_table, sampler_table

mixture = GaussianMixture.three_gaussians()
config = SWEEPS["full"]
if FAST:
    config = replace(SWEEPS["fast"], ws=(0.0, 1.0, 3.0), p_unconds=(0.5,), steps=(16,), samples_per_class=200,
                     exact_samples_per_class=400, detail_steps=16, corrector_steps=(0, 4), corrector_T=8,
                     metric_points=200, train_steps=100, tv_bins=16)

# %% [markdown]
# ## 1. The sweep
# For each $w$ we draw samples per class and measure them with `cfgedu.toy.metrics`:
# - **FD**, the Fréchet distance between Gaussian fits,
#   $\|m_1-m_2\|^2 + \mathrm{tr}(C_1 + C_2 - 2(C_1^{1/2}C_2C_1^{1/2})^{1/2})$,
#   of all samples against the data $p(x)$: the FID axis;
# - **IS** $= \exp \mathbb{E}_x \mathrm{KL}(p(c|x)\,\|\,\hat p(c))$ with the exact Bayes posterior $p(c|x)$ (and with a
#   logistic regression fitted on data, which is well specified here): the IS axis, at most $K = 3$;
# - the **TV distance to $\pi_w$** on a 32×32 histogram,
#   beside the TV that exact draws from $\pi_w$ get (the noise floor).
#
# Learned models are the toy preset's ε-MLPs, trained with Algorithm 1 for each `p_uncond` (cached in `OUT`).

# %%
runs = {p: toy_experiment("mlp", config.train_steps, p_uncond=p, seed=config.seed) for p in config.p_unconds}
models = {p: train_experiment(experiment, Path(OUT) / f"p_uncond={p:g},steps={config.train_steps}", preset_name="toy",
                              progress=not FAST).ema.eval() for p, experiment in runs.items()}
sweep = run_sweep(config, models, mixture=mixture, progress=not FAST)
print(f"{len(sweep.rows)} rows in {sweep.seconds:.0f} s")

# %% [markdown]
# ## 2. The trade-off curve
# Each curve runs over $w$: IS rises with $w$ while FD first dips (a little guidance can help) and then grows.
# The guidance interval (guidance only for $\lambda \in [-3.4, 2.5]$, Kynkäänniemi et al. 2024) and a linear
# $w$ schedule are extra points.

# %%
fig, ax = plt.subplots(figsize=(7, 4.8))
plot_tradeoff(sweep, ax)
plt.show()

# %%
for p in config.p_unconds:
    rows = sweep.select(model="learned", p_uncond=p, T=max(config.steps))
    assert rows[-1]["is_bayes"] > rows[0]["is_bayes"], "guidance must raise the Bayes IS"

# %% [markdown]
# ## 3. Tables 1 and 2 in miniature
# The paper's Table 1 (ImageNet 64×64, columns `p_uncond`) has its best FID at $w = 0.1$ with
# `p_uncond` = 0.1 (1.55), IS rising from 53.7 ($w = 0$) to 260.2 ($w = 4$), and `p_uncond` = 0.5 worse along the
# frontier. Table 2 (128×128, columns $T$) finds $T = 256$ and $1024$ nearly equal and $T = 128$ worse at small
# $w$ (FID 3.04 against 2.43 at $w = 0.3$).
#
# What the full toy sweep shows (`python -m cfgedu toy-tradeoff`: three MLPs trained 3000 steps each,
# 2000 samples per class, T = 512 for the p_uncond table):
# - IS rises monotonically with $w$ for every `p_uncond` and every $T$, as in the paper.
# - FD rises monotonically from $w = 0$: **no FID dip at small $w$**. The unguided toy model is already almost
#   exact (FD ≈ 0.000 at $w = 0$), so guidance has nothing to repair; the paper's dip comes from an imperfect
#   ImageNet model whose samples guidance makes more typical.
# - `p_uncond` = 0.5 is worse along the frontier at large $w$ (at $w = 4$: FD 0.29 against 0.17 for 0.1, at
#   about the same IS), 0.2 lies between: the paper's ordering. The effect is small for $w \le 1$, and with
#   MLPs trained only 1000 steps the three curves were within a few hundredths of IS of each other.
# - $T$ hardly matters on the toy (IS within 0.04, slightly higher at $T$ = 32; FD within 0.012), unlike
#   Table 2's penalty at $T = 128$.
# - Learned-model CFG reaches a higher IS than exact-ε* CFG at the same $w$, and at the same IS a lower FD.

# %%
T = max(config.steps)
display(Markdown(f"**Table 1 analogue** (learned MLP, T = {T})\n\n"
                 + metric_table(sweep, "p_uncond", list(config.p_unconds), model="learned", T=T)))
display(Markdown(f"**Table 2 analogue** (learned MLP, p_uncond = {config.p_unconds[0]:g})\n\n"
                 + metric_table(sweep, "T", list(config.steps), model="learned", p_uncond=config.p_unconds[0])))

# %% [markdown]
# ## 4. What CFG samples
# With exact scores the CFG field is the score of $\rho_\lambda \propto p_\lambda(z|c)^{1+w} p_\lambda(z)^{-w}$,
# which is **not** the noised target $\pi_{w,\lambda}(z) = \int \pi_w(x|c)\,\mathcal N(z;\alpha x, \sigma^2 I)\,dx$
# (SPEC §4.4). The *ideal* sampler uses the exact $\varepsilon$ of $\pi_{w,\lambda}$, computed by quadrature on a
# grid ($\varepsilon = (z - \alpha\,\mathbb E[x|z])/\sigma$), and reaches $\pi_w$; CFG with DDIM or Algorithm 2
# does not.

# %%
display(Markdown(sampler_table(sweep)))

# %%
w_top = max(config.ideal_ws)
ideal = sweep.select(sampler="ideal", w=w_top)[0]
ddim = sweep.select(sampler="ddim", w=w_top)[0]
assert ideal["tv_to_target"] < ddim["tv_to_target"], "the ideal sampler must be closer to π_w than CFG-DDIM"

# %% [markdown]
# ## 5. The boundary push
# Distances $\|x - \mu_c\|$ from the class mean: CFG-DDIM pushes mass further out than $\pi_w$ itself
# (Chidambaram et al. 2024), the ideal sampler matches it.

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
plot_boundary_push(sweep, mixture, ax=ax)
plt.show()

# %% [markdown]
# ## 6. Correctors
# Because $\log\rho_\lambda$ is known in closed form, $K$ MALA steps
# $z \leftarrow z + h\nabla\log\rho_\lambda + \sqrt{2h}\,\xi$ (with a Metropolis test) can follow every sampler
# step (`sample(..., corrector=LangevinCorrector(mixture, w, K))`). As $\lambda \to \lambda_{\max}$,
# $\rho_\lambda \to \pi_w$, so more corrector steps bring the samples toward $\pi_w$.

# %%
display(Markdown(corrector_table(sweep)))

# %%
mala = sweep.select(sampler="ancestral-v0.3+mala")
assert mala[-1]["tv_to_target"] < mala[0]["tv_to_target"], "corrector steps must lower the TV to π_w"

# %% [markdown]
# ## 7. Guidance on an interval, with sliders
# Move $w$ and the $\lambda$ interval on which guidance is applied ($[-20, 20]$ is plain CFG). Guidance at high
# noise (low $\lambda$) decides which mode a sample joins; at low noise it only sharpens.

# %%
GuidanceIntervalWidget(mixture, w=3.0, per_class=150 if FAST else 1000)
