"""The oracle: reads a world image back without any learned model.

Pixels are assigned to the nearest palette colour (object colours and background colours; for
shaded 3-D renders, the nearest shade s·colour with s in the renderer's shading range);
objects are connected components of one object colour, their shape is read from how much of their
bounding box they fill, and the background is the majority of background-coloured pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from world.vocab import BACKGROUNDS, COLOURS, SHAPE_FILL

_OBJECT_NAMES = list(COLOURS)
_BACKGROUND_NAMES = list(BACKGROUNDS)
_PALETTE = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), dtype=np.float32)
# Fill-ratio thresholds halfway between triangle (0.5), circle (0.785) and square (1.0).
_TRIANGLE_CIRCLE = (SHAPE_FILL["triangle"] + SHAPE_FILL["circle"]) / 2
_CIRCLE_SQUARE = (SHAPE_FILL["circle"] + SHAPE_FILL["square"]) / 2


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive)
    area: int
    fill: float


@dataclass(frozen=True)
class Reading:
    background: str  # "unknown" when no pixel looks like a background
    objects: tuple[DetectedObject, ...]
    labels: np.ndarray  # (H, W) int: palette index per pixel, -1 for unassigned

    def find(self, colour: str, shape: str | None = None) -> list[DetectedObject]:
        return [o for o in self.objects if o.colour == colour and (shape is None or o.shape == shape)]


def classify_pixels(image: np.ndarray, max_distance: float = 70.0, shading: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) palette index (objects first, then backgrounds), -1 if far from all.
    shading (lo, hi): distances are to the segment {s·colour : lo ≤ s ≤ hi} (Lambertian renders)."""
    image = _check_image(image)
    pixels = image[:, :, None, :].astype(np.float32)
    if shading is None:
        dist = np.linalg.norm(pixels - _PALETTE, axis=-1)
    else:
        norm2 = (_PALETTE**2).sum(-1)
        s = np.clip((pixels * _PALETTE).sum(-1) / norm2, *shading)
        dist = np.linalg.norm(pixels - s[..., None] * _PALETTE, axis=-1)
    labels = dist.argmin(-1)
    labels[dist.min(-1) > max_distance] = -1
    return labels


def shape_from_fill(fill: float) -> str:
    if fill >= _CIRCLE_SQUARE:
        return "square"
    if fill >= _TRIANGLE_CIRCLE:
        return "circle"
    return "triangle"


def read_image(image: np.ndarray, min_area_fraction: float = 0.004, shading: tuple[float, float] | None = None) -> Reading:
    """Read background and objects. Components smaller than min_area_fraction of the image are noise.
    shading: see classify_pixels (world.geometry.SHADING for orbit and street renders)."""
    labels = classify_pixels(image, shading=shading)
    h, w = labels.shape
    min_area = max(4, int(round(min_area_fraction * h * w)))
    objects = []
    for k, colour in enumerate(_OBJECT_NAMES):
        components, count = ndimage.label(labels == k)
        if count == 0:
            continue
        for index, slc in enumerate(ndimage.find_objects(components), start=1):
            area = int((components[slc] == index).sum())
            if area < min_area:
                continue
            box = (slc[1].start, slc[0].start, slc[1].stop, slc[0].stop)
            fill = area / ((box[2] - box[0]) * (box[3] - box[1]))
            objects.append(DetectedObject(colour, shape_from_fill(fill), box, area, fill))
    counts = np.bincount(labels[labels >= len(_OBJECT_NAMES)] - len(_OBJECT_NAMES),
                         minlength=len(_BACKGROUND_NAMES))
    background = _BACKGROUND_NAMES[int(counts.argmax())] if counts.sum() else "unknown"
    return Reading(background, tuple(objects), labels)


def box_iou(a, b) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def best_match(reading: Reading, colour: str, box) -> DetectedObject | None:
    """The detection of this colour that overlaps box most (None if there is no such colour)."""
    candidates = reading.find(colour)
    if not candidates:
        return None
    return max(candidates, key=lambda o: box_iou(o.box, box))


def object_inside_mask(reading: Reading, colour: str, shape: str, mask: np.ndarray,
                       min_inside: float = 0.8) -> bool:
    """Is there an object of this colour and shape whose pixels lie mostly inside mask (H, W)?"""
    for obj in reading.find(colour, shape):
        x0, y0, x1, y1 = obj.box
        pixels = reading.labels[y0:y1, x0:x1] == _OBJECT_NAMES.index(colour)
        inside = (pixels & mask[y0:y1, x0:x1]).sum()
        if inside >= min_inside * pixels.sum():
            return True
    return False


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected an (H, W, 3) array, got shape {image.shape}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.max() <= 1.0 + 1e-6:
            image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        else:
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image
