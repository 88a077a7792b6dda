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
# **What you will learn**
# - how the paper measures guidance (FID against IS, its Tables 1-2) and how the same trade-off looks on the toy,
#   where every metric is exact
# - what the samplers are (ancestral steps with variance exponent $v$, DDIM) and what the number of steps $T$ changes
# - how far CFG samples are from the tilted target $\pi_w$, and two ways to reach it: the ideal sampler and MALA
# - why guiding only on an interval of noise levels changes *which mode* a sample joins
#
# **Assumes** notebooks 01 (the tilted target $\pi_w$, $\rho_\lambda$), 02 (training the toy MLP) and 03 (the
# implicit classifier of a learned network).
# **Takes** about 15 seconds in fast mode and about 9 minutes in full mode (the default, and what the stored outputs
# show)
# on a
# 2-core CPU; `CFGEDU_MODE=medium` runs a smaller sweep in about 2 minutes. `python -m cfgedu toy-tradeoff --out
# DIR`
# runs the full sweep from the command line. The numbers quoted in the text are those of the stored full run.

# %% tags=["parameters"]
import os

import cfgedu  # noqa: F401 (first, before torch: it lets idle OpenMP threads sleep, not spin)

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
MODE = "fast" if FAST else os.environ.get("CFGEDU_MODE", "full")  # fast | medium | full
OUT = f"runs/toy_tradeoff_{MODE}"  # the trained MLPs are kept here and reused on the next run
STEP_COUNTS = (16, 32, 64) if FAST else (16, 32, 64, 128, 256)  # T in §5

# %%
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from cfgedu import GaussianMixture
from cfgedu.core.tensors import make_generator
from cfgedu.engine.experiment import train_experiment
from cfgedu.engine.presets import toy_experiment
from cfgedu.frontend.plotting import plot_boundary_push, plot_tradeoff
from cfgedu.frontend.widgets import GuidanceIntervalWidget
from cfgedu.toy.metrics import class_variance
from cfgedu.toy.sampling import class_samples
from cfgedu.toy.tradeoff import SWEEPS, run_sweep
from cfgedu.toy.tradeoff_tables import corrector_table, metric_table, sampler_table

mixture = GaussianMixture.three_gaussians()
config = {"full": SWEEPS["full"],
          "medium": replace(SWEEPS["full"], ws=(0.0, 0.3, 1.0, 2.0, 3.0, 4.0), steps=(32, 128),
                            samples_per_class=1000, exact_samples_per_class=2000, metric_points=1000),
          "fast": replace(SWEEPS["fast"], ws=(0.0, 1.0, 3.0), p_unconds=(0.5,), steps=(16,), samples_per_class=200,
                          exact_samples_per_class=400, detail_steps=16, corrector_steps=(0, 4), corrector_T=8,
                          metric_points=200, train_steps=100, tv_bins=16)}[MODE]

# %% [markdown]
# ## 1. How guidance is measured
#
# The paper sweeps the guidance strength $w$ of
# $\tilde\varepsilon = (1+w)\,\varepsilon_\theta(z,c) - w\,\varepsilon_\theta(z,\varnothing)$ (scale $s = 1 + w$) and
# reports two numbers per $w$ on 50,000 ImageNet samples:
#
# - **FID**, the Fréchet distance between Gaussian fits of Inception features of the samples and of the data,
#   $\|m_1 - m_2\|^2 + \operatorname{tr}\big(C_1 + C_2 - 2(C_1^{1/2}C_2C_1^{1/2})^{1/2}\big)$ with means $m$ and
#   covariances $C$ of the two sets: lower is closer to the data, in both quality and diversity;
# - **IS**, the Inception score $\exp\,\mathbb E_x\,\mathrm{KL}\big(p(c|x)\,\|\,\hat p(c)\big)$, where $p(c|x)$ is a
#   classifier's posterior for one sample and $\hat p(c)$ its average over all samples: high when each sample is
#   recognised confidently and the classes are balanced (at most the number of classes).
#
# On the toy the same formulas run on the 2D points themselves (we write **FD**, Fréchet distance, as no Inception
# network is involved), with the **exact** Bayes posterior $p(c|x)$ of the
# mixture as the classifier (and, as a check, a logistic regression fitted on data, which is exactly right here).
# So IS is at most 3. The toy adds what an image experiment cannot: the **total-variation distance (TV)** between the
# samples of each class and the tilted target $\pi_w(x|c)$ of notebook 01, on a 32×32 histogram (16×16 in fast mode),
# beside the TV that
# exact draws from $\pi_w$ get (the **noise floor**: what the sample size alone costs).
#
# ## 2. The samplers
#
# The paper fixes one sampler; the toy can ask whether the choice matters for what guidance produces.
#
# - **Ancestral, variance exponent $v$** (Algorithm 2, notebook 01 §3): each step draws $z'$ from the Gaussian
#   bridge between two levels; $v = 0$ uses the bridge's own (smallest) variance, $v = 1$ the forward step's
#   (largest), the paper's $v = 0.3$ between them in log space.
# - **DDIM** (Song et al. 2021): no noise after the first draw. From the current $z$ and the model's $\hat x$, the
#   next state is $z' = \alpha_{\lambda'}\hat x + \sigma_{\lambda'}\hat\varepsilon$ with
#   $\hat\varepsilon = (z - \alpha_\lambda\hat x)/\sigma_\lambda$: the same $\varepsilon$ carried to the next noise
#   level. With exact scores and many steps it follows the probability-flow ODE: the deterministic path whose
#   densities at every level are the same $p_\lambda$ as the noisy forward process's.
# - Guidance need not be constant in λ. **Guidance interval** (Kynkäänniemi et al. 2024): $w$ only for
#   $\lambda \in [-3.4, 2.5]$ (the range of noise levels σ/α they guided in, in Karras et al.'s EDM notation,
#   turned into λ), 0 elsewhere. **Linear schedule**: $w(\lambda) = 2w\,(1 - u(\lambda))$, with $u$ the schedule's
#   time of notebook 01 §3 ($u = 1$ pure noise, $u = 0$ data): guidance rises from 0 at pure noise to $2w$ at the
#   data, the same $w$ on average over the grid.
#
# ## 3. The sweep
#
# Learned rows use the toy preset's ε-MLP of notebook 02, trained once per $p_\text{uncond}$ (0.1, 0.2, 0.5) and
# kept in `OUT`; exact rows use the mixture's $\varepsilon^*$. Every row draws samples per class at one $w$ and
# measures them.

# %%
runs = {p: toy_experiment("mlp", config.train_steps, p_uncond=p, seed=config.seed) for p in config.p_unconds}
models = {p: train_experiment(experiment, Path(OUT) / f"p_uncond={p:g}", preset_name="toy",
                              progress=False).ema.eval() for p, experiment in runs.items()}
sweep = run_sweep(config, models, mixture=mixture, parts=("tradeoff",), progress=False)  # NFE, methods: notebook 05
print(f"{len(sweep.rows)} rows in {sweep.seconds:.0f} s")

# %% [markdown]
# ## 4. The trade-off curve
#
# One curve per model, $w$ increasing along it: IS on the horizontal axis (right: more class-typical), FD on the
# vertical axis (up: further from the data). The paper's Figure 4 draws the same trade-off.

# %%
fig, ax = plt.subplots(figsize=(7, 4.8))
plot_tradeoff(sweep, ax)
plt.show()

# %% [markdown]
# As in the paper, IS rises with $w$ for every model and FD rises with it. Unlike Table 1, FD does not dip at small
# $w$: the toy's unguided model is already almost exact (FD ≈ 0.000 at $w = 0$), so guidance has nothing to repair.
# The paper's dip (best FID at $w = 0.1$) comes from an imperfect ImageNet model whose samples guidance makes more
# typical. At large $w$ the learned curves lie below the exact-ε* curve (at the same IS, a lower FD): the learned
# model trades better than the exact one (for $p_\text{uncond}$ = 0.1 and 0.2; 0.5 runs along the exact curve). We do
# not have a full explanation; a plausible one is that the network's
# implicit classifier is smoother than the exact one where the classes meet (notebook 03 §1), so it pushes less where
# pushing costs FD. The guidance
# interval buys IS at a higher FD cost than constant $w$ on this toy; the linear schedule does slightly better than
# constant $w$ at large $w$.

# %%
T = max(config.steps)
display(Markdown(f"**Table 1 analogue** (learned MLP, T = {T}; columns p_uncond)\n\n"
                 + metric_table(sweep, "p_uncond", list(config.p_unconds), model="learned", T=T)))
display(Markdown(f"**Table 2 analogue** (learned MLP, p_uncond = {config.p_unconds[0]:g}; columns T)\n\n"
                 + metric_table(sweep, "T", list(config.steps), model="learned", p_uncond=config.p_unconds[0])))

# %% [markdown]
# The paper's ordering of $p_\text{uncond}$ holds: 0.5 is worse along the frontier at large $w$ (at $w = 4$ in the
# stored run, FD 0.30 against 0.19 for 0.1, at a lower IS), 0.2 lies between; at $w \le 1$ the three are within a
# few thousandths. The step count hardly moves FD or IS here (the second table). §5 shows what it does change.
#
# ## 5. How many steps?
#
# Table 2 of the paper finds FID worse at $T = 128$ than at 256 or 1024. On the toy, TV is too coarse to see a
# difference between step counts. A sharper probe at $w = 0$, where the target is the data itself: the spread of
# each class, whose variance per coordinate is $0.6^2 = 0.36$. Exact $\varepsilon^*$, 4,000 samples per class:

# %%
def spread(T: int, method: str) -> float:
    samples = class_samples(mixture, 3, 0.0, 4000, generator=make_generator(0), steps=T, method=method)
    return sum(class_variance(samples[c]) for c in range(3)) / 3


spreads = {method: [spread(T, method) for T in STEP_COUNTS] for method in ("ancestral", "ddim")}
lines = ["| T | " + " | ".join(str(T) for T in STEP_COUNTS) + " |", "|---|" + "---|" * len(STEP_COUNTS)]
lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |" for name, values in spreads.items()]
display(Markdown("**Per-class variance at w = 0** (the data: 0.360)\n\n" + "\n".join(lines)))

# %% [markdown]
# Both samplers draw classes that are too narrow at few steps: a variance of 0.29-0.30 at $T = 16$ against the data's
# 0.36, and 0.35-0.36 only by $T = 128$-256. Too few steps cost diversity, which TV at this sample size barely sees
# and which an FID over 50,000 images does: that is Table 2's penalty at $T = 128$.
#
# ## 6. What CFG samples: TV to $\pi_w$
#
# Notebook 01 showed that even exact-score CFG follows $\rho_\lambda \propto p_\lambda(z|c)^{1+w}p_\lambda(z)^{-w}$,
# which is not $\pi_w$ noised to level λ. The **ideal** sampler uses instead the exact $\varepsilon$ of the noised
# target $\pi_{w,\lambda}$, computed by quadrature on a grid ($\varepsilon = (z - \alpha\,\mathbb E[x|z])/\sigma$,
# `cfgedu.toy.ideal`), with DDIM steps. TV of each sampler to $\pi_w$ at $T$ = 128 (16 in fast mode):

# %%
display(Markdown(sampler_table(sweep)))

# %% [markdown]
# At $w = 0$ every sampler sits at the noise floor, and at $w = 0.1$ nearly so. From $w = 0.3$ on none of the CFG
# samplers does: the ancestral ones (any $v$) miss $\pi_w$ by 0.17-0.34 in TV from $w = 1$ to 4, DDIM, which adds no
# noise, by far more (about 0.8 at $w = 4$). Bradley &
# Nakkiran (2024) explain the difference: the ancestral sampler's fresh noise acts as a corrector, DDIM follows the
# guided field exactly. The ideal sampler (run at $w$ = 0, 1 and 3) reaches the noise floor each time: the target is
# reachable, with the
# right field.
#
# ## 7. The boundary push
#
# Where do the missing and extra samples go? A histogram of each class-0 sample's distance from the class mean, at
# $w = 3$, for the target (black) and for several samplers.

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
plot_boundary_push(sweep, mixture, ax=ax)
plt.show()

# %% [markdown]
# CFG pushes mass further out than $\pi_w$ (Chidambaram et al. 2024): the ancestral sampler's histogram sits to the
# right of the black target, DDIM's much further. The ideal sampler and the MALA-corrected samples lie on the target.

# %% [markdown]
# ## 8. Correctors: MCMC toward the right density
#
# If the sampler ends in the wrong place, can a few steps of a Markov chain that targets the right density fix it?
# **Langevin dynamics** moves samples along the score of a density with noise added,
# $z \leftarrow z + h\nabla\log\rho(z) + \sqrt{2h}\,\xi$ with $\xi \sim \mathcal N(0, I)$ and a small step $h$; **MALA**
# (Metropolis-adjusted Langevin) accepts or rejects
# each move with a Metropolis test, which makes $\rho$ exactly stationary. The test needs $\log\rho$ itself, not only
# its gradient. For the mixture, $\log\rho_\lambda = (1+w)\log p_\lambda(z|c) - w\log p_\lambda(z)$ is known in closed
# form; a trained CFG model has only ε, i.e. gradients, so this is a toy-only experiment.
#
# Two ways to spend the same budget of $m \times T$ MALA steps: $m$ steps after every sampler step (toward
# $\rho_\lambda$ at each level), or all of them at the last level, $\lambda_{\max}$, where $\rho_\lambda$ **is**
# $\pi_w$: there MALA is plain MCMC on the target, and it reaches $\pi_w$ whatever the sampler did before, given
# enough steps.

# %%
display(Markdown(corrector_table(sweep)))

# %% [markdown]
# Sixteen MALA steps at every level bring the TV down to the noise floor (0.058 against 0.055 in the stored run), at a
# lower IS: the samples are now as spread as $\pi_w$ is. Spending the same $m \times T$ budget only at
# $\lambda_{\max}$ does at least as well (0.071 at $m = 4$ against 0.157 at every level; the floor at $m = 16$). What
# matters is MCMC
# on the right density, and at the data level $\rho_\lambda$ is that density.
#
# ## 9. Guidance on an interval: which mode a sample joins
#
# Kynkäänniemi et al. (2024) found on ImageNet that guidance **at high noise** hurts (it drops modes), is unneeded at
# low noise, and helps in between. A toy makes the mechanism visible. In `GaussianMixture.two_modes()` class 0 has two
# modes, left and right, and class 1 sits next to the right one. The target $\pi_w$ moves some of class 0 from the right
# mode to the left (away from class 1). CFG moves far more: which mode a sample joins is decided at fairly high noise
# (λ between about −4 and 0, where the classes overlap but the implicit classifier is not yet flat; it flattens only
# far below, notebook 01 §5), and there the density $\rho_\lambda$ whose score CFG follows already separates the
# classes strongly (notebook 01 §7). Move the λ interval: guidance
# only at low noise ($[0, 20]$) keeps the modes' shares, guidance only at high noise ($[-20, 0]$) moves them. The
# titles give the share of class 0 at each mode.

# %%
GuidanceIntervalWidget(GaussianMixture.two_modes(), w=3.0, per_class=150 if FAST else 1000)

# %% [markdown]
# ## Takeaways
# - As in the paper, guidance raises IS and FD together, and a larger $p_\text{uncond}$ is worse at large $w$. Unlike
#   the paper there is no FD dip at small $w$: the toy's unguided model is already almost exact.
# - Too few sampling steps make every class too narrow (variance 0.29 instead of 0.36 at $T = 16$): the step count
#   costs diversity, as Table 2's $T = 128$ row does.
# - Even with exact scores, CFG does not sample $\pi_w$; the ideal sampler (exact ε of the noised target) and MALA at
#   the data level do. Both need quantities a trained CFG model does not have.
# - Guidance at high noise decides which mode a sample joins; that is where CFG distorts the mode shares most.
#
# Next, notebook 05 puts faster samplers and the guidance methods that came after the paper on this same toy, with
# the same metrics.
#
# ## Try this
# - In the interval slider, set `w = 8` and the interval to `[-20, -5]`: how far do the mode shares move with
#   guidance applied only where the data is almost pure noise?
# - Run with `CFGEDU_MODE=medium` after adding `p_unconds=(0.1, 0.9)` to the medium `replace(...)` in the cell that
#   builds `config` (a couple of minutes): where does the 0.9 curve sit?
# - In §5, add `method="ddim"` runs with `T = 512`: how close to 0.36 does DDIM get?
#
# ## References
# - J. Ho, T. Salimans, *Classifier-Free Diffusion Guidance*, [arXiv:2207.12598](https://arxiv.org/abs/2207.12598):
#   §4.1, Tables 1-2, Figure 4.
# - M. Heusel et al., *GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium* (FID),
#   [arXiv:1706.08500](https://arxiv.org/abs/1706.08500); T. Salimans et al., *Improved Techniques for Training GANs*
#   (IS), [arXiv:1606.03498](https://arxiv.org/abs/1606.03498).
# - J. Song, C. Meng, S. Ermon, *Denoising Diffusion Implicit Models*,
#   [arXiv:2010.02502](https://arxiv.org/abs/2010.02502).
# - T. Kynkäänniemi et al., *Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in
#   Diffusion Models*, [arXiv:2404.07724](https://arxiv.org/abs/2404.07724).
# - M. Chidambaram et al., *What does guidance do? A fine-grained analysis in a simple setting*,
#   [arXiv:2409.13074](https://arxiv.org/abs/2409.13074); A. Bradley, P. Nakkiran, *Classifier-Free Guidance is a
#   Predictor-Corrector*, [arXiv:2408.09000](https://arxiv.org/abs/2408.09000).
# - G. O. Roberts, R. L. Tweedie, *Exponential convergence of Langevin distributions and their discrete
#   approximations*, Bernoulli 1996 (MALA).

# %% [markdown]
# ## Checks

# %%
for p in config.p_unconds:
    rows = sweep.select(model="learned", p_uncond=p, T=max(config.steps), kind="cfg")
    assert rows[-1]["is_bayes"] > rows[0]["is_bayes"], "guidance must raise the Bayes IS"
w_top = max(config.ideal_ws)
ideal = sweep.select(sampler="ideal", w=w_top)[0]
ddim = sweep.select(sampler="ddim", w=w_top, kind="cfg")[0]
assert ideal["tv_to_target"] < ddim["tv_to_target"], "the ideal sampler must be closer to π_w than CFG-DDIM"
mala = sweep.select(sampler="ancestral-v0.3+mala")
assert mala[-1]["tv_to_target"] < mala[0]["tv_to_target"], "corrector steps must lower the TV to π_w"
final = sweep.select(sampler="ancestral-v0.3+mala@λmax")
assert final[-1]["tv_to_target"] < mala[0]["tv_to_target"], "MALA at λ_max must lower the TV to π_w"
assert abs(spreads["ancestral"][-1] - 0.36) < 0.03, "enough ancestral steps keep the class spread"
print("all checks passed")
