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
# # 01 · Three Gaussians, exactly: scores, guidance and the paper's Figure 2
#
# **What you will learn**
# - why the noise prediction ε of a diffusion model *is* the score −σ∇log p, in two lines of algebra
# - Algorithm 2 of Ho & Salimans (2022), the sampler, written out in twenty lines
# - why "lowering the temperature" is not what guidance does
# - how classifier guidance becomes classifier-free guidance (CFG) by one substitution, Bayes' rule
# - what the paper's Figure 2 shows, and why sampling with the *exact* guided scores still misses it
#
# **Assumes** you know what a gradient and a neural network are and have heard of diffusion models; nothing
# from this course. **Takes** about 10 seconds in fast mode and about 20 seconds in full mode on a 2-core CPU.
#
# Nothing here is learned. On a mixture of three 2D Gaussians every density, score and posterior has a closed
# form at every noise level, so each claim of the paper can be checked exactly, and every later notebook can
# compare a network with the truth computed here.

# %% tags=["parameters"]
import os

import cfgedu  # noqa: F401 (first, before torch: it lets idle OpenMP threads sleep, not spin)

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))  # CI runs a small version; you run it all
SAMPLES_PER_CLASS = 1_000 if FAST else 20_000  # sampler draws per class in §4 and §7
STEPS = 32 if FAST else 256  # sampling steps T
GRID_SIZE = 128 if FAST else 384  # n×n grid of the target densities (a multiple of the 32×32 TV histogram)
WIDGET_SAMPLES = 300 if FAST else 1_000  # per class, for each w the Figure 2 slider shows
GUIDANCE = (1.0, 4.0, 16.0)  # the guided panels of Figure 2 (the paper's w)

# %%
# NBVAL_CHECK_OUTPUT
import matplotlib.pyplot as plt
import torch

from cfgedu import GaussianMixture, guided
from cfgedu.core.guidance import cfg_combine
from cfgedu.core.samplers import sample
from cfgedu.core.schedule import LogSNRSchedule, alpha_sigma
from cfgedu.core.tensors import make_generator
from cfgedu.frontend.plotting import density_image, plot_figure2, sample_histogram
from cfgedu.frontend.widgets import Figure2Widget, ForwardProcessWidget, ScoreFieldWidget
from cfgedu.toy.figure2 import compute_figure2
from cfgedu.toy.grid import Grid2D, HistogramTV, cfg_densities, mix, moments, tilted_densities
from cfgedu.toy.ideal import IdealTiltedModel

mixture = GaussianMixture.three_gaussians()
grid = Grid2D.covering(mixture, n=GRID_SIZE)
mixture.to_dict()

# %% [markdown]
# The toy: three classes $c = 0, 1, 2$ with equal weights $\pi_c = 1/3$, each an isotropic Gaussian
# $p(x|c) = \mathcal N(\mu_c, 0.6^2 I)$ with means on a triangle of circumradius 1 (class 0 at the top). The paper
# gives no parameters for its Figure 2; these are **our** choice, close enough that the classes overlap, which is
# what makes guidance visible.
#
# ## 1. The forward process: noise indexed by log-SNR
#
# A diffusion model learns to undo a noising process. Ho & Salimans index noise by the log signal-to-noise ratio
# $\lambda = \log(\alpha_\lambda^2/\sigma_\lambda^2)$ and keep the variance fixed (Eq. 1):
#
# $$z_\lambda = \alpha_\lambda x + \sigma_\lambda \varepsilon,\qquad \varepsilon \sim \mathcal N(0, I),\qquad
#   \alpha_\lambda^2 = \mathrm{sigmoid}(\lambda),\quad \sigma_\lambda^2 = \mathrm{sigmoid}(-\lambda).$$
#
# Large $\lambda$ is almost clean data, $\lambda \to -\infty$ is pure noise; the course uses $\lambda \in [-20, 20]$.
# For a Gaussian mixture the noised density stays a mixture, each component shrunk toward 0 and widened:
#
# $$p_\lambda(z|c) = \mathcal N\big(z;\ \alpha_\lambda\mu_c,\ (\alpha_\lambda^2 0.6^2 + \sigma_\lambda^2) I\big),\qquad
#   p_\lambda(z) = \textstyle\sum_c \pi_c\, p_\lambda(z|c).$$
#
# Move $\lambda$ down: the same draws $(x, \varepsilon)$ slide from three clusters into one standard normal, and the
# exact density on the right follows them.

# %%
ForwardProcessWidget(mixture, lam=2.0)

# %% [markdown]
# ## 2. The score, and why a denoiser estimates it
#
# A network $\varepsilon_\theta(z_\lambda, \lambda)$ trained to predict the noise with the squared error
# $\|\varepsilon_\theta - \varepsilon\|^2$ converges to the conditional mean
# $\varepsilon^*(z) = \mathbb E[\varepsilon \mid z_\lambda = z]$, because the function that minimises an expected
# squared error is the conditional mean. That mean is the **score** of the noised data, up to a factor.
# Differentiate $p_\lambda(z) = \int p(x)\,\mathcal N(z; \alpha x, \sigma^2 I)\,dx$ under the integral and
# divide by $p_\lambda(z)$; what is left is an average over the posterior $p(x|z) = p(x)\,\mathcal N(z; \alpha x,
# \sigma^2 I)/p_\lambda(z)$:
#
# $$\nabla_z \log p_\lambda(z) = \int \frac{p(x)\,\mathcal N(z; \alpha x, \sigma^2 I)}{p_\lambda(z)}\,
#   \nabla_z\log\mathcal N(z; \alpha x, \sigma^2 I)\,dx
#   = \mathbb E\Big[-\frac{z - \alpha x}{\sigma^2} \,\Big|\, z\Big]
#   = -\frac{1}{\sigma}\,\mathbb E[\varepsilon \mid z]
#   \quad\Longrightarrow\quad \varepsilon^*(z) = -\sigma_\lambda\,\nabla_z \log p_\lambda(z),$$
#
# because $z - \alpha x = \sigma\varepsilon$. (Note the minus sign.) The same identity read for $x$ is Tweedie's
# formula: the best guess of the clean data is $\hat x = \mathbb E[x|z] = (z - \sigma\,\varepsilon^*)/\alpha$.
# Conditioning on a class changes nothing in the algebra: $\varepsilon^*(z, c) = -\sigma\nabla\log p_\lambda(z|c)$.
#
# For the mixture, `GaussianMixture` computes $\varepsilon^*$ in closed form. Below it is compared with
# $-\sigma\nabla\log p_\lambda$ by **autograd** on the closed-form log-density, for every class and for the null
# label $\varnothing$ (label 3, the unconditional model):

# %%
generator = make_generator(0)
z = (2 * mixture.sample(256, None, generator)).requires_grad_(True)  # spread out: far points test the tails too
lam = torch.linspace(-6, 6, 256, dtype=torch.float64)
_, sigma = alpha_sigma(lam)
score_errors = []
for c in range(mixture.num_classes + 1):  # the last label is the null label ∅
    labels = torch.full((256,), c)
    (grad,) = torch.autograd.grad(mixture.log_prob(z, lam, labels).sum(), z)
    score_errors.append((mixture.eps(z, lam, labels) + sigma[:, None] * grad).abs().max().item())
print(f"largest |ε* + σ∇log p| over classes, ∅ and λ ∈ [−6, 6]: {max(score_errors):.1e}")

# %% [markdown]
# Round-off: the identity holds. From here on "a model" is anything that maps $(z, \lambda, c)$ to $\varepsilon$;
# the exact mixture is one, and the networks of notebooks 02-07 will be others.
#
# ## 3. Sampling: Algorithm 2 in twenty lines
#
# Sampling runs the noise backwards on an increasing grid $\lambda_1 = -20 < \dots < \lambda_T = 20$. The grid is
# evenly spaced in the schedule's time $u \in [0, 1]$, where $u = 1$ is pure noise ($\lambda = -20$), $u = 0$ clean
# data ($\lambda = 20$) and $\lambda(u) = -2\log\tan(a u + b)$ (the cosine schedule; notebook 02 draws training
# levels the same way): that puts more steps near $\lambda = 0$ than at the two ends. At each level the model's
# $\varepsilon$ gives the denoised guess $\hat x = (z - \sigma\varepsilon)/\alpha$, and the next state is drawn from
# the posterior of the forward process, $q(z_{\lambda'} \mid z_\lambda, x)$, with $\hat x$ in place of the unknown
# data $x$ (Eq. 3; with $\lambda < \lambda'$ the next, cleaner level),
#
# $$z' \sim \mathcal N\Big(e^{\lambda-\lambda'}\tfrac{\alpha_{\lambda'}}{\alpha_\lambda} z
#   + (1 - e^{\lambda-\lambda'})\,\alpha_{\lambda'}\hat x,\ \
#   (\tilde\sigma^2)^{1-v}(\sigma^2_{\lambda|\lambda'})^{v}\Big),\qquad
#   \tilde\sigma^2 = (1 - e^{\lambda-\lambda'})\,\sigma_{\lambda'}^2,\quad
#   \sigma^2_{\lambda|\lambda'} = (1 - e^{\lambda-\lambda'})\,\sigma_\lambda^2 .$$
#
# $v \in [0, 1]$ interpolates between the posterior's variance ($v = 0$) and the forward step's ($v = 1$) in log
# space; the paper fixes $v = 0.3$ at 64×64. The last step returns $\hat x$ with no noise. Here it is, for any model:

# %%
def algorithm2(eps_model, labels, steps: int, v: float, generator: torch.Generator) -> torch.Tensor:
    """Ho & Salimans (2022), Algorithm 2 (with a guided model, or any other eps_model), float64 (B, 2)."""
    lams = LogSNRSchedule().grid(steps)  # λ_1 = −20 < ... < λ_T = 20
    z = torch.randn(len(labels), 2, generator=generator, dtype=torch.float64)  # z_1 ~ N(0, I)
    for t in range(steps):
        lam, lam_next = lams[t].expand(len(labels)), lams[min(t + 1, steps - 1)].expand(len(labels))
        alpha, sigma = alpha_sigma(lam)[0][:, None], alpha_sigma(lam)[1][:, None]
        x_hat = (z - sigma * eps_model(z, lam, labels)) / alpha  # x̂ = (z − σ ε)/α
        if t == steps - 1:
            return x_hat  # the last step adds no noise
        alpha_next, sigma_next = alpha_sigma(lam_next)[0][:, None], alpha_sigma(lam_next)[1][:, None]
        keep = torch.exp(lam - lam_next)[:, None]  # e^{λ−λ'} ∈ (0, 1)
        mean = keep * (alpha_next / alpha) * z + (1 - keep) * alpha_next * x_hat  # Eq. 3
        variance = ((1 - keep) * sigma_next**2) ** (1 - v) * ((1 - keep) * sigma**2) ** v
        z = mean + variance.sqrt() * torch.randn(z.shape, generator=generator, dtype=torch.float64)


labels = torch.arange(3).repeat_interleave(500)
ours = algorithm2(mixture, labels, steps=64, v=0.3, generator=make_generator(1))
library = sample(mixture, (2,), labels, generator=make_generator(1), steps=64, v=0.3, dtype=torch.float64)
print(f"largest difference from cfgedu.core.samplers.sample with the same seed: {(ours - library).abs().max():.1e}")

# %% [markdown]
# The library's `sample` is the same loop (with checks, DDIM as an option and a progress bar). With the exact
# $\varepsilon^*$ and no guidance it reproduces the data: each class's samples have the class's mean and spread.

# %%
for c in range(3):
    drawn = library[labels == c]
    print(f"class {c}: mean {drawn.mean(0).numpy().round(2)} (true {mixture.means[c].numpy().round(2)}), "
          f"std {drawn.std(0).numpy().round(2)} (true 0.6)")

# %% [markdown]
# ## 4. Why not just lower the temperature?
#
# Guidance trades diversity for samples that look more typical of their class. Generative models have older
# knobs for that: GANs truncate their latent noise, flows such as Glow sample at a lower temperature. The paper
# (§1, §3) notes that the naive diffusion versions — **scaling the score** up, or **shrinking the noise** added at
# each reverse step — give blurry, low-quality images instead. What do they do on the toy? Compare, for class 0:
#
# - the **tilted target** $\pi_w(x|c) \propto p(x|c)\,p(c|x)^w$ that guidance aims at (derived in §5, drawn in §6),
#   at $w = 3$;
# - CFG with the exact scores at $w = 3$ (the paper's method, §5; `guided` wraps a model with it);
# - the score multiplied by 4: the model $4\,\varepsilon^*(z, c)$;
# - the reverse noise shrunk: every step's standard deviation times 0.5 (`noise_scale`).
#
# Each panel title gives the **total-variation distance (TV)** to the target, $\tfrac12\int|p - q|$: 0 for the same
# density, 1 for densities that do not overlap, measured on a 32×32 histogram of the samples.

# %%
W_COMPARE, histogram = 3.0, HistogramTV(grid)
target = tilted_densities(mixture, grid, W_COMPARE)
ways = {"CFG, w = 3": (guided(mixture, W_COMPARE), 1.0),
        "score × 4": (lambda z, lam, c: 4 * mixture(z, lam, c), 1.0),
        "noise × 0.5": (mixture, 0.5)}
label0 = torch.zeros(SAMPLES_PER_CLASS, dtype=torch.long)
drawn = {name: sample(model, (2,), label0, generator=make_generator(2), steps=STEPS, dtype=torch.float64,
                      num_classes=3, noise_scale=noise)
         for name, (model, noise) in ways.items()}
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
density_image(axes[0], grid, target[0], title="target π_w(x|c=0), w = 3")
for ax, (name, x) in zip(axes[1:], drawn.items(), strict=True):
    sample_histogram(ax, grid, x, 64, title=f"{name}: TV {histogram(x, target[0]):.2f}")
for ax in axes:
    ax.plot(*mixture.means.T.numpy(), "c+", ms=8)
fig.tight_layout()

# %% [markdown]
# The crosses are the three class means. Scaling the score or cooling the noise squeezes class 0 around its own
# mean, symmetrically: it ignores where the other classes are. The tilted target instead moves mass **away from
# the other classes**, toward where a classifier is sure the point is class 0, and bends into a crescent. CFG goes
# that way (it overshoots, which §7 explains); the temperature knobs do not. In images, "squeezing every pixel
# toward the class mean" is what the paper calls blurry.
#
# ## 5. From classifier guidance to classifier-free guidance
#
# **Classifier guidance** (Dhariwal & Nichol 2021; the paper's §3.1) trains a classifier $p_\phi(c|z_\lambda)$ on
# noised data and adds its gradient to the score, with a strength $w \ge 0$:
#
# $$\tilde\varepsilon(z, c) = \varepsilon(z, c) - w\,\sigma_\lambda \nabla_z \log p_\phi(c|z)
#   \;\approx\; -\sigma_\lambda\nabla_z\big[\log p(z|c) + w\log p(c|z)\big],$$
#
# the score of the **tilted** density $p(z|c)\,p(c|z)^w$: samples the classifier is sure about become likelier.
# Ho & Salimans replace the classifier by Bayes' rule. Since $p(c|z) = p(z|c)\,p(c)/p(z)$ and $p(c)$ does not depend
# on $z$ (the score ignores normalising constants),
#
# $$\nabla_z \log p(c|z) = \nabla_z \log p(z|c) - \nabla_z \log p(z)
#   = -\frac{1}{\sigma}\big(\varepsilon(z, c) - \varepsilon(z, \varnothing)\big).$$
#
# This is the **implicit classifier**: the difference of the conditional and unconditional predictions. Substitute
# it into classifier guidance:
#
# $$\tilde\varepsilon = \varepsilon(z, c) + w\big(\varepsilon(z, c) - \varepsilon(z, \varnothing)\big)
#   = (1 + w)\,\varepsilon(z, c) - w\,\varepsilon(z, \varnothing) \qquad\text{(Eq. 6)}.$$
#
# One network trained on both (notebook 02) gives both predictions; no classifier is trained. The whole method is
# one line, `cfgedu.core.guidance.cfg_combine`:
#
# ```python
# def cfg_combine(cond, uncond, w):
#     return cond + w * (cond - uncond)
# ```
#
# $w = 0$ is the plain conditional model and $w = -1$ the unconditional one. Diffusers, Imagen, EDM2 and DiT write
# the same rule with the **scale** $s = 1 + w$, $\tilde\varepsilon = \varepsilon(z,\varnothing) + s(\varepsilon(z,c) -
# \varepsilon(z,\varnothing))$: the paper's $w = 0.3$ is their $s = 1.3$. Every slider in this course shows both.
#
# The arrows below are the exact fields at level $\lambda$ for class $c$: the conditional score, the unconditional
# score, and their difference, the implicit classifier, over the density each one climbs. At low $\lambda$ the
# classifier is almost flat, $p_\lambda(c|z) \approx \pi_c$: guidance has little to push on at high noise.

# %%
ScoreFieldWidget(mixture, lam=0.0, c=0)

# %% [markdown]
# The paper's §3.1 also remarks that classifier guidance with weight $w + 1$ on the *unconditional* model equals
# weight $w$ on the conditional model, because $p(z|c)\,p(c|z)^w \propto p(z)\,p(c|z)^{w+1}$. With the exact scores
# both sides can be computed:

# %%
z, labels = z.detach(), torch.arange(256) % mixture.num_classes
null = torch.full_like(labels, mixture.num_classes)
classifier = mixture.implicit_classifier_gradient(z, lam, labels)  # ∇log p_λ(c|z), exact
on_conditional = mixture(z, lam, labels) - 2.0 * sigma[:, None] * classifier  # w = 2 on ε(z, c)
on_unconditional = mixture(z, lam, null) - 3.0 * sigma[:, None] * classifier  # w + 1 = 3 on ε(z, ∅)
cfg = cfg_combine(mixture(z, lam, labels), mixture(z, lam, null), 2.0)
print(f"w on the conditional vs w + 1 on the unconditional: {(on_conditional - on_unconditional).abs().max():.1e}")
print(f"classifier guidance with the exact classifier vs exact-score CFG: {(on_conditional - cfg).abs().max():.1e}")

# %% [markdown]
# Both are round-off. With the **exact** classifier, classifier guidance and CFG are the same field. They differ
# only when the pieces are learned (notebook 03).
#
# ## 6. Figure 2: the tilted target $\pi_w$
#
# The density classifier guidance aims at is, at the data level,
#
# $$\pi_w(x|c) = \frac{p(x|c)\,p(c|x)^w}{Z_w(c)} \;\propto\; p(x|c)^{1+w}\,p(x)^{-w},$$
#
# normalised numerically on a grid. The paper's Figure 2 shows the unguided marginal $p(x)$ and then the mixture
# $\sum_c \pi_c\,\pi_w(x|c)$ at increasing $w$: each class moves away from the others, toward where the classifier
# is confident, and concentrates. Drag `w` (the readout also shows $s = 1 + w$). Left: the unguided marginal $p(x)$.
# Middle: the target mixture at the slider's $w$. Right: what the sampler of §3 draws with the exact CFG field at the
# precomputed $w$ nearest the slider, with its TV to the target and the TV that exact draws from the target itself
# get (the **noise floor**: what the sample size alone costs).

# %%
Figure2Widget(mixture, w=4.0, per_class=WIDGET_SAMPLES)

# %% [markdown]
# Try $w = -1$: the classifier is flattened away and every class becomes $p(x)$. At $w = 0$ the samples sit at the
# noise floor; from $w = 1$ on they do not, and the gap grows with $w$. Where does it come from, when nothing here
# is learned?
#
# ## 7. What CFG samples, even with exact scores
#
# Run the sampler with the exact CFG field
# $\tilde\varepsilon^* = (1 + w)\varepsilon^*(z, c) - w\,\varepsilon^*(z, \varnothing)$
# for each panel of Figure 2: row 1 is the paper's figure (the targets), row 2 the samples with their TV.

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

# %% [markdown]
# At $w = 0$ the sampler lands on the target. For $w > 0$ the samples end up further from the other classes than
# the target and stay round where the target bends into a crescent. The reason is in the equations, not in any
# error. With exact scores, classifier guidance and CFG are the same field (§5), the gradient of
#
# $$\log\rho_\lambda(z|c) = (1 + w)\log p_\lambda(z|c) - w\log p_\lambda(z) + \text{const},$$
#
# a density $\rho_\lambda \propto p_\lambda(z|c)^{1+w}p_\lambda(z)^{-w}$ defined separately at each noise level. At
# the data level $\rho$ is the target $\pi_w$. But at a noise level $\lambda$, $\rho_\lambda$ is **not** the target
# pushed through the forward process, $\pi_{w,\lambda}(z) = \int \pi_w(x|c)\,\mathcal N(z; \alpha x, \sigma^2 I)\,dx$:
# tilting and noising do not commute. A reverse process reaches its target only if it follows the scores of one
# noised family all the way (Bradley & Nakkiran 2024; Chidambaram et al. 2024), and CFG follows a different
# family. So both guidance methods, even with perfect scores, miss $\pi_w$ in the same way. Side by side at
# $\lambda = 0$, for $w = 4$, as Figure 2 shows them: mixed over the three classes with their weights $\pi_c$.

# %%
W_LEVEL, LAM_LEVEL = 4.0, 0.0
rho = mix(mixture, cfg_densities(mixture, grid, W_LEVEL, lam=LAM_LEVEL))
ideal = IdealTiltedModel(mixture, W_LEVEL, Grid2D.covering(mixture, n=192))
noised_target = ideal.noised_density(grid, LAM_LEVEL, mixture.num_classes)
fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.3))
top = max(rho.max(), noised_target.max()).item()
density_image(axes[0], grid, noised_target, title="π_w noised to λ = 0 (what sampling needs)", vmax=top)
density_image(axes[1], grid, rho, title="ρ_λ at λ = 0 (what CFG follows)", vmax=top)
fig.tight_layout()
print(f"TV between them: {0.5 * ((rho - noised_target).abs().sum() * grid.cell**2).item():.2f}")

# %% [markdown]
# Same colour scale: $\rho_\lambda$ has already pushed the classes apart at a noise level where the true noised
# target still overlaps them. Notebook 04 samples with the exact $\varepsilon$ of $\pi_{w,\lambda}$ (the "ideal"
# sampler) and reaches $\pi_w$, and shows correctors that pull CFG samples toward it.
#
# ## Takeaways
# - A denoiser's optimal noise prediction is the score: $\varepsilon^* = -\sigma_\lambda\nabla\log p_\lambda$, and
#   $\hat x = (z - \sigma\varepsilon)/\alpha$ is the best guess of the clean data.
# - Algorithm 2 is twenty lines: denoise, then draw the next level from the forward process's Gaussian bridge.
# - Lowering the temperature squeezes each class toward its own mean; guidance tilts each class away from the
#   others, toward where the classifier is sure.
# - Bayes' rule turns classifier guidance into CFG:
#   $\tilde\varepsilon = (1 + w)\varepsilon(z, c) - w\varepsilon(z, \varnothing)$, with $s = 1 + w$ in diffusers'
#   notation; with exact scores the two guidances are one field.
# - That field is the score of $\rho_\lambda \propto p_\lambda(z|c)^{1+w}p_\lambda(z)^{-w}$, which is not the noised
#   target, so even exact-score CFG does not sample $\pi_w$.
#
# ## Try this
# - In the Figure 2 slider, set `w = -1`: every class becomes $p(x)$. Then `w = 0.3`, the paper's best-FID value at
#   128×128: how much does the target move?
# - In the score slider, lower `λ` to −8: the implicit classifier's arrows vanish, there is nothing for guidance to
#   push on. Then try −3: the arrows are back, though the classes overlap. (Notebook 04 §9 shows that guidance at
#   such levels decides which mode a sample joins.)
# - In §4, change the `ways` dictionary to `noise × 0.8` (`noise_scale` 0.8) and `score × 2`: is there any setting
#   of the two knobs that moves class 0 away from class 1?
#
# ## References
# - J. Ho, T. Salimans, *Classifier-Free Diffusion Guidance*, [arXiv:2207.12598](https://arxiv.org/abs/2207.12598):
#   §2 (the forward process, Eq. 1-4, Algorithm 2), §3.1 (classifier guidance, Figure 2), §3.2 (Eq. 6).
# - P. Dhariwal, A. Nichol, *Diffusion Models Beat GANs on Image Synthesis*,
#   [arXiv:2105.05233](https://arxiv.org/abs/2105.05233): classifier guidance.
# - B. Efron, *Tweedie's formula and selection bias*, JASA 2011: $\hat x = \mathbb E[x|z]$ from the score.
# - A. Bradley, P. Nakkiran, *Classifier-Free Guidance is a Predictor-Corrector*,
#   [arXiv:2408.09000](https://arxiv.org/abs/2408.09000); M. Chidambaram et al., *What does guidance do?*,
#   [arXiv:2409.13074](https://arxiv.org/abs/2409.13074): why exact-score CFG misses $\pi_w$.

# %% [markdown]
# ## Checks
# The numbers the text quotes, checked on every run (CI runs them in fast mode).

# %%
assert max(score_errors) < 1e-9, "ε* must equal −σ∇log p (autograd)"
assert (ours - library).abs().max() < 1e-9, "the twenty-line Algorithm 2 must match the library's sampler"
assert (on_conditional - on_unconditional).abs().max() < 1e-9 and (on_conditional - cfg).abs().max() < 1e-9
wide = Grid2D(half_width=8.0, n=GRID_SIZE)  # wide enough that the tails beyond it are below 1e-9
for lam_check in (-5.0, 0.0, 5.0):
    levels = torch.full((len(wide.points()),), lam_check, dtype=torch.float64)
    assert abs(mixture.log_prob(wide.points(), levels).exp().sum() * wide.cell**2 - 1) < 1e-6, "p_λ integrates to 1"
top_class_y = [moments(grid, tilted_densities(mixture, grid, w)[0])[1][1].item() for w in (0.0, *GUIDANCE)]
assert top_class_y == sorted(top_class_y), f"guidance should push class 0 (top) upwards: {top_class_y}"
assert histogram(drawn["CFG, w = 3"], target[0]) < min(histogram(drawn[k], target[0]) for k in ("score × 4",
                                                                                                  "noise × 0.5"))
unguided, *guided_panels = summary["panels"]
assert all(abs(c["mass"] - 1) < 1e-6 for panel in summary["panels"] for c in panel["classes"])
assert all(c["tv_sampler_to_target"] < c["tv_noise_floor"] + 0.05 for c in unguided["classes"]), \
    "at w = 0 exact-score sampling should reproduce each component up to sampling noise"
assert all(c["tv_sampler_to_target"] > 2 * c["tv_noise_floor"] for c in guided_panels[-1]["classes"]), \
    "at the largest w exact-score CFG samples should be far from the tilted target"
assert top_sampled > top_target + 0.2, "at the largest w CFG should push class 0 further out than its target"
print("all checks passed")
