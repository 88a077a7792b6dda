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
# # 05 · Beyond CFG: faster samplers, sample paths, and the methods that answer CFG's flaws
#
# Notebooks 01-04 showed precisely what CFG gets wrong: it does not sample the tilted target $\pi_w$, it pushes
# samples past it, and its learned field is not a gradient. This lesson puts the methods that came after the paper
# on the same toy, with the same exact references and metrics, and asks what each one buys.
#
# **What you will learn**
# - how DDIM, Heun and DPM-Solver++(2M) solve the same probability-flow ODE (each is a DDIM step fed a better
#   $\hat x$), what each costs in network evaluations (NFE), and which reaches the noise floor first
# - why, under guidance, deterministic and stochastic samplers converge to *different* distributions
# - where guidance pushes samples, and when: sample paths from noise to data, and an animation
# - three methods that followed CFG, written from their papers' equations: **autoguidance**, **APG** and **CFG++**,
#   each measured where it buys the same class fidelity as CFG at $w = 3$ (or, where it cannot, at its best)
#
# **Assumes** notebooks 01 (the tilted target $\pi_w$ and the density $\rho_\lambda$ whose score CFG follows), 03
# (curl) and 04 (TV to $\pi_w$ and its noise floor, the Fréchet distance FD, the Bayes IS, the samplers).
# **Takes** about 25 seconds in fast mode and about 3 minutes in full mode (the default, and what the stored outputs
# show) on a 2-core CPU. `python -m cfgedu toy-tradeoff --out DIR` runs the same sweeps from the command line. The
# numbers quoted in the text are those of the stored full run.

# %% tags=["parameters"]
import os

import cfgedu  # noqa: F401 (first, before torch: it lets idle OpenMP threads sleep, not spin)

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
OUT = f"runs/beyond_cfg_{'fast' if FAST else 'full'}"  # the two trained MLPs are kept here and reused
PATHS_PER_CLASS = 150 if FAST else 400  # samples per class in §4's sample paths

# %%
import inspect
from dataclasses import replace
from itertools import groupby
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, Markdown, display

from cfgedu import GaussianMixture
from cfgedu.commands.toy_tradeoff import learned_models, weak_model
from cfgedu.core import samplers
from cfgedu.core.schedule import LogSNRSchedule
from cfgedu.core.tensors import make_generator
from cfgedu.frontend.plotting import paths_animation, plot_path_frames, plot_paths, plot_tv_against_nfe
from cfgedu.frontend.widgets import GuidanceMethodsWidget
from cfgedu.toy.fields import as_float64
from cfgedu.toy.grid import Grid2D, mix, tilted_densities
from cfgedu.toy.metrics import class_variance
from cfgedu.toy.sampling import class_samples
from cfgedu.toy.tradeoff import SWEEPS, run_sweep
from cfgedu.toy.tradeoff_tables import method_table, nfe_table
from cfgedu.toy.trajectories import guided_paths, level_densities

mixture = GaussianMixture.three_gaussians()
config = SWEEPS["fast" if FAST else "full"]

# %% [markdown]
# ## 1. One ODE, three solvers
#
# Algorithm 2's ancestral sampler is a discretisation of a stochastic differential equation that runs the noising
# process backwards (the **reverse SDE**). Drop its noise and adjust the drift, and one gets an ordinary differential
# equation with the same marginals $p_\lambda$ at every level, the **probability-flow ODE** (Song et al. 2021): a
# deterministic map from noise to data. Write $y = z/\alpha$ and $\bar\sigma = \sigma/\alpha = e^{-\lambda/2}$ (the
# noise level of $y$; EDM, Karras et al. 2022, calls it $\sigma$ and starts sampling at $\bar\sigma = 80$). Since
# $z = \alpha x + \sigma\varepsilon$, $y = x + \bar\sigma\varepsilon$, and the ODE (EDM's Eq. 4 with $\sigma(t) = t$)
# moves $y$ along the predicted noise:
#
# $$\frac{dy}{d\bar\sigma} = \hat\varepsilon(z, \lambda), \qquad \text{equivalently} \qquad
# \frac{d(z/\sigma)}{d(\alpha/\sigma)} = \hat x(z, \lambda).$$
#
# (The second form is the chain rule with $\tau = 1/\bar\sigma = \alpha/\sigma$: $z/\sigma = y\tau$, so
# $d(y\tau)/d\tau = y + \tau\,\frac{dy}{d\bar\sigma}\frac{d\bar\sigma}{d\tau} = y - \bar\sigma\hat\varepsilon = \hat
# x$.) The solvers differ only in how they integrate over one step $\lambda \to \lambda'$:
#
# - **DDIM** holds $\hat x$ fixed over the step. Then the second form integrates exactly:
#   $z'/\sigma' = z/\sigma + (\alpha'/\sigma' - \alpha/\sigma)\,\hat x$, i.e.
#   $z' = \alpha'\hat x + \sigma'(z - \alpha\hat x)/\sigma$, the familiar $z' = \alpha'\hat x + \sigma'\hat\varepsilon$.
#   First order: halving the step halves the error.
# - **Heun** (EDM's sampler) uses the trapezoid rule on the first form: an Euler (DDIM) step predicts $z'$, the
#   network is evaluated there once more, and the step is redone with the mean of the two $\hat\varepsilon$. Second
#   order, two evaluations a step (the last step, into $\lambda_{\max}$, stays first order as in EDM).
# - **DPM-Solver++(2M)** keeps one evaluation a step and instead lets $\hat x$ vary linearly in the half log-SNR
#   $\lambda/2$: the line through the last step's $\hat x_{i-1}$ and this step's $\hat x_i$, read off at the middle of
#   this step (the middle to first order in the step; the exact weight of the exponential integrator sits a little
#   later, and DPM-Solver++ uses the midpoint). With step lengths $h_i = (\lambda_{i+1} - \lambda_i)/2$ and $r =
#   h_{i-1}/h_i$ that is $D = \hat x_i + \frac{h_i/2}{h_{i-1}}(\hat x_i - \hat x_{i-1}) = \hat x_i + (\hat x_i - \hat
#   x_{i-1})/(2r)$, then a DDIM step with $D$. Second order, as cheap as DDIM. The first step (no $\hat x_{i-1}$ yet)
#   and the last are plain DDIM.
#
# All three are a DDIM step fed a better $\hat x$; in the library they are one line each in the sampler loop:

# %%
print(inspect.getsource(samplers.heun_x_hat))
print(inspect.getsource(samplers.dpm_solver_2m_x_hat))

# %% [markdown]
# Their cost is counted in network evaluations (NFE) per sample: $T$ for a grid of $T$ points, $2T - 2$ for Heun.
# (A guided evaluation runs $\varepsilon(z, c)$ and $\varepsilon(z, \varnothing)$ as one doubled batch: twice the
# arithmetic, one call.)
#
# ## 2. Accuracy against cost, at $w = 0$
#
# At $w = 0$ the target is the data distribution itself, and the exact $\varepsilon^*$ removes every error but the
# sampler's. Each sampler runs with the NFE below on the paper's λ grid (uniform in $u$, λ from −20 to 20), exact
# $\varepsilon^*$, 5,000 samples per class (800 in fast mode); TV to $p(x|c)$ on a 32×32 histogram, with the TV
# of as many exact draws as the floor (notebook 04 §1). The floor is itself one noisy draw: a sampler can land a
# little below it. The left panel is $w = 0$; the right one, $w = 3$, is §3's.

# %%
nfe_sweep = run_sweep(config, mixture=mixture, parts=("nfe",), progress=False)
fig = plot_tv_against_nfe(nfe_sweep)
fig.tight_layout()
plt.show()
display(Markdown(f"**w = 0** (the data)\n\n{nfe_table(nfe_sweep, 0.0)}"))

# %% [markdown]
# DPM-Solver++(2M) reaches the noise floor first, at NFE 16 (TV 0.068, against a floor of 0.064 in the stored run
# and 0.069 in another draw of `toy-tradeoff`: the floor's own noise);
# DDIM gets there by NFE 32 and the ancestral sampler by 64. Heun, the most accurate solver per step in EDM, is the
# slowest here: at NFE 8 and 16 its samples are nowhere near the data, and it reaches the floor only at NFE 256.
#
# Why? EDM starts at $\bar\sigma = 80$; the paper's grid starts at $\lambda = -20$, $\bar\sigma = e^{10} \approx
# 22{,}000$, and its uniform-$u$ spacing makes the first step land at $\bar\sigma$ between about 2 (NFE 8) and 80
# (NFE 256) (printed below). Compare the two solvers on that step. Along DDIM's prediction
# $y' = \hat x + \bar\sigma'\hat\varepsilon$, the noise predicted at the end is
# $\hat\varepsilon' = \hat\varepsilon + (\hat x - \hat x')/\bar\sigma'$, with $\hat x'$ the network's $\hat x$ at that
# predicted point, so Heun's end point differs from DDIM's by
# $(\bar\sigma - \bar\sigma')(\hat x - \hat x')/(2\bar\sigma')$. DDIM errs only by treating $\hat x$ as constant over
# the step; Heun multiplies the change of $\hat x$ by $(\bar\sigma - \bar\sigma')/(2\bar\sigma')$, a factor of 135 to
# 4,600 on the first step, and at small NFE the samples never recover. The grid's first points:

# %%
for T in (5, 17, 65):
    grid = LogSNRSchedule().grid(T)
    print(f"T = {T:3d} (Heun NFE {samplers.evaluations('heun', T):3d}): σ/α at the first three points",
          [f"{s:.3g}" for s in torch.exp(-grid[:3] / 2).tolist()])

# %% [markdown]
# A solver's order is not the whole story: what matters is how well its assumption holds over the steps the grid
# actually takes. Heun assumes $\hat\varepsilon$ changes linearly in $\bar\sigma$ across a step; from $\bar\sigma =
# 22{,}000$ it changes like $1/\bar\sigma$, and the DDIM form, which assumes only a constant $\hat x$, is the better
# bet there. On EDM's range ($\bar\sigma$ from 80 down
# to 0.002) Heun is far more accurate than DDIM at the same $T$; `tests/test_beyond_cfg.py` checks both facts.
#
# ## 3. Under guidance the samplers part ways
#
# The right panel of the figure above runs the same samplers at $w = 3$, against $\pi_3$:

# %%
display(Markdown(f"**w = 3**\n\n{nfe_table(nfe_sweep, 3.0)}"))

# %% [markdown]
# As NFE grows, DDIM, Heun and DPM-Solver++(2M) all settle at TV 0.69 from $\pi_3$ (0.692, 0.696, 0.690 at NFE 256
# in the stored run); they solve one ODE from the same starting noise, so their end points converge to the same
# points. The ancestral sampler ends elsewhere, at 0.28 by NFE 256 and still drifting down slowly (0.30 at NFE 64 and
# 128). Neither comes near $\pi_3$ (floor 0.052), and more evaluations do not change that.
#
# At $w = 0$ all samplers agree because $\varepsilon^*$ is the score of one family of marginals $p_\lambda$, the ones
# the forward diffusion produces; the ODE and the reverse SDE are two ways to transport exactly that family, so
# they end at the same law. Under guidance the field is the score of $\rho_\lambda \propto
# p_\lambda(z|c)^{1+w}p_\lambda(z)^{-w}$ (notebook 01 §7), and the $\rho_\lambda$ at different λ are **not** the
# marginals of one diffusion: noising $\rho_{\lambda'}$ does not give $\rho_\lambda$. The ODE follows the field
# exactly and ends where its flow goes; the SDE (the ancestral sampler) adds noise and lets the field pull it back,
# which acts as a corrector toward each $\rho_\lambda$ (Bradley & Nakkiran 2024). The two limits differ, and both differ
# from $\pi_w$. More steps make each sampler more faithful to *its own* limit, not to $\pi_w$.
#
# ## 4. Sample paths: where guidance pushes, and when
#
# The same 400 noise vectors per class (150 in fast mode), sampled by DDIM with $T = 24$ at $w = 0$ and at $w = 8$,
# every intermediate $z$ kept. Lines show twelve paths per class; dots are where the samples end; the grey background
# is the target at the end, $\sum_c \pi_c\,\pi_w(x|c)$.

# %%
paths = guided_paths(mixture, 3, (0.0, 8.0), PATHS_PER_CLASS, steps=24)
grid = Grid2D.covering(mixture, n=96)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, w, points in zip(axes, paths.ws, paths.points, strict=True):
    plot_paths(ax, grid, mix(mixture, tilted_densities(mixture, grid, w)), points,
               title=f"w = {w:g} (s = {1 + w:g}): paths over the target π_w")
fig.tight_layout()
plt.show()

# %% [markdown]
# At $w = 0$ each path wanders from its start (ring) into its class, and paths of different classes cross. At
# $w = 8$ the same starts are flung away from the *other* classes, far past the target (some leave the frame), and
# then swing back, ending still well outside the grey blobs of $\pi_8$: notebook 04's boundary push, seen as motion.
# When does it happen? The distance between a sample's $w = 8$ path and its $w = 0$ path, and the mean distance of
# the samples from the origin, frame by frame:

# %%
gap = (paths.points[1] - paths.points[0]).norm(dim=-1).mean(dim=(1, 2))  # (frames,): same noise, w = 8 against 0
radius = paths.points.norm(dim=-1).mean(dim=(2, 3))  # (2, frames)
fig, ax = plt.subplots(figsize=(7, 3.2))
frames = range(len(paths.levels))
ax.plot(frames, gap, "k-o", ms=3, label="‖path(w = 8) − path(w = 0)‖")
for w, r in zip(paths.ws, radius, strict=True):
    ax.plot(frames, r, "--", label=f"mean ‖z‖ at w = {w:g}")
ax.set_xticks(list(frames)[::3], [f"{lam:.1f}" for lam in paths.levels[::3].tolist()])
ax.set(xlabel="λ of the frame (noise → data)", ylabel="distance", title="When guidance acts (DDIM, T = 24)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The paths part from the very first step (λ from −20 to −5.4) until λ ≈ −1, while $z$ is still mostly noise
# ($\alpha^2 = \text{sigmoid}(\lambda) < 0.27$); by λ ≈ −0.5 the guided samples sit 3.4 from the origin on average
# (the class means are at 1), and the rest of the way they fall back to 2.9. Six frames of the same run show it
# over the noised densities: the background of each frame is $\rho_\lambda$ at that frame's λ, the density whose
# score the guided field is (at $w = 0$, $p_\lambda$ itself). At $w = 8$ its classes separate while the data is still
# mostly noise.

# %%
backgrounds = [level_densities(mixture, grid, w, paths.levels) for w in paths.ws]
plot_path_frames(grid, paths, backgrounds, [0, 2, 5, 9, 16, 24])
plt.show()

# %% [markdown]
# And as an animation (play it in JupyterLab; a code host shows the stills above):

# %%
animation = paths_animation(grid, paths, backgrounds)
with plt.rc_context({"animation.frame_format": "jpeg", "savefig.dpi": 60}):
    player = HTML(animation.to_jshtml(default_mode="once"))
plt.close()  # the animation's figure: the player above holds its frames
player

# %% [markdown]
# ## 5. The methods that followed CFG
#
# Each method answers one of CFG's flaws. Each one wraps a model $(z, \lambda, c) \mapsto \varepsilon$ and returns
# another (CFG++ also hands the sampler the ε to renoise with; `cfgedu.core.guidance_methods`), so every sampler and
# metric takes them as it takes CFG.
#
# **Autoguidance** (Karras et al. 2024). CFG improves images partly because $\varepsilon(z, \varnothing)$ is a
# *worse model* than $\varepsilon(z, c)$, and guidance extrapolates away from its errors; but it also extrapolates
# away from the other classes, which costs diversity. Autoguidance keeps only the first effect by guiding with a
# weaker version of the same conditional model, here a 32-wide MLP trained a quarter as long as the 128-wide main
# model, with the same code:
#
# $$\tilde\varepsilon = (1 + w)\,\varepsilon(z, c) - w\,\varepsilon_\text{weak}(z, c).$$
#
# With the unconditional model as the "weak" model this is CFG. If both models were Gaussians around the same mean,
# the weak one broader, the guided score $(1 + w)\nabla\log p - w\nabla\log p_\text{weak}$ would be that of a
# Gaussian narrower than $p$: autoguidance would then lower the temperature.
#
# **APG, adaptive projected guidance** (Sadat et al. 2024). At large $w$ CFG oversaturates images. APG works on the
# denoised prediction: with $\Delta = \hat x(z, c) - \hat x(z, \varnothing)$, it (i) adds reverse momentum,
# $\Delta \leftarrow \Delta + \beta\,\bar\Delta$ with $\beta < 0$ and $\bar\Delta$ the previous step's update (itself
# after momentum), (ii) caps the norm at a threshold $r$ (not DPM-Solver's $r$),
# $\Delta \leftarrow \Delta\min(1, r/\lVert\Delta\rVert)$, and (iii) splits $\Delta$ into its part parallel to
# $\hat x(z, c)$ and the rest, keeping only a fraction $\eta$ of the parallel part (which, in images, mostly raises
# contrast and saturation):
#
# $$\hat x = \hat x(z, c) + w\,(\Delta_\perp + \eta\,\Delta_\parallel).$$
#
# We use the authors' reference settings, $\eta = 0$, $\beta = -0.75$, $r = 2.5$. With $\eta = 1$, $\beta = 0$ and
# no cap it is CFG.
#
# **CFG++** (Chung et al. 2024). CFG's DDIM step renoises its extrapolated $\hat x$ with the extrapolated
# $\hat\varepsilon$, which CFG++ argues leaves the data manifold. CFG++ interpolates instead, with its own strength
# $l \in [0, 1]$, and renoises with the unconditional prediction:
#
# $$\hat x = \hat x(z, \varnothing) + l\,(\hat x(z, c) - \hat x(z, \varnothing)), \qquad
# z' = \alpha'\hat x + \sigma'\,\varepsilon(z, \varnothing).$$
#
# One line of algebra relates it to CFG. Both steps are linear in $\varepsilon(z, c)$ and $\varepsilon(z,
# \varnothing)$ (with $\hat x_c - \hat x_\varnothing = -(\sigma/\alpha)(\varepsilon_c - \varepsilon_\varnothing)$), and
# matching their coefficients shows that a CFG++ step $\lambda \to \lambda'$ at strength $l$ **is** a CFG DDIM step at
#
# $$w_\text{step} = \frac{l}{1 - e^{-(\lambda' - \lambda)/2}} - 1,$$
#
# which grows as the steps shrink. CFG++ is CFG with a guidance strength that depends on the step size. On the paper's
# grid at $T = 128$, $l = 0.3$ is strong guidance where the steps are short (the middle of the grid: scale
# $1 + w$ up to 12) and, at the coarse ends, less than none ($1 + w \to l$, i.e. $w \to -0.7$, toward the
# unconditional model):

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
for T in (32, 128):
    grid_T = LogSNRSchedule().grid(T)
    scale = 0.3 / -torch.expm1(-(grid_T[1:] - grid_T[:-1]) / 2)  # s_t = 1 + w_t
    ax.plot(grid_T[:-1], scale, label=f"T = {T}")
ax.axhline(4.0, color="k", ls=":", label="CFG at w = 3 (s = 4)")
ax.set(xlabel="λ at the start of the step", ylabel="s = 1 + w of the same CFG step", yscale="log",
       title="CFG++ at l = 0.3 is CFG with a step-dependent scale")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Now measure them. The main model is the toy preset's ε-MLP ($p_\text{uncond} = 0.1$, 3,000 steps; 300 in fast
# mode), the weak one as above. Each method is swept over its strength with DDIM at $T = 128$ (64 in fast mode),
# with exact $\varepsilon^*$ and with the learned model (autoguidance only learned: it needs a weaker model). To
# compare methods whose strengths mean different things, each is then run once more **at the strength whose Bayes
# IS equals CFG's at $w = 3$** on the same model (interpolated along its sweep), and measured there: FD to the
# data, TV to $\pi_3$, the per-class variance (the data's is $0.6^2 = 0.36$: how much diversity is kept), and for
# CFG and autoguidance the relative curl of the guidance term (notebook 03) averaged over λ ∈ {−2.25, 0, 2.25}.

# %%
main = learned_models(Path(OUT), replace(config, p_unconds=(0.1,)), progress=False)[0.1]
weak = weak_model(Path(OUT), replace(config, p_unconds=(0.1,)), progress=False)
for name, model in (("main", main), ("weak", weak)):  # how each one spreads a class on its own, at w = 0
    drawn = class_samples(model, 3, 0.0, 2000, generator=make_generator(0), steps=config.detail_steps, method="ddim",
                          dtype=torch.float32)
    print(f"{name} model, unguided: per-class variance {sum(class_variance(x) for x in drawn) / 3:.3f} (data 0.360)")
method_sweep = run_sweep(replace(config, p_unconds=(0.1,)), {0.1: main}, guide=weak, mixture=mixture,
                         parts=("methods",), progress=False)
display(Markdown(method_table(method_sweep)))

# %% [markdown]
# The sweeps behind the matches: Bayes IS and per-class variance at each strength.

# %%
lines = ["| method | model | strength: IS (per-class variance) |", "|---|---|---|"]
for (model, method), rows in groupby([r for r in method_sweep.rows if r["kind"] == "method" and not r["match"]],
                                     key=lambda r: (r["model"], r["method"])):
    lines.append(f"| {method} | {model} | " + ", ".join(f"{r['w']:g}: {r['is_bayes']:.2f} ({r['class_variance']:.2f})"
                                                     for r in rows) + " |")
display(Markdown("\n".join(lines)))
half = run_sweep(replace(config, detail_steps=config.detail_steps // 2), mixture=mixture, parts=("methods",),
                 progress=False)  # exact ε* only, every step twice as long
for sweep in (method_sweep, half):
    row = next(r for r in sweep.rows if r["match"] and r["model"] == "exact" and r["method"] == "cfg++")
    print(f"CFG++ at T = {row['T']}: l = {row['w']:.3f} matches CFG's IS at w = 3 ({row['match']})")

# %% [markdown]
# What the table says, method by method (stored run):
#
# - **CFG++** reaches CFG's IS at $l \approx 0.15$ and lands where CFG-DDIM lands: TV to $\pi_3$ within a few
#   hundredths of CFG's (0.735 against 0.695 with exact $\varepsilon^*$), with narrower classes (variance 0.121 against
#   0.161). On this toy it is CFG with a reshaped, step-dependent strength, not a different target. As the algebra
#   says, its strength is tied to the step size: with half the steps its matched $l$ doubles (printed below the
#   sweeps).
# - **APG** never reaches CFG's IS: its IS stays near 2.25 for every $w$ from 3 to 24. On the toy, the direction that
#   separates a class from the others points away from the origin, the centre of the triangle, and that is
#   *parallel* to $\hat x(z, c)$: $\eta = 0$ removes most of the guidance. At its best it keeps more diversity than
#   CFG (and sits closer to $\pi_3$ in TV only because it guides less). That is the geometry of this toy, where the
#   origin is the data's mean; in images the parallel part is mostly brightness and saturation.
# - **Autoguidance** does not reach CFG's IS either (2.37 at $w = 12$, the largest swept), and it does something CFG
#   never does: it *widens* the classes, to a per-class variance of 1.5 against the data's 0.36. The printout above
#   says why. The weak MLP under-disperses (0.315 against the main model's 0.349), so guiding away from it pushes
#   mass outward, the reverse of the sharpening a broader weak model would give. For Gaussians the guided precision
#   is $(1 + w)/v_\text{main} - w/v_\text{weak}$: at $w = 3$ a variance of $1/(4/0.349 - 3/0.315) \approx 0.52$,
#   against 0.49 measured. (The Gaussian picture holds only at small $w$: its precision turns negative near $w = 9$,
#   where the real, non-Gaussian classes and the finite sampler still give a finite, if large, spread.) Karras et al.'s
#   recipe needs a weak model whose errors are the main model's, only larger; which way a small, short-trained model
#   errs decides what autoguidance does. Its guidance term, the difference of two networks, is far from a gradient: its
#   relative curl is 38%, against 8.8% for CFG's term of the main model.
#
# None of this is tuned: the toy shows what each method does to a distribution whose every quantity is known, and
# "no better than CFG here" is a finding, with its reason.
#
# ## 6. Try the methods
#
# Pick a method and move its strength (the slider shows $w$ and $s = 1 + w$, or CFG++'s $l$); the right panel is
# what it samples (DDIM, $T = 32$, exact $\varepsilon^*$; autoguidance with the learned pair), against the data
# (left) and the target $\pi_w$ of the "target w" slider (middle). The title gives TV to that $\pi_w$; the label
# under the panel, the Bayes IS, FD and the per-class variance.

# %%
GuidanceMethodsWidget(mixture, mixture, guide=None, per_class=150 if FAST else 600)

# %% [markdown]
# The widget above guides the exact $\varepsilon^*$; autoguidance needs the learned pair:

# %%
GuidanceMethodsWidget(as_float64(main), mixture, guide=as_float64(weak), method="autoguidance",
                      per_class=150 if FAST else 600)

# %% [markdown]
# ## Takeaways
# - DDIM, Heun and DPM-Solver++(2M) solve one ODE; each is a DDIM step fed a better $\hat x$. On the paper's grid
#   DPM-Solver++(2M) reaches the noise floor at 16 evaluations; Heun, whose trapezoid rule cannot handle the first
#   step from $\sigma/\alpha \approx 22{,}000$, needs 256.
# - Under guidance the ODE and the SDE converge to different distributions, and neither is $\pi_w$: the guided
#   field is not the score of one diffusion's marginals. More steps do not fix this.
# - Guidance acts early, while the samples are still mostly noise, and overshoots the target.
# - CFG++ is CFG with a step-size-dependent $w$. APG and autoguidance answer real flaws of CFG on images
#   (saturation, lost diversity), but on this toy they cannot buy CFG's class separation: APG discards the
#   direction that separates the classes, and autoguidance, steered away from a weak model that under-disperses,
#   widens each class instead. Which way a weak model errs decides what autoguidance does.
#
# ## Try this
# - In the widget, choose `apg` and push $w$ to 24: does IS ever reach CFG's at $w = 3$? Now think of where the
#   origin is relative to the classes.
# - Set `PATHS_PER_CLASS` higher and the paths' $w$ to 3, then compare DDIM paths with ancestral ones
#   (`guided_paths(..., method="ancestral")`): where do the stochastic paths end?
# - Does Heun catch up on EDM's $\bar\sigma$ range? Draw `samplers.sample(mixture, (2,), labels,
#   generator=make_generator(1), steps=T, method="heun", schedule=LogSNRSchedule(-8.76, 12.43),
#   dtype=torch.float64)` (with `labels = torch.arange(3).repeat_interleave(200)` and
#   `from cfgedu.core.tensors import make_generator`) for T = 9, 17, 33, and measure the mean distance of the
#   end points to a 2,048-step `method="dpm++2m"` run from the same seed on the same schedule; then repeat both
#   with the default schedule. This
#   keeps the uniform-$u$ spacing on EDM's range; EDM's own grid also spaces the steps differently.
#
# ## References
# - T. Karras, M. Aittala, T. Aila, S. Laine, *Elucidating the Design Space of Diffusion-Based Generative Models*
#   (EDM, Heun's sampler), [arXiv:2206.00364](https://arxiv.org/abs/2206.00364).
# - C. Lu et al., *DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models*,
#   [arXiv:2211.01095](https://arxiv.org/abs/2211.01095).
# - Y. Song et al., *Score-Based Generative Modeling through Stochastic Differential Equations* (the
#   probability-flow ODE), [arXiv:2011.13456](https://arxiv.org/abs/2011.13456).
# - T. Karras et al., *Guiding a Diffusion Model with a Bad Version of Itself* (autoguidance),
#   [arXiv:2406.02507](https://arxiv.org/abs/2406.02507).
# - S. Sadat, O. Hilliges, R. M. Weber, *Eliminating Oversaturation and Artifacts of High Guidance Scales in
#   Diffusion Models* (APG), [arXiv:2410.02416](https://arxiv.org/abs/2410.02416).
# - H. Chung et al., *CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models*,
#   [arXiv:2406.08070](https://arxiv.org/abs/2406.08070).
# - A. Bradley, P. Nakkiran, *Classifier-Free Guidance is a Predictor-Corrector*,
#   [arXiv:2408.09000](https://arxiv.org/abs/2408.09000).

# %% [markdown]
# ## Checks

# %%
def tv(sampler: str, w: float, nfe: int) -> float:
    return nfe_sweep.select(sampler=sampler, w=w, nfe=nfe, kind="cfg")[0]["tv_to_target"]


top = max(config.nfes)
floor = nfe_sweep.select(sampler="ddim", w=0.0, nfe=top)[0]["tv_noise_floor"]
assert tv("dpm++2m", 0.0, top) < 1.2 * floor and tv("heun", 0.0, top) < tv("heun", 0.0, min(config.nfes))
assert tv("ddim", 3.0, top) - tv("ancestral-v0.3", 3.0, top) > 0.2, "under guidance the ODE and SDE part ways"
matched = {(r["model"], r["method"]): r for r in method_sweep.rows if r["match"]}
assert matched[("exact", "cfg++")]["match"] == "is" and matched[("exact", "cfg")]["w"] == 3.0
assert matched[("exact", "apg")]["is_bayes"] < matched[("exact", "cfg")]["is_bayes"]
assert matched[("learned", "autoguidance")]["match"] == "max-is", "autoguidance does not reach CFG's IS on the toy"
assert paths.points.shape[:3] == (2, 25, 3), "24 grid points: z_1 … z_24 and the final x̂"
print("all checks passed")
