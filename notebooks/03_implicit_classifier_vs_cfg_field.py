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
# # 03 · The implicit classifier and the CFG field: when guidance is not a gradient
#
# **What you learn.** Ho & Salimans (2022, §3) build classifier-free guidance from an *implicit classifier*:
# with exact scores, $-(\varepsilon^*(z,c) - \varepsilon^*(z))/\sigma = \nabla_z \log p_\lambda(c|z)$, so the guided
# field is the gradient of a log-density. With **learned** $\varepsilon_\theta$ the same combination is, in
# general, **not the gradient of anything**: nothing makes the Jacobian of a difference of two network outputs
# symmetric. This notebook measures that gap — curl, circulation, a Helmholtz–Hodge split — with `w` and
# $\lambda$ sliders, contrasts an energy-parameterised network whose fields are gradients by construction, and
# samples with the raw field beside its conservative projection.
#
# **Time.** About 25 s in fast mode (`CFGEDU_FAST=1`, what CI runs: small, briefly trained networks) and
# 3–5 minutes in full mode on a 2-core CPU (the default 3×128 MLPs, 3000 steps each).

# %% tags=["parameters"]
import os

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
STEPS = 300 if FAST else 3000  # optimisation steps per network
BATCH = 256 if FAST else 1024
LR = 5e-3 if FAST else 2e-3
WIDTH = 64 if FAST else 128
DEPTH = 2 if FAST else 3
P_UNCOND = 0.5 if FAST else 0.1  # a short run needs more unconditional examples
GRID = 32 if FAST else 96  # grid points per side over [−3, 3]² for curl and Helmholtz–Hodge
SAMPLES_PER_CLASS = 300 if FAST else 4000  # Algorithm 2 draws per class in the last section
SAMPLING_STEPS = 16 if FAST else 64

# %%
import matplotlib.pyplot as plt
import torch

from cfgedu import GaussianMixture
from cfgedu.engine.experiment import train_experiment
from cfgedu.engine.presets import toy_experiment
from cfgedu.frontend.plotting import plot_curl_panels, plot_helmholtz, sample_histogram
from cfgedu.frontend.widgets import CFGFieldWidget
from cfgedu.toy.fields import (
    as_float64,
    cfg_field,
    circulation,
    field_report,
    implicit_classifier_gradient,
    projection_sampling,
)
from cfgedu.toy.grid import Grid2D, grid_values
from cfgedu.toy.helmholtz import helmholtz_hodge
from cfgedu.toy.learned import eps_relative_errors

mixture = GaussianMixture.three_gaussians()
grid = Grid2D(3.0, GRID)
settings = {"p_uncond": P_UNCOND, "batch_size": BATCH, "lr": LR, "width": WIDTH, "depth": DEPTH}
mlp, energy = (train_experiment(toy_experiment(kind, STEPS, **settings), None, progress=False).ema.eval()
               for kind in ("mlp", "energy"))
{name: eps_relative_errors(model, mixture, 10_000) for name, model in (("mlp", mlp), ("energy", energy))}

# %% [markdown]
# ## 1. The implicit classifier, exact and learned
#
# Bayes' rule turns two scores into a classifier gradient (§3.3):
#
# $$\nabla_z \log p_\lambda(c|z) = \nabla_z \log p_\lambda(z|c) - \nabla_z \log p_\lambda(z)
#   = -\frac{1}{\sigma_\lambda}\big(\varepsilon^*(z,c) - \varepsilon^*(z)\big).$$
#
# Below, the exact one (blue) and the one read off the learned network (red) at $\lambda = 0$ for class 0.
# They agree where the data are; the learned one is a *small difference of two large outputs*, so its
# relative error is far larger than the ε error itself.

# %%
points = Grid2D(2.6, 13).points()
lam = torch.zeros(len(points), dtype=torch.float64)
label = torch.zeros(len(points), dtype=torch.long)
exact = mixture.implicit_classifier_gradient(points, lam, label)
learned = implicit_classifier_gradient(as_float64(mlp), points, lam, label, mixture.num_classes)
fig, ax = plt.subplots(figsize=(4, 4))
ax.quiver(*points.T, *exact.T, color="tab:blue", angles="xy", scale_units="xy", scale=4)
ax.quiver(*points.T, *learned.T, color="tab:red", angles="xy", scale_units="xy", scale=4, alpha=0.7)
ax.set(aspect="equal", xticks=[], yticks=[], title="∇log p_λ(c=0|z) at λ = 0: exact (blue), learned (red)")
((learned - exact).norm(dim=1).mean() / exact.norm(dim=1).mean()).item()

# %% [markdown]
# ## 2. Curl: is the CFG field a gradient?
#
# A smooth 2D field $f$ is a gradient on a simply connected domain iff its Jacobian is symmetric, i.e. iff
# $\operatorname{curl} f = \partial_x f_y - \partial_y f_x = 0$. For the CFG field
# $\tilde\varepsilon = (1+w)\,\varepsilon(z,c) - w\,\varepsilon(z)$ the curl is linear in $w$:
#
# $$\operatorname{curl}\tilde\varepsilon = \operatorname{curl}\varepsilon(\cdot,c)
#   + w\,\big[\operatorname{curl}\varepsilon(\cdot,c) - \operatorname{curl}\varepsilon(\cdot,\varnothing)\big].$$
#
# We report the scale-free **relative curl** $\operatorname{mean}|\operatorname{curl}| / \operatorname{mean}\|J\|_F$
# (autograd Jacobian on a grid over $[-3,3]^2$). Exact scores give round-off; the ε-MLP gives percents that grow
# with $w$; the energy network, whose ε is $\sigma\nabla_z U_\theta$, gives round-off again.

# %%
rows = [{"model": name, **field_report(model, lam_, 0, w, grid)}
        for name, model in (("exact", mixture), ("mlp", mlp), ("energy", energy))
        for lam_ in (-4.0, 0.0, 4.0) for w in (0.0, 1.0, 3.0)]
for row in rows:
    print(f"{row['model']:>6}  λ = {row['lambda']:+g}  w = {row['w']:g} (s = {1 + row['w']:g})  "
          f"relative curl {row['relative_curl']:.2e}  circulation(r = 0.8) {row['circulation']:+.2e}")

# %%
assert all(row["relative_curl"] < 1e-6 for row in rows if row["model"] == "exact")
assert all(row["relative_curl"] < 1e-4 for row in rows if row["model"] == "energy")
if not FAST:
    curl = {(row["lambda"], row["w"]): row["relative_curl"] for row in rows if row["model"] == "mlp"}
    assert all(curl[(lam_, 3.0)] > curl[(lam_, 0.0)] for lam_ in (-4.0, 0.0, 4.0))

# %% [markdown]
# The learned field's curl (colour) under its streamlines, at three levels and three strengths:

# %%
plot_curl_panels(mlp, (0.0, 1.0, 3.0), (-4.0, 0.0, 4.0), grid=grid, title="ε-MLP: curl of the CFG field");

# %% [markdown]
# ### Explore: `w` and λ sliders
#
# Left: the curl of the learned CFG field with arrows of the guided score $-\tilde\varepsilon/\sigma$. Right: the
# implicit classifier of the model (red) against the exact one (blue). The readout shows $w$, $s = 1 + w$ and
# the relative curl.

# %%
CFGFieldWidget(mlp, mixture, grid=grid)

# %% [markdown]
# ## 3. Circulation
#
# Stokes: the circulation $\Gamma = \oint f\cdot dl$ around a circle equals the curl flux through the disc, so a
# gradient field has $\Gamma = 0$ around every loop — and a line integral of a field with $\Gamma \neq 0$ depends
# on the path, so no potential (no "log-likelihood of a classifier") can produce it.

# %%
radii = torch.linspace(0.2, 2.0, 10).tolist()
fig, ax = plt.subplots(figsize=(5, 3.2))
for name, model in (("exact", mixture), ("mlp", as_float64(mlp)), ("energy", as_float64(energy))):
    ax.plot(radii, [circulation(cfg_field(model, 0.0, 0, 3.0), r) for r in radii], "o-", label=name)
ax.set(xlabel="radius r", ylabel="Γ(r)", title="circulation of the CFG field, λ = 0, w = 3")
ax.legend()

# %% [markdown]
# ## 4. Helmholtz–Hodge: how much of the field is rotational?
#
# Any field on the square splits as $f = \nabla\varphi + \nabla^\perp\psi + h$:
# solve $\Delta\varphi = \operatorname{div} f$
# (Neumann, by DCT) and $\Delta\psi = \operatorname{curl} f$ (Dirichlet, by DST). The **rotational energy fraction**
# $\|f - \nabla\varphi\|^2/\|f\|^2$ says how much of the learned CFG field no potential can explain.

# %%
split = helmholtz_hodge(grid_values(cfg_field(as_float64(mlp), 0.0, 0, 3.0), grid), grid)
plot_helmholtz(split, title=f"ε-MLP, λ = 0, w = 3: rotational energy {split.rotational_energy_fraction:.1e}");

# %% [markdown]
# ## 5. Sampling with the raw field and with its conservative projection
#
# The gradient part $\nabla\varphi$ is itself an `eps_model` (recomputed on a grid at every level λ and class).
# Algorithm 2 with the raw learned CFG field and with its projection, from the same noise, against the tilted
# target $\pi_w(x|c) \propto p(x|c)\,p(c|x)^w$ (TV on a 32×32 histogram; notebook 01 explains why even exact
# scores do not reach it).

# %%
W = 3.0
result = projection_sampling(mlp, mixture, W, samples_per_class=SAMPLES_PER_CLASS, steps=SAMPLING_STEPS)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
for ax, (name, samples) in zip(axes, result["samples"].items(), strict=True):
    sample_histogram(ax, result["grid"], samples, 64, weights=mixture.weights,
                     title=f"{name} field, w = {W:g}: TV {result['tv'][name]:.3f}")
result["tv"]

# %%
assert all(0 <= tv <= 1 for tv in result["tv"].values())
