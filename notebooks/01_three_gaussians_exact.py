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
# # 01 · Three Gaussians, exactly: the forward process, the implicit classifier and Figure 2
#
# **What you learn.** On a 2D mixture of three Gaussians every quantity of Ho & Salimans (2022) is known in
# closed form, so nothing here is learned: the noised densities $p_\lambda$, the optimal noise predictor
# $\varepsilon^*$, the *implicit classifier* hidden in the difference of two scores, the paper's Figure 2
# (guided conditionals $\tilde p_w(x|c) \propto p(x|c)\,p(c|x)^w$) with a `w` slider, and a finding the paper
# does not show: **sampling with the exact CFG field does not reproduce those tilted densities.**
#
# **Time.** About 20 s in fast mode (`CFGEDU_FAST=1`, what CI runs) and a few minutes in full mode on a laptop CPU.
#
# Conventions: $\lambda = \log(\alpha^2/\sigma^2)$, $z_\lambda = \alpha x + \sigma\varepsilon$;
# guidance strength is the paper's $w$, $\tilde\varepsilon = (1+w)\,\varepsilon(z,c) - w\,\varepsilon(z)$, which
# diffusers and Imagen write with the scale $s = 1 + w$. The toy's parameters (means on a triangle of
# circumradius 1, std 0.6, equal weights) are **our choice**: the paper states none.

# %% tags=["parameters"]
import os

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
SAMPLES_PER_CLASS = 1_000 if FAST else 20_000  # Algorithm 2 draws per class in the last section
STEPS = 32 if FAST else 256  # sampling steps T
GRID_SIZE = 128 if FAST else 384  # n×n grid of the targets (a multiple of the 32×32 TV histogram)
GUIDANCE = (1.0, 4.0, 16.0)  # the guided panels of Figure 2 (paper's w)

# %%
import torch

from cfgedu import GaussianMixture, guided
from cfgedu.core.schedule import alpha_sigma
from cfgedu.core.tensors import make_generator
from cfgedu.frontend.plotting import plot_figure2
from cfgedu.frontend.widgets import Figure2Widget, ForwardProcessWidget, ScoreFieldWidget
from cfgedu.toy.figure2 import compute_figure2
from cfgedu.toy.grid import Grid2D, moments, tilted_densities

mixture = GaussianMixture.three_gaussians()
mixture.to_dict()

# %% [markdown]
# ## 1. The forward process
#
# Noising a data point $x$ to log-SNR $\lambda$ gives
# $q(z_\lambda|x) = \mathcal N(\alpha_\lambda x, \sigma_\lambda^2 I)$
# with $\alpha_\lambda^2 = \mathrm{sigmoid}(\lambda)$ and $\sigma_\lambda^2 = \mathrm{sigmoid}(-\lambda)$ (Eq. 1).
# For a Gaussian mixture the noised density stays a mixture, with each component squeezed towards 0 and widened:
#
# $$p_\lambda(z|c) = \mathcal N\big(z;\ \alpha\mu_c,\ \alpha^2\Sigma_c + \sigma^2 I\big),\qquad
#   p_\lambda(z) = \textstyle\sum_c \pi_c\, p_\lambda(z|c).$$
#
# Move $\lambda$ down: the same draws $(x, \varepsilon)$ slide from the three clusters to one standard normal.

# %%
ForwardProcessWidget(mixture, lam=2.0)

# %%
wide = Grid2D(half_width=8.0, n=GRID_SIZE)  # wide enough that the tails beyond it are below 1e-9
points = wide.points()
for lam in (-5.0, 0.0, 5.0):
    mass = mixture.log_prob(points, torch.full((len(points),), lam, dtype=torch.float64)).exp().sum() * wide.cell**2
    assert abs(mass - 1) < 1e-6, f"p_λ should integrate to 1 at λ = {lam}, got {mass}"

# %% [markdown]
# ## 2. Exact scores, ε* and the implicit classifier
#
# The network of a diffusion model predicts noise; the best possible prediction is tied to the score by
# $\varepsilon^*(z, c) = -\sigma_\lambda \nabla_z \log p_\lambda(z|c)$ (**note the minus sign**), and the null label
# $\varnothing$ gives the unconditional $\varepsilon^*(z) = -\sigma_\lambda\nabla_z\log p_\lambda(z)$.
# By Bayes' rule, $p_\lambda(c|z) \propto p_\lambda(z|c)/p_\lambda(z)$, so the difference of the two predictions is
# the gradient of a classifier that nobody trained, the **implicit classifier** (Sec. 3.3):
#
# $$\nabla_z \log p_\lambda(c|z) = -\frac{1}{\sigma_\lambda}\big(\varepsilon^*(z,c) - \varepsilon^*(z)\big).$$
#
# Arrows show directions (the longest arrow spans one spacing); the background is the density each field climbs.
# At low $\lambda$ the classifier is almost flat, $p_\lambda(c|z) \approx \pi_c$: guidance has little to push on.

# %%
ScoreFieldWidget(mixture, lam=0.0, c=0)

# %% [markdown]
# The assert below checks $\varepsilon^* = -\sigma\nabla\log p$ against **autograd** on the closed-form
# $\log p_\lambda$, for every class and the null label, and the implicit-classifier identity against autograd on
# $\log p_\lambda(c|z)$.

# %%
generator = make_generator(0)
z = (2 * mixture.sample(256, None, generator)).requires_grad_(True)  # spread out: far points test the tails too
lam = torch.linspace(-6, 6, 256, dtype=torch.float64)
_, sigma = alpha_sigma(lam)
for c in range(mixture.num_classes + 1):  # the last label is the null label ∅
    labels = torch.full((256,), c)
    (grad,) = torch.autograd.grad(mixture.log_prob(z, lam, labels).sum(), z)
    torch.testing.assert_close(mixture.eps(z, lam, labels), -sigma[:, None] * grad, rtol=1e-9, atol=1e-9)
    if c < mixture.num_classes:
        (grad_classifier,) = torch.autograd.grad(mixture.posterior(z, lam)[:, c].log().sum(), z)
        torch.testing.assert_close(mixture.implicit_classifier_gradient(z, lam, labels), grad_classifier,
                                   rtol=1e-7, atol=1e-9)

# %% [markdown]
# Classifier-free guidance (Eq. 6) mixes the two predictions,
# $\tilde\varepsilon = (1+w)\varepsilon(z,c) - w\varepsilon(z)$.
# At $w = 0$ it must be the conditional model and at $w = -1$ the unconditional one. The check runs the
# guided wrapper's doubled batch (a guidance weight given as a function of $\lambda$ skips the $w = 0$ shortcut).

# %%
z, labels = z.detach(), torch.arange(256) % mixture.num_classes
for w, expected in ((0.0, labels), (-1.0, torch.full_like(labels, mixture.num_classes))):
    doubled_batch = guided(mixture, lambda lam, w=w: torch.full_like(lam, w))
    torch.testing.assert_close(doubled_batch(z, lam, labels), mixture(z, lam, expected), rtol=1e-12, atol=1e-12)
torch.testing.assert_close(guided(mixture, 0.0)(z, lam, labels), mixture(z, lam, labels))

# %% [markdown]
# ## 3. Figure 2: guided conditionals
#
# Classifier guidance with strength $w$ targets the **tilted** conditional (Sec. 3.1)
#
# $$\tilde p_w(x|c) = \frac{p(x|c)\,p(c|x)^w}{Z_w(c)} \;\propto\; p(x|c)^{1+w}\,p(x)^{-w},$$
#
# normalised numerically on a grid. The paper's Figure 2 shows the unguided marginal and then the mixture
# $\sum_c \pi_c\,\tilde p_w(x|c)$ at increasing $w$: each class moves away from the others, towards where the
# classifier is confident, and concentrates. Drag `w` (the readout also shows $s = 1 + w$); $w = -1$ flattens the
# classifier away and gives back $p(x)$ for every class.

# %%
Figure2Widget(mixture, w=4.0)

# %%
grid = Grid2D.covering(mixture, n=GRID_SIZE)
top_class_y = [moments(grid, tilted_densities(mixture, grid, w)[0])[1][1].item() for w in (0.0, *GUIDANCE)]
assert top_class_y == sorted(top_class_y), f"guidance should push class 0 (top) upwards: {top_class_y}"
top_class_y

# %% [markdown]
# ## 4. What the paper does not show: sampling with the exact CFG field misses the target
#
# Now sample. Algorithm 2 with the **exact** $\varepsilon^*$ and $\tilde\varepsilon^* = (1+w)\varepsilon^*(z,c) -
# w\varepsilon^*(z)$: no network, no training error. Row 2 shows histograms of the samples and their total-variation
# distance (TV) to the row-1 targets, beside the **noise floor**, the TV of exact draws from the target itself.
#
# At $w = 0$ the sampler lands on the target (TV at the floor). For $w > 0$ it does not, and the gap grows with
# $w$: the CFG field at level $\lambda$ is the score of $p_\lambda(z|c)^{1+w}p_\lambda(z)^{-w}$, a *different*
# family of densities from the noised versions of $\tilde p_w$. Only at $\lambda \to \infty$ do the two agree, and a
# reverse process needs the scores of one diffused family all the way (Bradley & Nakkiran 2024; Chidambaram et al.
# 2024). In this toy the samples end up much further from the other classes than the tilted target, and they
# keep a round shape where the target bends into a crescent.

# %%
result = compute_figure2(mixture, GUIDANCE, samples_per_class=SAMPLES_PER_CLASS, steps=STEPS, grid=grid)
plot_figure2(result);

# %%
summary = result.to_dict()
for panel, summary_panel in zip(result.panels, summary["panels"], strict=True):
    tv = [c["tv_sampler_to_target"] for c in summary_panel["classes"]]
    floor = [c["tv_noise_floor"] for c in summary_panel["classes"]]
    top_target, top_sampled = summary_panel["classes"][0]["mean"][1], panel.samples["exact"][0, :, 1].mean().item()
    print(f"w = {panel.w:>4g}: TV to target {sum(tv) / 3:.3f} (noise floor {sum(floor) / 3:.3f}); "
          f"class 0 mean height: target {top_target:.2f}, CFG samples {top_sampled:.2f}")

# %%
unguided, *guided_panels = summary["panels"]
assert all(abs(c["mass"] - 1) < 1e-6 for panel in summary["panels"] for c in panel["classes"])
assert all(c["tv_sampler_to_target"] < c["tv_noise_floor"] + 0.05 for c in unguided["classes"]), \
    "at w = 0 exact-score sampling should reproduce each component up to sampling noise"
assert all(c["tv_sampler_to_target"] > 2 * c["tv_noise_floor"] for c in guided_panels[-1]["classes"]), \
    "at the largest w exact-score CFG samples should be far from the tilted target"
assert top_sampled > top_target + 0.2, "at the largest w CFG should push class 0 further out than its target"
