"""Rough masks from what the user drew in gr.ImageEditor (brush strokes, or their bounding box)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def strokes(editor_value) -> np.ndarray | None:
    """(H, W) bool of every painted pixel over all editor layers, or None when nothing was drawn.
    A value that is not an editor's ({"layers": [RGBA arrays of one size], …}) is a ValueError."""
    if not editor_value:
        return None
    if not isinstance(editor_value, dict) or not isinstance(editor_value.get("layers") or [], (list, tuple)):
        raise ValueError("mask: expected the mask editor's value (its layers of strokes)")
    painted = None
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        if layer.ndim not in (2, 3) or layer.dtype == object or 0 in layer.shape:
            raise ValueError(f"mask: an editor layer of shape {layer.shape}; expected an image")
        alpha = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[-1] == 4 else (
            layer.any(-1) if layer.ndim == 3 else layer != 0)
        if painted is not None and alpha.shape != painted.shape:
            raise ValueError("mask: the editor's layers differ in size; clear the strokes and paint again")
        painted = alpha if painted is None else painted | alpha
    return painted if painted is not None and painted.any() else None


def rough_mask(editor_value, height: int, width: int, use_box: bool = False) -> np.ndarray:
    """The drawn region at image size: any coverage of an image pixel counts. use_box: the
    bounding box of the strokes instead of the strokes themselves."""
    painted = strokes(editor_value)
    if painted is None:
        raise ValueError("mask: nothing drawn; paint over where the new object should go")
    if use_box:
        rows, cols = np.flatnonzero(painted.any(1)), np.flatnonzero(painted.any(0))
        painted = np.zeros_like(painted)
        painted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    small = Image.fromarray(painted.astype(np.uint8) * 255).resize((width, height), Image.BOX)
    return np.asarray(small) > 0


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so a 64 × 64 scene can be drawn on comfortably."""
    return image.repeat(factor, 0).repeat(factor, 1)
