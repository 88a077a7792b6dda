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
# # ImageNet 64x64: the paper's run, from raw data to FID/IS
#
# This notebook drives the run behind Table 1 of Ho & Salimans (2022): prepare the downsampled-ImageNet
# data, launch Algorithm 1 on the ADM-64 U-Net with `torchrun`, watch the loss, look at guided samples
# with a `w` slider, and measure FID and IS for several `w`.
#
# **Time.** Fast mode (`CI` or `CFGEDU_FAST` set, the default here without ImageNet): about 30 s on a
# CPU, on stand-in data written in the official file format and a tiny imagenet64-shaped network.
# Full mode: the paper's 400k steps at batch 2048 take days on 8 GPUs; this notebook launches the run,
# watches it for `WATCH_SECONDS`, and leaves it going (rerun the later cells to look again).

# %% tags=["parameters"]
import os
from pathlib import Path

FAST = bool(os.environ.get("CI") or os.environ.get("CFGEDU_FAST"))
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()  # the repository
DATA = ROOT / "data/imagenet64"  # prepared by `python -m cfgedu prepare-imagenet64 --src PATH --out data/imagenet64`
RUN = ROOT / "runs/in64"
WATCH_SECONDS = 600  # how long the live plot follows the run before leaving it in the background
EVAL_W = [0.0, 0.1, 0.3, 1.0, 4.0]
EVAL_N = 50_000  # samples per w, class-balanced (the paper's protocol)
SAMPLE_STEPS = 256  # T; the paper samples 64x64 with v = 0.3
if FAST:
    import tempfile

    WORK = Path(tempfile.mkdtemp(prefix="cfgedu-in64-"))
    DATA, RUN, WATCH_SECONDS, EVAL_N, SAMPLE_STEPS = WORK / "data", WORK / "run", 120, 10, 2
    EVAL_W = [0.0, 0.3, 4.0]

# %%
import shlex
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from cfgedu.data import imagenet64 as inet
from cfgedu.data import imagenet64_convert as convert
from cfgedu.engine import launch
from cfgedu.engine.runs import load_checkpoint_model
from cfgedu.frontend.widgets import SampleGridWidget
from cfgedu.images.evaluation import guidance_sweep, result_table
from cfgedu.images.inception import StandInExtractor, imagenet_protocol
from cfgedu.images.sampling import image_grid

# %% [markdown]
# ## 1. The data: downsampled ImageNet, read safely
#
# The official `train_data_batch_1..10` and `val_data` files are pickled dicts: `data` holds uint8 rows of
# 3·64·64 = 12,288 bytes, **channel-planar** (all R, then all G, then all B), and `labels` are 1..1000 in
# `map_clsloc.txt` order. Unpickling can run arbitrary code, so cfgedu reads them through a restricted
# unpickler that accepts numpy arrays, lists, ints and strings only, stores labels as 0..999 and writes
# memory-mapped `.npy` files once. In fast mode we first write stand-in files in exactly that format.

# %%
if FAST:
    convert.write_synthetic_batches(WORK / "src", num_train=64, num_val=16, classes_shown=8)
    convert.convert_pickles(WORK / "src", DATA, progress=False)
images, labels = inet.load_split(DATA, "train")
manifest = inet.read_manifest(DATA)
print({key: manifest[key] for key in ("source", "label_order", "num_classes", "splits")})
fig, ax = plt.subplots(figsize=(8, 1.4))
ax.imshow(image_grid(inet.to_model_range(images[:8]), rows=1))
ax.set_title(f"the first training images, labels {labels[:8].tolist()}", fontsize=9)
ax.set_axis_off()

# %%
assert images.dtype == np.uint8 and images.shape[1:] == (3, 64, 64)
assert isinstance(images, np.memmap) and 0 <= labels.min() and labels.max() < manifest["num_classes"]

# %% [markdown]
# ## 2. The launch command
#
# The `imagenet64` preset is the paper's setup: ADM-64 predicting ε, λ ∈ [−20, 20] with
# p(λ) ∝ sech(λ/2), p_uncond = 0.1, global batch 2048 (64 images per GPU, gradient accumulation when
# there are fewer than 32 GPUs), lr 3e-4, EMA 0.9999, dropout 0.1, 400k steps. On several machines,
# run the same command on each with its own `--node_rank`; `--master_addr` is node 0. Running the command
# again resumes from `OUT/checkpoint.pt`.

# %%
print(shlex.join(launch.launch_command("data/imagenet64", "runs/in64", nproc_per_node=8)))
print(shlex.join(launch.launch_command("data/imagenet64", "runs/in64", nproc_per_node=8, nnodes=4, node_rank=1,
                                     master_addr="node0.example.org")))

# %% [markdown]
# ## 3. A run as a subprocess, watched through its log
#
# Algorithm 1 writes one JSON line per `log_every` steps to `OUT/metrics.jsonl`. The plot below follows
# that file while the run goes on. Fast mode trains the tiny network for two steps in one process.

# %%
gpus = torch.cuda.device_count()
command = launch.launch_command(DATA, RUN, nproc_per_node=max(gpus, 1),
                                preset="imagenet64-tiny" if FAST else "imagenet64",
                                launcher=(sys.executable, "-m", "torch.distributed.run"))
print(shlex.join(command))
RUN.mkdir(parents=True, exist_ok=True)
process = subprocess.Popen(command + ["--no-progress"], stdout=open(RUN / "stdout.txt", "w"), stderr=subprocess.STDOUT)

# %%
fig, ax = plt.subplots(figsize=(6, 3))
(line,) = ax.plot([], [], marker="o")
ax.set(xlabel="step", ylabel="ε-MSE loss", title="training loss (live)")
handle = display(fig, display_id=True)
records, offset, began = [], 0, time.time()
while True:
    running = process.poll() is None
    new, offset = launch.read_new_metrics(RUN / "metrics.jsonl", offset)
    records += new
    if new:
        line.set_data([r["step"] for r in records], [r["loss"] for r in records])
        ax.relim()
        ax.autoscale_view()
        handle.update(fig)
    if not running or time.time() - began > WATCH_SECONDS:
        break
    time.sleep(1.0)
plt.close(fig)

# %%
if FAST:
    assert process.wait() == 0, (RUN / "stdout.txt").read_text()[-2000:]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)

# %% [markdown]
# ## 4. Guided samples from the latest checkpoint
#
# Algorithm 2 with ε̃ = (1 + w) ε_θ(z, c) − w ε_θ(z) (s = 1 + w), v = 0.3, from the EMA weights. The
# noise is fixed, so moving `w` shows what guidance alone does (in fast mode the network is untrained
# and the samples are noise; the mechanics are the same). In full mode the first checkpoint appears after
# `checkpoint_every` = 5000 steps: rerun from here once `runs/in64/checkpoint.pt` exists.

# %%
model = load_checkpoint_model(RUN / "checkpoint.pt", use_ema=True)
grid = SampleGridWidget(model, classes=[0, 1, 2], per_class=3, steps=SAMPLE_STEPS, w=0.3)
grid

# %%
grid.sliders["w"].value = 1.0  # a new w redraws the grid in place
assert grid.picture.get_array().shape == (3 * 64, 3 * 64, 3)

# %% [markdown]
# ## 5. FID and IS against w: Table 1
#
# FID is the Fréchet distance ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁^½ Σ₂ Σ₁^½)^½) between Gaussian fits to Inception
# pool features of samples and of the data; IS = exp(E KL(p(y|x) ‖ p(y))). The paper uses 50,000 class-balanced
# samples per w. The real network needs the weights file `weights-inception-2015-12-05-6726825d.pth`
# (`CFGEDU_INCEPTION_WEIGHTS` or `--inception`); fast mode uses a small stand-in extractor, whose numbers
# are not comparable with the paper's. The command line does the same:
# `python -m cfgedu evaluate --checkpoint runs/in64 --w 0 0.1 0.3 1 4 --n 50000 --inception PATH`.

# %%
protocol = imagenet_protocol(data=DATA, extractor=StandInExtractor() if FAST else None, splits=2 if FAST else 10,
                             progress=not FAST)  # without an extractor: Inception, from CFGEDU_INCEPTION_WEIGHTS
evaluation, _ = guidance_sweep(model, EVAL_W, protocol, n=EVAL_N, steps=SAMPLE_STEPS, progress=not FAST)
rows = evaluation["rows"]
display(Markdown(result_table({**evaluation, "p_uncond": 0.1}, protocol)))

# %%
fig, ax = plt.subplots(figsize=(4, 3))
ax.plot([r["is"] for r in rows], [r["fid"] for r in rows], marker="o")
for r in rows:
    ax.annotate(f"w={r['w']:g}", (r["is"], r["fid"]), fontsize=8)
ax.set(xlabel="IS", ylabel="FID", title="the FID/IS trade-off as w grows")

# %%
assert [r["w"] for r in rows] == EVAL_W and all(r["n"] == EVAL_N for r in rows)
assert all(np.isfinite(r["fid"]) and r["fid"] >= -1e-9 and r["is"] >= 1 - 1e-9 for r in rows)
