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
# # 05 · The same code on real images: digits on a CPU
#
# **What you learn.** The ImageNet recipe of Ho & Salimans (2022) at toy scale: the ADM U-Net
# $\varepsilon_\theta(z_\lambda, \lambda, c)$ trained with Algorithm 1 (label dropout to the null class $\varnothing$)
# on scikit-learn's 1,797 bundled digits upsampled to 16×16, sampled with Algorithm 2 and one doubled (cond + null)
# batch per step, and measured with the paper's protocol: FID on the features of a classifier and IS on its
# softmax, against the guidance strength $w$. The paper's Table 1 shows FID rising and IS rising with $w$; here a
# small CNN plays Inception's role.
#
# **Time.** About 30 s in fast mode (`CFGEDU_FAST=1`, what CI runs: a few training steps, a few samples). Full
# mode trains the `digits` preset (1,000 steps; about 9 minutes on an idle 2-core CPU, resumed if already in
# `runs/digits`) and samples 1,000 images per $w$ with $T = 128$ (long on a CPU: reduce `PER_CLASS`).

# %% tags=["parameters"]
import os

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
RUN_DIR = None if FAST else "runs/digits"  # None: a temporary folder
TRAIN_STEPS = 3 if FAST else None  # None: the preset's 1,000 steps
SHORT_STEPS = 2 if FAST else 100  # the deliberately short run of the last section (about a minute)
WS = [0.0, 0.3, 1.0, 4.0] if FAST else [0.0, 0.1, 0.3, 1.0, 2.0, 4.0]
PER_CLASS = 2 if FAST else 100  # samples per class and per w
SAMPLING_STEPS = 4 if FAST else 128  # T of Algorithm 2

# %%
import dataclasses
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from cfgedu.data.digits import load_digits_split
from cfgedu.engine.experiment import train_experiment
from cfgedu.engine.flops import describe_experiment
from cfgedu.engine.presets import preset
from cfgedu.images.digits_classifier import digits_protocol, load_classifier, validation_accuracy
from cfgedu.images.evaluation import guidance_sweep, markdown_table
from cfgedu.images.inception import PAPER_TABLE1
from cfgedu.images.sampling import class_labels, image_grid

out_root = Path(RUN_DIR) if RUN_DIR else Path(tempfile.mkdtemp(prefix="cfgedu_digits_"))

# %% [markdown]
# ## 1. The data: digits in $[-1, 1]$, one row per class
# The 8×8 images (levels 0–16) are scaled to $[-1, 1]$ and bilinearly upsampled to 16×16; a fixed stratified 80/20
# split gives 1,437 training and 360 validation images.

# %%
x_train, c_train = load_digits_split("train")
order = torch.cat([torch.nonzero(c_train == k)[:8, 0] for k in range(10)])
plt.figure(figsize=(4, 5))
plt.imshow(image_grid(x_train[order], rows=10), cmap="gray")
plt.axis("off")
plt.title("training digits, row k = class k");

# %%
assert x_train.shape == (1437, 1, 16, 16) and x_train.min() >= -1 and x_train.max() <= 1

# %% [markdown]
# ## 2. The network and Algorithm 1
# Each training step drops a label to $\varnothing$ with probability $p_\text{uncond} = 0.1$, draws
# $\lambda \sim p(\lambda)$, noises $z_\lambda = \alpha_\lambda x + \sigma_\lambda \varepsilon$ and regresses
# $\lVert \varepsilon_\theta(z_\lambda, c) - \varepsilon \rVert^2$. The network is the ADM U-Net (AdaGN residual
# blocks, attention at 8×8 and 4×4) with a class-embedding row for $\varnothing$.

# %%
experiment = preset("digits")
if TRAIN_STEPS:
    experiment = dataclasses.replace(experiment, train=dataclasses.replace(
        experiment.train, steps=TRAIN_STEPS, batch_size=16, checkpoint_every=0, log_every=1))
info = describe_experiment(experiment)
print(f"{info['parameters']:,} parameters, {info['forward_gflops']:.3f} GFLOP per forward")
result = train_experiment(experiment, out_root / "run", preset_name="digits")
plt.figure(figsize=(5, 3))
plt.semilogy([h["step"] for h in result.history], [h["loss"] for h in result.history])
plt.xlabel("step")
plt.ylabel("ε-MSE (window mean)");

# %%
assert result.step == experiment.train.steps

# %% [markdown]
# ## 3. The protocol: a small CNN plays Inception
# FID $= \lVert m_g - m_r\rVert^2 + \operatorname{tr}(C_g + C_r - 2(C_g^{1/2} C_r C_g^{1/2})^{1/2})$ on its
# penultimate features, against the validation split; IS $= \exp \mathbb{E}_x \mathrm{KL}(p(y|x) \,\Vert\, p(y))$
# on its softmax; accuracy is how often it names the class we asked for. Real training subsets of the same size
# give the FID floor: what the sample size alone costs.

# %%
protocol = digits_protocol()
classifier_accuracy = validation_accuracy(load_classifier())
print(f"classifier validation accuracy: {classifier_accuracy:.3f}")

# %%
assert classifier_accuracy >= 0.97

# %% [markdown]
# ## 4. Sweeping the guidance strength $w$
# $\tilde\varepsilon = (1 + w)\,\varepsilon_\theta(z, c) - w\,\varepsilon_\theta(z, \varnothing)$, one doubled batch
# per step, $T$ steps of Algorithm 2 with $v = 0.3$, $\hat x$ clipped to $[-1, 1]$, the same seed for every $w$.

# %%
evaluation, samples = guidance_sweep(result.ema, WS, protocol, per_class=PER_CLASS, steps=SAMPLING_STEPS,
                                     grid=(10, PER_CLASS))  # samples[w]: (10 classes, PER_CLASS, 1, 16, 16)
print(markdown_table(evaluation["rows"], floor=evaluation["fid_floor"]))

# %%
from cfgedu.frontend.widgets import SampleGridSlider

columns = min(PER_CLASS, 10)
SampleGridSlider({w: images[:, :columns].flatten(0, 1) for w, images in samples.items()}, rows=10)

# %% [markdown]
# ## 5. The trade-off beside the paper's Table 1
# Left: ours (one point per $w$). Right: ImageNet 64×64, $p_\text{uncond} = 0.1$, 50,000 samples. In both, IS rises
# with $w$; FID is best at small $w$ and grows after.

# %%
paper = PAPER_TABLE1[0.1]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for ax, points, title in ((axes[0], [(r["w"], r["fid"], r["is"]) for r in evaluation["rows"]], "digits (ours)"),
                          (axes[1], [(w, fid, inception) for w, (fid, inception) in paper.items()],
                           "ImageNet 64x64 (paper, Table 1)")):
    ws_, fids, iss = zip(*points, strict=True)
    ax.plot(iss, fids, "o-")
    for w, fid, inception in points:
        ax.annotate(f"w={w:g}", (inception, fid), fontsize=7)
    ax.set_xlabel("IS")
    ax.set_ylabel("FID")
    ax.set_title(title, fontsize=10)
axes[0].axhline(evaluation["fid_floor"], ls=":", c="gray", label="real-data floor")
axes[0].legend();

# %%
rows = {r["w"]: r for r in evaluation["rows"]}
assert set(rows) == set(WS) and all(0 <= r["accuracy"] <= 1 and r["is"] >= 1 for r in rows.values())
if not FAST:
    assert rows[max(WS)]["is"] > rows[0.0]["is"]  # guidance raises IS, as in the paper

# %% [markdown]
# ## 6. A deliberately short run: guidance buys accuracy with FID
# After about a minute of training the conditional model often draws the wrong digit. Guidance pushes samples
# toward what the implicit classifier $p(c|z) \propto p(z|c)/p(z)$ recognises: accuracy rises with $w$, while FID
# (diversity) gets worse, the paper's trade-off on a laptop.

# %%
short = dataclasses.replace(experiment, train=dataclasses.replace(
    experiment.train, steps=SHORT_STEPS, batch_size=16 if FAST else 64, ema_decay=0.9, checkpoint_every=0))
short_result = train_experiment(short, out_root / "short", preset_name="digits-short", progress=False)
short_eval, _ = guidance_sweep(short_result.ema, [0.0, 4.0], protocol, per_class=PER_CLASS, steps=SAMPLING_STEPS,
                               progress=False)
print(markdown_table(short_eval["rows"], floor=short_eval["fid_floor"]))

# %%
assert [r["w"] for r in short_eval["rows"]] == [0.0, 4.0]

# %% [markdown]
# ## 7. The ceiling: the exact score of the training set memorises
# A network that fitted Algorithm 1's loss perfectly would predict $\varepsilon^*(z, c) = (z - \alpha\,
# \mathbb{E}[x|z, c])/\sigma$ of the *empirical* distribution, where $\mathbb{E}[x|z, c]$ is a softmax-weighted
# average of the training digits of class $c$. Driving the same sampler with it returns training digits, so it
# scores what the classifier scores on its own training data: it checks the sampler and the protocol apart from
# any network. The learned network does something else: its samples are as far from their nearest training digit
# as the held-out digits are (it generalises), and its misses are new digits that fit no class well.

# %%
from cfgedu.core.samplers import sample
from cfgedu.images.empirical import EmpiricalScore
from cfgedu.images.evaluation import score_samples

labels = class_labels(10, PER_CLASS)
exact_samples = sample(EmpiricalScore(x_train, c_train, 10), (1, 16, 16), labels,
                       generator=torch.Generator().manual_seed(0), steps=SAMPLING_STEPS, clip_x=1.0)
exact_row = score_samples(protocol, [exact_samples], labels, protocol.reference(result.ema))
network_row = rows[0.0]
print(f"w = 0, T = {SAMPLING_STEPS}: accuracy {network_row['accuracy']:.3f} (network) vs {exact_row['accuracy']:.3f} "
      f"(exact empirical score); FID {network_row['fid']:.2f} vs {exact_row['fid']:.2f} "
      f"(floor {evaluation['fid_floor']:.2f})")


def nearest_training_distance(images: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each image (N, 1, 16, 16) to its nearest training digit, (N,)."""
    return torch.cdist(images.reshape(len(images), -1), x_train.reshape(len(x_train), -1)).min(1).values


distances = {name: nearest_training_distance(images) for name, images in (
    ("network samples, w = 0", samples[0.0].flatten(0, 1)), ("exact empirical score", exact_samples),
    ("held-out digits", load_digits_split("val")[0]))}
upper = max(d.max().item() for d in distances.values())
plt.figure(figsize=(5, 3))
for name, d in distances.items():
    plt.hist(d.numpy(), bins=30, range=(0, upper), histtype="step", density=True, label=name)
plt.yscale("log")
plt.xlabel("distance to the nearest training digit")
plt.ylabel("density")
plt.legend(fontsize=8);

# %%
assert distances["exact empirical score"].max() < 1e-3  # training digits (two differ by about 3)
assert exact_row["accuracy"] >= 0.95  # the classifier's accuracy on its own training digits is 0.998
