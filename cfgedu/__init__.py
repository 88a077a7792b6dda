"""cfgedu: classifier-free diffusion guidance (Ho & Salimans 2022), taught end to end.

Importing cfgedu pulls in torch and numpy only; plotting, widgets and datasets load on demand.
"""
from .core.guidance import cfg_combine, guided, scale_from_w, w_from_scale
from .core.losses import diffusion_loss, drop_labels
from .core.samplers import sample
from .core.schedule import LogSNRSchedule, alpha_sigma
from .toy.mixture import GaussianMixture

__version__ = "0.1.0"
__all__ = ["GaussianMixture", "LogSNRSchedule", "alpha_sigma", "cfg_combine", "diffusion_loss", "drop_labels",
           "guided", "sample", "scale_from_w", "w_from_scale"]
