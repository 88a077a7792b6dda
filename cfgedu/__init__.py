"""cfgedu: classifier-free diffusion guidance (Ho & Salimans 2022), taught end to end.

Importing cfgedu pulls in torch and numpy only; plotting, widgets and datasets load on demand.
"""
import os

# OpenMP reads its wait policy once, when torch loads it, so this comes before the first import of torch (a notebook
# that imports torch first keeps OpenMP's default). Passive workers sleep between parallel regions instead of spinning
# for a core another process holds: on a busy 2-core machine that made 2-thread small-tensor work 5-7x faster
# (cfgedu/commands/_threads.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .core.guidance import cfg_combine, guided, scale_from_w, w_from_scale  # noqa: E402 (after the policy)
from .core.losses import diffusion_loss, drop_labels
from .core.samplers import sample
from .core.schedule import LogSNRSchedule, alpha_sigma
from .toy.mixture import GaussianMixture

__version__ = "0.1.0"
__all__ = ["GaussianMixture", "LogSNRSchedule", "alpha_sigma", "cfg_combine", "diffusion_loss", "drop_labels",
           "guided", "sample", "scale_from_w", "w_from_scale"]
