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
# **What you will learn**
# - why it matters whether a guidance field is a gradient: a gradient field pushes up *some* classifier's
#   log-probability, a field with curl pushes up none
# - to measure how far a learned CFG field is from a gradient: curl, circulation and the Helmholtz–Hodge split
# - classifier guidance with a trained noisy classifier beside CFG, on the same network: fields, samples and metrics
# - how good a classifier CFG's implicit classifier is, when its probabilities are computed (the paper doubts it)
#
# **Assumes** notebooks 01 (the implicit classifier, classifier guidance) and 02 (training the toy MLP).
# **Takes** about 15 seconds in fast mode and about 2 minutes in full mode on a 2-core CPU (two 3000-step
# networks, a 1000-step classifier and the comparisons).
#
# Why this matters. With exact scores, guidance adds $w$ times the gradient of the implicit classifier
# $\log p_\lambda(c|z)$ (notebook 01, §5): sampling climbs the log-probability of a classifier, the same move an
# adversarial attack on that classifier makes. Ho & Salimans stress (§3.2) that with **learned** networks this reading
# breaks. The CFG direction $\varepsilon_\theta(z, c) - \varepsilon_\theta(z, \varnothing)$ is the difference of two
# unconstrained network outputs, and nothing makes it the gradient of anything, so CFG "cannot be interpreted as a
# gradient-based adversarial attack on a classifier". A smooth 2D field is a gradient if and only if its **curl**
# $\partial_x f_y - \partial_y f_x$ vanishes (on a simply connected domain). This notebook measures that curl.

# %% tags=["parameters"]
import os

import cfgedu  # noqa: F401 (first, before torch: it lets idle OpenMP threads sleep, not spin)

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
STEPS = 300 if FAST else 3000  # optimisation steps per ε network
CLASSIFIER_STEPS = 300 if FAST else 1000  # the noisy classifier's (the toy-classifier preset's 1000)
BATCH = 256 if FAST else 1024
LR = 5e-3 if FAST else 2e-3
WIDTH = 64 if FAST else 128
DEPTH = 2 if FAST else 3
P_UNCOND = 0.5 if FAST else 0.1  # a short run needs more unconditional examples
GRID = 32 if FAST else 96  # grid points per side over [−3, 3]² for curl and Helmholtz–Hodge
SAMPLES_PER_CLASS = 300 if FAST else 4000  # Algorithm 2 draws per class in §5 and §6
SAMPLING_STEPS = 16 if FAST else 64
CLASSIFIER_POINTS = 2000 if FAST else 20_000  # noised draws per λ in §7

# %%
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from cfgedu import GaussianMixture, guided
from cfgedu.core.configs import apply_overrides
from cfgedu.core.guidance import classifier_guided
from cfgedu.core.tensors import make_generator
from cfgedu.engine.experiment import train_experiment
from cfgedu.engine.presets import preset, toy_experiment
from cfgedu.frontend.plotting import plot_curl_panels, plot_helmholtz, sample_histogram
from cfgedu.frontend.widgets import CFGFieldWidget, GuidanceFieldsWidget
from cfgedu.toy.classifiers import ImplicitClassifier, classifier_table, exact_classifier
from cfgedu.toy.fields import as_float64, cfg_field, circulation, field_report, projection_sampling
from cfgedu.toy.grid import Grid2D, HistogramTV, grid_values, tilted_densities
from cfgedu.toy.helmholtz import helmholtz_hodge
from cfgedu.toy.learned import eps_relative_errors
from cfgedu.toy.metrics import bayes_inception_score, frechet_pooled
from cfgedu.toy.sampling import class_samples

# %% [markdown]
# Three networks, trained as in notebook 02: the ε-MLP (an unconstrained field, the paper's kind of network); its
# **energy** twin, whose output is $\varepsilon = \sigma\nabla_z U_\theta(z, \lambda, c)$ for a scalar network
# $U_\theta$, so every field it gives is a gradient by construction; and a **noisy classifier**
# $p_\phi(c|z_\lambda, \lambda)$,
# trained by cross-entropy on the same forward process (`toy-classifier` preset), the classifier that classifier
# guidance needs. The cell prints each ε network's relative error against the exact $\varepsilon^*$.

# %%
mixture = GaussianMixture.three_gaussians()
grid = Grid2D(3.0, GRID)
settings = {"p_uncond": P_UNCOND, "batch_size": BATCH, "lr": LR, "width": WIDTH, "depth": DEPTH}
mlp, energy = (train_experiment(toy_experiment(kind, STEPS, **settings), None, progress=False).ema.eval()
               for kind in ("mlp", "energy"))
classifier_setup = {"steps": CLASSIFIER_STEPS, "batch_size": BATCH, "width": WIDTH}
noisy_classifier = train_experiment(apply_overrides(preset("toy-classifier"), classifier_setup), None,
                                    progress=False).ema.eval()
{name: eps_relative_errors(model, mixture, 10_000) for name, model in (("mlp", mlp), ("energy", energy))}

# %% [markdown]
# ## 1. The implicit classifier, exact and learned
#
# Bayes' rule turns two scores into a classifier gradient (§3.2 of the paper, notebook 01 §5):
#
# $$\nabla_z \log p_\lambda(c|z)
#   = -\frac{1}{\sigma_\lambda}\big(\varepsilon^*(z,c) - \varepsilon^*(z,\varnothing)\big).$$
#
# The slider panel shows, at level λ for class 0, the learned CFG field's curl (colour) under its guided score, and
# beside it the implicit classifier of the network (red) over the exact one (blue). The colour is the curl divided by
# the field's typical Jacobian size $\operatorname{mean}\|J\|_F$ (the Frobenius norm of the 2×2 matrix of derivatives),
# so it reads the same at every λ, on one fixed scale.

# %%
CFGFieldWidget(mlp, mixture, grid=grid)

# %% [markdown]
# Move `w` up: the colour deepens, linearly in $w$. Move λ: the classifier arrows fade at low λ (high noise), where
# even the exact classifier is nearly flat.
#
# ## 2. Curl: is the CFG field a gradient?
#
# The question of this notebook in one number per field: zero curl means the guided field climbs some classifier's
# log-probability; any curl means no classifier explains it.
#
# For $\tilde\varepsilon = (1+w)\,\varepsilon(z,c) - w\,\varepsilon(z,\varnothing)$ the curl is linear in $w$:
#
# $$\operatorname{curl}\tilde\varepsilon = \operatorname{curl}\varepsilon(\cdot,c)
#   + w\,\big[\operatorname{curl}\varepsilon(\cdot,c) - \operatorname{curl}\varepsilon(\cdot,\varnothing)\big].$$
#
# We report the scale-free **relative curl** $\operatorname{mean}|\operatorname{curl}| / \operatorname{mean}\|J\|_F$,
# with the Jacobian by autograd on a grid over $[-3,3]^2$. Exact scores give round-off, the ε-MLP gives small but real
# values that grow with $w$, and the energy network gives round-off again.

# %%
rows = [{"model": name, **field_report(model, lam_, 0, w, grid)}
        for name, model in (("exact", mixture), ("mlp", mlp), ("energy", energy))
        for lam_ in (-4.0, 0.0, 4.0) for w in (0.0, 1.0, 3.0)]
for row in rows:
    print(f"{row['model']:>6}  λ = {row['lambda']:+g}  w = {row['w']:g} (s = {1 + row['w']:g})  "
          f"relative curl {row['relative_curl']:.2e}")

# %% [markdown]
# Where the curl sits, at three levels and three strengths (green crosses: the class means):

# %%
plot_curl_panels(mlp, (0.0, 1.0, 3.0), (-4.0, 0.0, 4.0), grid=grid, mixture=mixture,
                 title="ε-MLP: curl of the CFG field");

# %% [markdown]
# One colour scale for all nine panels: the curl grows with $w$ along each row, and concentrates where the classes
# overlap, between the crosses, where the network had to learn the sharpest changes of $\varepsilon$.
#
# ## 3. Circulation
#
# Stokes' theorem: the circulation $\Gamma = \oint f\cdot dl$ around a circle equals the curl integrated over the disc.
# A gradient field has $\Gamma = 0$ around every loop; a field with $\Gamma \ne 0$ has no potential, because walking
# once around the loop would have to return to a different "log-probability" than it started from.

# %%
radii = torch.linspace(0.2, 2.0, 10).tolist()
fig, ax = plt.subplots(figsize=(5, 3.2))
for name, model in (("exact", mixture), ("mlp", as_float64(mlp)), ("energy", as_float64(energy))):
    ax.plot(radii, [circulation(cfg_field(model, 0.0, 0, 3.0), r) for r in radii], "o-", label=name)
ax.set(xlabel="radius r of a circle about the origin", ylabel="Γ(r)",
       title="circulation of the CFG field, λ = 0, w = 3")
ax.legend();

# %% [markdown]
# The exact and energy fields stay on the zero line at every radius; the ε-MLP's circulation grows with the circle,
# the integrated curl inside it.
#
# ## 4. Helmholtz–Hodge: how much of the field is rotational?
#
# Any field on a square splits into a gradient, a rotational part and a harmonic rest, $f = \nabla\varphi +
# \nabla^\perp\psi + h$. Here $\nabla^\perp\psi = (-\partial_y\psi, \partial_x\psi)$ is the gradient of a *stream
# function* ψ turned by 90°: it has no divergence, and its curl is $\Delta\psi$. The potential solves
# $\Delta\varphi = \operatorname{div} f$ (taking all of the field's flux through the boundary) and the stream function
# $\Delta\psi = \operatorname{curl} f$ (zero on the boundary), both fast by cosine and sine transforms; $h$, the rest,
# has neither divergence nor curl. The
# **rotational energy fraction** $\|f - \nabla\varphi\|^2/\|f\|^2$ says how much of the learned CFG field no
# potential can explain.

# %%
split = helmholtz_hodge(grid_values(cfg_field(as_float64(mlp), 0.0, 0, 3.0), grid), grid)
plot_helmholtz(split, title=f"ε-MLP, λ = 0, w = 3: rotational energy {split.rotational_energy_fraction:.1e}");

# %% [markdown]
# Streamlines of the whole field (left), its gradient part (middle) and its rotational part (right, over the stream
# function ψ). The gradient part is almost the whole field; the rotational part is a small whirl, a fraction of a
# percent of the energy at most. Real, but small on this toy.
#
# ## 5. Does the curl change the samples?
#
# The gradient part $\nabla\varphi$ can itself drive the sampler: it maps $(z, \lambda, c)$ to an ε like any model of
# notebook 01 (it is recomputed on a grid at every level and class). Sampling
# with the raw learned field, with its conservative projection, and with the exact CFG field, from the same noise,
# against the tilted target $\pi_w$ (TV on a 32×32 histogram):

# %%
W = 3.0
result = projection_sampling(mlp, mixture, W, samples_per_class=SAMPLES_PER_CLASS, steps=SAMPLING_STEPS)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
titles = {"raw": "learned CFG field", "projected": "its gradient part", "exact": "exact CFG field"}
for ax, (name, samples) in zip(axes, result["samples"].items(), strict=True):
    sample_histogram(ax, result["grid"], samples, 64, weights=mixture.class_weights,
                     title=f"{titles[name]}, w = {W:g}: TV {result['tv'][name]:.3f}")
result["tv"]

# %% [markdown]
# Removing the curl changes the TV by a little compared with how far all three are from $\pi_w$: on this toy the
# non-conservative part is a small correction, and the gap to the target is mostly the gap that even exact scores
# have (notebook 01, §7).
#
# ## 6. Classifier guidance beside CFG
#
# The paper's argument is that CFG replaces a trained classifier. With the noisy classifier trained above, classifier
# guidance on the same conditional network is $\varepsilon_\theta(z, c) - w\,\sigma_\lambda\nabla_z\log p_\phi(c|z)$
# (`cfgedu.core.guidance.classifier_guided`). Its guidance term is the gradient of $\log p_\phi$, so only the network's
# own conditional field can curl; CFG's term curls more with every unit of $w$. Same colour scale for both panels:

# %%
GuidanceFieldsWidget(mlp, noisy_classifier, mixture, grid=grid)

# %% [markdown]
# And the samples, at equal $w$: CFG and classifier guidance on the learned network, and exact-score CFG, measured as
# notebook 04 measures them: TV to $\pi_w$; the **Fréchet distance** (FD) between Gaussian fits of the samples and of
# the data (the paper's FID, on the 2D points themselves); and the **Inception score** with the exact Bayes posterior
# $p(c|x)$ of the mixture as the classifier, $\exp\mathbb E_x\mathrm{KL}(p(c|x)\,\|\,\hat p(c))$ with $\hat p(c)$ the
# average posterior over the samples (higher: more class-typical, at most 3).

# %%
methods = {"CFG (learned)": guided(mlp, W),
           "classifier guidance (learned)": classifier_guided(mlp, noisy_classifier, W),
           "CFG (exact scores)": guided(mixture, W)}
target_grid = Grid2D.covering(mixture)
histogram, targets = HistogramTV(target_grid), tilted_densities(mixture, target_grid, W)
scores = {}
for name, model in methods.items():
    samples = class_samples(model, 3, 0.0, SAMPLES_PER_CLASS, generator=make_generator(0), steps=SAMPLING_STEPS,
                            dtype=torch.float32)
    pooled = samples.reshape(-1, 2)
    scores[name] = {"TV to π_w": sum(map(histogram, samples, targets)) / 3,
                    "FD to the data": frechet_pooled(mixture, pooled),
                    "IS (Bayes)": bayes_inception_score(mixture, pooled)}
lines = ["| method | TV to π_w | FD to the data | IS (Bayes) |", "|---|---|---|---|"]
lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |" for name, row in scores.items()]
display(Markdown(f"**w = {W:g}**\n\n" + "\n".join(lines)))

# %% [markdown]
# On the toy the two guidances land close to each other and to exact-score CFG: with a good network and a good
# classifier, which of the two supplies the classifier term matters less than the fact, shared by all three, that the
# guided field is not the noised target's score.
#
# ## 7. Is the implicit classifier a good classifier?
#
# The paper doubts (§3.2, after Grandvalet & Bengio) that inverting a generative model with Bayes' rule gives a good
# classifier. To test it we need the implicit classifier's **probabilities**, not only its gradient. On the 2D toy
# they can be built: take the learned conditional scores $-\varepsilon_\theta(\cdot, c)/\sigma$ on a grid, keep
# their gradient part $\nabla\varphi_c$ (Helmholtz–Hodge, §4), normalise $e^{\varphi_c}$ on the grid into a density
# $p_\theta(z|c)$, and apply Bayes' rule with the class weights (`ImplicitClassifier`, our construction). Accuracy and
# log-loss, per λ, on the same noised draws, for the exact posterior, the trained noisy classifier and the implicit
# classifier of the ε-MLP:

# %%
classifiers = {"exact posterior": exact_classifier(mixture), "noisy classifier": noisy_classifier,
               "implicit (ε-MLP)": ImplicitClassifier(mlp, mixture.class_weights)}
table = classifier_table(classifiers, mixture, lams=(-4.0, -2.0, 0.0, 2.0, 4.0), points=CLASSIFIER_POINTS)
lines = ["| λ | " + " | ".join(classifiers) + " |", "|---|" + "---|" * len(classifiers)]
for lam_ in sorted({row["lambda"] for row in table}):
    cells = [f"{row['accuracy']:.3f} / {row['log_loss']:.3f}" for row in table if row["lambda"] == lam_]
    lines.append(f"| {lam_:g} | " + " | ".join(cells) + " |")
display(Markdown("**accuracy / log-loss (nats)**\n\n" + "\n".join(lines)))

# %% [markdown]
# All three agree closely at every level: on this toy, with a well-trained ε-MLP, the implicit classifier is as good
# as a trained one, and both are near the Bayes limit set by the overlap of the classes. The paper's doubt concerns
# high-dimensional images with imperfect models; a 2D toy that the network fits almost exactly cannot show it.
#
# ## Takeaways
# - A guidance field is a classifier's gradient only if its curl is zero. Exact scores and energy networks give
#   gradients; an unconstrained ε network gives a CFG field with curl, growing linearly with $w$.
# - Curl, circulation and the Helmholtz–Hodge split measure the same thing three ways; on the toy the rotational
#   part is real but a fraction of a percent of the field.
# - Classifier guidance adds the gradient of a trained classifier, which has no curl; CFG's term is the difference of
#   two network outputs, which does.
# - On this toy, removing the curl or swapping CFG for classifier guidance changes the samples far less than the gap,
#   shared by all guidance, between the guided field and the noised target's score.
#
# ## Try this
# - In the first slider panel, pick λ = 4 and move `w` from 0 to 8: where on the plane does the curl grow?
# - In §5, pass `energy` instead of `mlp` to `projection_sampling`: does its projected field still differ from the
#   raw one?
# - In the second slider panel, set `w = 8`: what happens to the classifier-guidance arrows far from the data, where
#   the classifier is confident and its gradient small?
#
# ## References
# - J. Ho, T. Salimans, *Classifier-Free Diffusion Guidance*, [arXiv:2207.12598](https://arxiv.org/abs/2207.12598):
#   §3.1 (classifier guidance), §3.2 (the implicit classifier; CFG's field is in general not a classifier's gradient).
# - P. Dhariwal, A. Nichol, *Diffusion Models Beat GANs on Image Synthesis*,
#   [arXiv:2105.05233](https://arxiv.org/abs/2105.05233): noisy classifiers and classifier guidance.
# - T. Salimans, J. Ho, *Should EBMs model the energy or the score?*, ICLR 2021 workshop: energy against score
#   parameterisations.
# - Y. Grandvalet, Y. Bengio, *Semi-supervised Learning by Entropy Minimization*, NeurIPS 2004: why a generative
#   model inverted by Bayes' rule need not classify well.
# - H. Bhatia et al., *The Helmholtz-Hodge Decomposition — A Survey*, IEEE TVCG 2013.

# %% [markdown]
# ## Checks

# %%
assert all(row["relative_curl"] < 1e-6 for row in rows if row["model"] == "exact"), "exact scores are gradients"
assert all(row["relative_curl"] < 1e-4 for row in rows if row["model"] == "energy"), "energy fields are gradients"
if not FAST:
    curl = {(row["lambda"], row["w"]): row["relative_curl"] for row in rows if row["model"] == "mlp"}
    assert all(curl[(lam_, 3.0)] > curl[(lam_, 0.0)] for lam_ in (-4.0, 0.0, 4.0)), "the curl must grow with w"
assert all(0 <= tv <= 1 for tv in result["tv"].values())
exact_rows = [row for row in table if row["model"] == "exact posterior"]
assert all(row["accuracy"] >= exact["accuracy"] - 0.05 for row in table for exact in exact_rows
           if row["lambda"] == exact["lambda"]), "every classifier must be near the Bayes accuracy"
print("all checks passed")
