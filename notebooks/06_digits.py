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
# # 06 · The same code on real images: digits on a CPU
#
# **What you will learn**
# - the paper's ImageNet recipe at toy scale: the ADM U-Net $\varepsilon_\theta(z_\lambda, \lambda, c)$ trained
#   with Algorithm 1 on scikit-learn's 1,797 bundled digits (upsampled to 16×16), on a laptop CPU
# - how image samples are measured, the paper's way: FID on a classifier's features, IS on its softmax, and here
#   also the accuracy of the requested class
# - what the guidance trade-off of Table 1 looks like on digits, and what a poorly trained model gains from guidance
# - why a perfect fit of the training loss would only copy the training set
#
# **Assumes** notebooks 01-02 (guidance, Algorithm 1) and 04 (FID and IS). **Takes** about 15 seconds in fast mode.
# Medium
# mode
# (the default, and what the stored outputs show: 4 values of $w$, 500 samples each) takes about half an hour on an
# idle 2-core CPU: 9 minutes to train the `digits` preset (1,000 steps, skipped if `runs/digits` already holds the
# run), the rest drawing 3,000 samples of 128 steps, most of them guided (a guided step runs the network on a doubled
# batch). Full mode
# (`CFGEDU_MODE=full`: 6 values of $w$, 1,000 samples each) takes about twice as long. The numbers quoted in the text
# are those of the stored medium run.

# %% tags=["parameters"]
import os

import cfgedu  # noqa: F401 (first, before torch: it lets idle OpenMP threads sleep, not spin)

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
MODE = "fast" if FAST else os.environ.get("CFGEDU_MODE", "medium")  # fast | medium | full
RUN_DIR = None if FAST else "runs/digits"  # None: a temporary folder
TRAIN_STEPS = 3 if FAST else None  # None: the preset's 1,000 steps
SHORT_STEPS = 2 if FAST else 100  # the deliberately short run of §6 (about a minute)
WS = {"fast": [0.0, 0.3, 1.0, 4.0], "medium": [0.0, 0.3, 1.0, 4.0], "full": [0.0, 0.1, 0.3, 1.0, 2.0, 4.0]}[MODE]
PER_CLASS = {"fast": 2, "medium": 50, "full": 100}[MODE]  # samples per class and per w
SAMPLING_STEPS = 4 if FAST else 128  # T of Algorithm 2

# %%
import dataclasses
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from cfgedu.core.samplers import sample
from cfgedu.data.digits import load_digits_split
from cfgedu.engine.experiment import train_experiment
from cfgedu.engine.flops import describe_experiment
from cfgedu.engine.presets import preset
from cfgedu.frontend.plotting import plot_distance_histograms, plot_fid_is
from cfgedu.frontend.widgets import LossCurve, SampleGridSlider
from cfgedu.images.digits_classifier import digits_protocol, load_classifier, validation_accuracy
from cfgedu.images.empirical import EmpiricalScore
from cfgedu.images.evaluation import guidance_sweep, markdown_table, score_samples
from cfgedu.images.inception import PAPER_TABLE1
from cfgedu.images.metrics import nearest_distances
from cfgedu.images.sampling import class_labels, image_grid

out_root = Path(RUN_DIR) if RUN_DIR else Path(tempfile.mkdtemp(prefix="cfgedu_digits_"))

# %% [markdown]
# ## 1. The data: digits in $[-1, 1]$, one row per class
# A real image dataset small enough for a CPU, and shipped inside scikit-learn, so nothing is downloaded. The 8×8
# images (levels 0–16) are scaled to $[-1, 1]$ and bilinearly upsampled to 16×16; a fixed stratified 80/20
# split gives 1,437 training and 360 validation images.

# %%
x_train, c_train = load_digits_split("train")
order = torch.cat([torch.nonzero(c_train == k)[:8, 0] for k in range(10)])
plt.figure(figsize=(4, 5))
plt.imshow(image_grid(x_train[order], rows=10), cmap="gray")
plt.axis("off")
plt.title("training digits, row k = class k");

# %% [markdown]
# ## 2. The network and Algorithm 1
# The training code is the toy's (notebook 02); only the data and the network change. Each step drops a label to
# $\varnothing$ with probability $p_\text{uncond} = 0.1$, draws $\lambda \sim p(\lambda)$, noises
# $z_\lambda = \alpha_\lambda x + \sigma_\lambda \varepsilon$ and regresses
# $\lVert \varepsilon_\theta(z_\lambda, \lambda, c) - \varepsilon \rVert^2$. The network is the U-Net of Dhariwal &
# Nichol's ADM, the paper's network: convolutional residual blocks at three resolutions, joined by skip connections,
# with self-attention at 8×8 and 4×4. λ and the class (with one extra embedding row for $\varnothing$) enter every
# block through "adaptive group norm" (AdaGN): a scale and shift of each block's normalised features, computed from
# their embedding.

# %%
experiment = preset("digits")
if TRAIN_STEPS:
    experiment = dataclasses.replace(experiment, train=dataclasses.replace(
        experiment.train, steps=TRAIN_STEPS, batch_size=16, checkpoint_every=0, log_every=1))
info = describe_experiment(experiment)
print(f"{info['parameters']:,} parameters, {info['forward_gflops']:.3f} GFLOP per forward")
curve = LossCurve().show()
result = train_experiment(experiment, out_root / "run", preset_name="digits", progress=False, on_log=curve)

# %% [markdown]
# The curve stays well above 0, as on the toy: the noise is not predictable from $z$, and the network learns its
# conditional mean. (A run already in `runs/digits` is read back, not retrained, and the curve stays empty.)

# %% [markdown]
# ## 3. The protocol: a small CNN plays Inception
# The paper measures samples with a pretrained ImageNet classifier, Inception v3: FID compares its features of the
# samples and of real images, IS reads its class probabilities. For digits a small CNN, trained once on the training
# split (99% validation accuracy), plays both roles: FID
# $= \|m_1 - m_2\|^2 + \operatorname{tr}(C_1 + C_2 - 2(C_1^{1/2} C_2 C_1^{1/2})^{1/2})$ on its penultimate features
# (means $m$ and covariances $C$ of the two sets),
# against the validation split; IS $= \exp \mathbb{E}_x \mathrm{KL}(p(c|x) \,\Vert\, \hat p(c))$ on its softmax
# (notebook 04 §1); accuracy is how often it names the class we asked for. Random subsets of real training digits, of
# the
# same size, give the FID floor: roughly what the sample size alone costs. Roughly, because the subsets are drawn at
# random, so their class counts wobble, while our samples are class-balanced: small balanced sets can score a little
# below the floor.

# %%
protocol = digits_protocol()
classifier_accuracy = validation_accuracy(load_classifier())
print(f"classifier validation accuracy: {classifier_accuracy:.3f}")

# %% [markdown]
# ## 4. Sweeping the guidance strength $w$
# The paper's Table 1, on digits. Each sample uses
# $\tilde\varepsilon = (1 + w)\,\varepsilon_\theta(z, c) - w\,\varepsilon_\theta(z, \varnothing)$, with the
# conditional and the $\varnothing$ copy of the batch stacked into one doubled batch, so one forward pass gives both.
# $T$ steps of Algorithm 2 with $v = 0.3$; at each step $\hat x$ is clipped to the data range $[-1, 1]$, as ADM does
# (a large $w$ would otherwise push pixels out of range); the same seed for every $w$.

# %%
# samples[w]: (10 classes, PER_CLASS, 1, 16, 16)
evaluation, samples = guidance_sweep(result.ema, WS, protocol, per_class=PER_CLASS, steps=SAMPLING_STEPS,
                                     grid=(10, PER_CLASS), progress=False)
print(markdown_table(evaluation["rows"], floor=evaluation["fid_floor"]))

# %% [markdown]
# The samples, one row per class and the same noise for every $w$: move the slider and look at the rows that start out
# wrong or ambiguous at $w = 0$ (a 4 that could be a 9, a 7 without its bar). Guidance makes each digit more
# typical of its class, and the rows more alike. The IS of this protocol cannot grow much: it is at most 10 (the
# number of classes), and well-formed digits already score near 9-10 without guidance.

# %%
columns = min(PER_CLASS, 10)
SampleGridSlider({w: images[:, :columns].flatten(0, 1) for w, images in samples.items()}, rows=10)

# %% [markdown]
# ## 5. The trade-off beside the paper's Table 1
# Left: ours (one point per $w$). Right: ImageNet 64×64, $p_\text{uncond} = 0.1$, 50,000 samples. In both, IS rises
# with $w$ and FID grows at large $w$; ImageNet's FID is lowest at $w = 0.1$, ours at $w = 0$.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
plot_fid_is(axes[0], {"digits": [(r["w"], r["fid"], r["is"]) for r in evaluation["rows"]]})
axes[0].axhline(evaluation["fid_floor"], ls=":", c="gray", label="real-data floor")
axes[0].set_title("digits (ours)", fontsize=10)
axes[0].legend(fontsize=8)
plot_fid_is(axes[1], {"ImageNet 64x64": [(w, fid, score) for w, (fid, score) in PAPER_TABLE1[0.1].items()]})
axes[1].set_title("ImageNet 64x64 (paper, Table 1, p_uncond = 0.1)", fontsize=10);

# %% [markdown]
# In the stored run the trade-off is plain: accuracy climbs from 0.978 at $w = 0$ (worst class 0.94) to 0.996 at
# $w = 0.3$ and 1.000 from $w = 1$, while FID grows from 14.1 to 17.7, 32.5 and 95.8 and IS creeps from 9.48 to 9.95,
# against its ceiling of 10. Unlike ImageNet's, the digits FID has no dip at small $w$: it is lowest without guidance,
# as on the toy (notebook 04), because the unguided model is already close to the data. At 500 samples it even sits
# below the floor of 16.1, as do copies of training digits (§7): the floor's random subsets are not class-balanced
# (§3), and at this size every FID is noisy. On ImageNet a little guidance ($w = 0.1$: FID 1.55 against 1.80
# unguided) repairs more poor samples than it costs in spread; on digits there is little left to repair.

# %% [markdown]
# ## 6. A deliberately short run: guidance buys accuracy with FID
# After about a minute of training (and with a fast EMA, decay 0.9, so that the averaged weights keep up with so
# short a run) the conditional model often draws the wrong digit. Guidance pushes samples
# toward what the implicit classifier $p(c|z) \propto p(z|c)/p(z)$ recognises: accuracy and IS rise with $w$, while FID
# gets worse, the paper's trade-off on a laptop.

# %%
short = dataclasses.replace(experiment, train=dataclasses.replace(
    experiment.train, steps=SHORT_STEPS, batch_size=16 if FAST else 64, ema_decay=0.9, checkpoint_every=0))
short_result = train_experiment(short, out_root / "short", preset_name="digits-short", progress=False)
short_eval, _ = guidance_sweep(short_result.ema, [0.0, 4.0], protocol, per_class=PER_CLASS, steps=SAMPLING_STEPS,
                               progress=False)
print(markdown_table(short_eval["rows"], floor=short_eval["fid_floor"]))

# %% [markdown]
# In the stored run the short model draws the requested digit only 73% of the time without guidance (worst class
# 56%, IS 7.1, FID 76); at $w = 4$ it is right 99% of the time (IS 9.7), and FID more than doubles (173): guidance buys
# the class fidelity that training has not reached yet, and pays in FID.

# %% [markdown]
# ## 7. The ceiling: the exact score of the training set memorises
# A network that fitted Algorithm 1's loss perfectly would predict $\varepsilon^*(z, c) = (z - \alpha\,
# \mathbb{E}[x|z, c])/\sigma$ of the *empirical* distribution, where $\mathbb{E}[x|z, c]$ is an average of the
# training digits $x_i$ of class $c$ weighted by a softmax over them of $-\|z - \alpha x_i\|^2 / 2\sigma^2$ (the
# closer the noised point is to a digit, the more that digit counts). Driving the same sampler with it returns training
# digits, so it
# scores what the classifier scores on its own training data: it checks the sampler and the protocol apart from
# any network. The learned network does something else: its samples are as far from their nearest training digit
# as the held-out digits are (it generalises).

# %%
labels = class_labels(10, PER_CLASS)
exact_samples = sample(EmpiricalScore(x_train, c_train, 10), (1, 16, 16), labels,
                       generator=torch.Generator().manual_seed(0), steps=SAMPLING_STEPS, clip_x=1.0)
rows = {r["w"]: r for r in evaluation["rows"]}
exact_row = score_samples(protocol, [exact_samples], labels, protocol.reference(result.ema))
print(f"w = 0, T = {SAMPLING_STEPS}: accuracy {rows[0.0]['accuracy']:.3f} (network) vs {exact_row['accuracy']:.3f} "
      f"(exact empirical score); FID {rows[0.0]['fid']:.2f} vs {exact_row['fid']:.2f} "
      f"(floor {evaluation['fid_floor']:.2f})")
distances = {name: nearest_distances(images, x_train) for name, images in (
    ("network samples, w = 0", samples[0.0].flatten(0, 1)), ("exact empirical score", exact_samples),
    ("held-out digits", load_digits_split("val")[0]))}
fig, ax = plt.subplots(figsize=(5, 3))
plot_distance_histograms(ax, distances, "distance to the nearest training digit");

# %% [markdown]
# The exact score's samples sit at distance 0: copies. The network's samples are about as far from their nearest
# training digit as held-out digits are: it has learned digits, not the training set.
#
# ## Takeaways
# - The code that trains the 2D toy trains an ADM U-Net on images: only the data and the network change.
# - The paper's measurement carries over with a small CNN in place of Inception: FID against a real-data floor, IS,
#   and the accuracy of the requested class.
# - Guidance trades FID for IS and accuracy on digits as on ImageNet; a poorly trained model gains the most accuracy.
# - A perfect fit of the training loss copies the training set; the network's samples are new digits.
#
# ## Try this
# - Sample with `w = -0.5` (`guidance_sweep(result.ema, [-0.5], protocol, ...)`): between the conditional and the
#   unconditional model, what happens to the accuracy and to FID?
# - Retrain with `p_uncond = 0.5` (`dataclasses.replace(experiment.train, p_uncond=0.5)`, and a new `RUN_DIR`: a
#   folder holding another run is refused): how do the rows of §4 change?
# - In §6, train for 300 steps instead of 100: how much of the accuracy gap closes without guidance?
#
# ## References
# - J. Ho, T. Salimans, *Classifier-Free Diffusion Guidance*, [arXiv:2207.12598](https://arxiv.org/abs/2207.12598):
#   §4.1, Table 1.
# - P. Dhariwal, A. Nichol, *Diffusion Models Beat GANs on Image Synthesis*,
#   [arXiv:2105.05233](https://arxiv.org/abs/2105.05233): the ADM U-Net.
# - M. Heusel et al. (FID), [arXiv:1706.08500](https://arxiv.org/abs/1706.08500); T. Salimans et al. (IS),
#   [arXiv:1606.03498](https://arxiv.org/abs/1606.03498).
# - Z. Kadkhodaie et al., *Generalization in diffusion models arises from geometry-adaptive harmonic
#   representations*, [arXiv:2310.02557](https://arxiv.org/abs/2310.02557): memorisation against generalisation.

# %% [markdown]
# ## Checks

# %%
assert x_train.shape == (1437, 1, 16, 16) and x_train.min() >= -1 and x_train.max() <= 1
assert result.step == experiment.train.steps
assert classifier_accuracy >= 0.97
assert set(rows) == set(WS) and all(0 <= r["accuracy"] <= 1 and r["is"] >= 1 for r in rows.values())
if not FAST:
    assert rows[max(WS)]["is"] > rows[0.0]["is"]  # guidance raises IS, as in the paper
assert [r["w"] for r in short_eval["rows"]] == [0.0, 4.0]
assert distances["exact empirical score"].max() < 1e-3  # training digits (two differ by about 3)
assert exact_row["accuracy"] >= 0.95  # the classifier's accuracy on its own training digits is 0.998
print("all checks passed")
