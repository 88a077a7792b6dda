"""ipywidgets front ends for the notebooks: sliders that update matplotlib artists in place.

Every guidance slider shows the paper's w and the scale s = 1 + w used by diffusers and Imagen.
"""
from __future__ import annotations

from .guidance import scale_from_w


def guidance_label(w: float) -> str:
    """The readout of a w slider: 'w = 0.3 (s = 1 + w = 1.3)'."""
    return f"w = {w:g} (s = 1 + w = {scale_from_w(w):g})"
