"""The oracle: reads a world image back without any learned model.

Pixels are assigned to the nearest palette colour (object colours and background colours; for
shaded 3-D renders, the nearest shade s·colour with s in the renderer's shading range);
objects are connected components of one object colour, and the background is the majority of
background-coloured pixels. The shape is read from the component's second moments and outline, the
same at any rotation (`outline`): it is a shape only if it is solid (its area at least MIN_SOLIDITY of
its convex hull's) and about as long as wide along its principal axes (MAX_ASPECT); then its roundness
in whitened coordinates — the area over the disk that reaches its farthest point once its covariance is
made isotropic, an affine invariant: any triangle 0.41, any parallelogram 0.64, any ellipse 1 — tells
triangle, square and circle apart. Otherwise it is "irregular" (a speckle, a bar, a 2:1 ellipse, at any
angle), which matches no asked shape. On ground-truth scenes the world's shapes have solidity ≥ 0.86
and aspect ≤ 1.09 (benchmarks.oracle); a square turned 45° reads as a square, an oval as a circle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from world.vocab import BACKGROUNDS, COLOURS

_OBJECT_NAMES = list(COLOURS)
_BACKGROUND_NAMES = list(BACKGROUNDS)
_PALETTE = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), dtype=np.float32)
MIN_SOLIDITY = 0.8  # area / convex hull area; the world's shapes: circle ≥ 0.90, triangle ≥ 0.86, square 1.0
MAX_ASPECT = 1.4  # longer / shorter extent along the principal axes; the world's shapes ≤ 1.09 at 64 px
# Roundness thresholds (`outline`): between triangles (≤ 0.57: 6-px ones turned, 32-px renders) and
# squares (≥ 0.61), and between squares (≤ 0.78) and disks (≥ 0.79 at 64 px).
_TRIANGLE_SQUARE, _SQUARE_CIRCLE = 0.59, 0.785
# An edit succeeds when the asked object lies in its rough mask at a plausible size: its area between
# these fractions of the mask's (in the edit scenarios the true object is 0.135–0.635 of its mask).
MIN_AREA_OF_MASK, MAX_AREA_OF_MASK = 0.1, 1.0


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str  # "circle", "square", "triangle", or "irregular"
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive)
    area: int
    fill: float  # area / bounding box area (an upright world shape's: SHAPE_FILL; not used for the shape)
    solidity: float = 1.0  # area / convex hull area
    aspect: float = 1.0  # longer / shorter extent along its principal axes (`outline`)
    centroid: tuple[float, float] = (0.0, 0.0)  # (x, y) pixel coordinates
    elongation: float = 1.0  # √(λ_max / λ_min) of the pixels' second central moments
    roundness: float = 1.0  # affine-invariant: ellipse 1, rectangle 0.64, triangle 0.41 (`outline`)


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


def hull_area(pixels: np.ndarray) -> float:
    """Area of the convex hull of a component's pixels (as unit squares)."""
    ys, xs = np.nonzero(pixels)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(float)
    try:
        return float(ConvexHull(corners).volume)
    except (QhullError, ValueError):  # a line of pixels: no 2-D hull
        return float(len(xs))


def outline(pixels: np.ndarray) -> tuple[float, float, float]:
    """A component's shape from its second moments and the hull of its pixel centres, the same at any
    rotation and, for roundness, any stretch: (roundness, aspect, elongation).

    roundness: the area over π r², in coordinates where the pixels' covariance is isotropic (an
    area-preserving whitening), r the farthest hull vertex from the centroid plus half a pixel — an affine
    invariant: any ellipse 1, any rectangle 2/π (0.64), any triangle 3√3/4π (0.41); at 64 px the world's
    disks read 0.79–0.94, its squares 0.65–0.67 (0.78 for a 6-px square turned 45°), its triangles
    0.41–0.50. aspect: the extents along the principal axes, longer over shorter (the bounding box's
    aspect, turned with the shape; a 2:1 ellipse 2, a 30 × 6 bar 5). elongation: √(λ_max / λ_min) of the
    covariance. A line of pixels has no 2-D hull: roundness 0, its bounding box's aspect."""
    ys, xs = np.nonzero(pixels)
    centres = np.stack([xs, ys], 1).astype(float)
    covariance = np.cov(centres.T, bias=True) + np.eye(2) / 12  # each pixel a unit square
    variances, axes = np.linalg.eigh(covariance)
    stretch = float(np.sqrt(variances[1] / variances[0]))
    try:
        hull = centres[ConvexHull(centres).vertices] - centres.mean(0)
    except (QhullError, ValueError):
        height, width = pixels.shape
        return 0.0, max(height, width) / min(height, width), stretch
    whiten = np.linalg.det(covariance) ** 0.25 * axes @ np.diag(variances**-0.5) @ axes.T
    radius = np.linalg.norm(hull @ whiten.T, axis=1).max() + 0.5
    extents = np.ptp(hull @ axes, axis=0) + 1
    return float(len(xs) / (np.pi * radius**2)), float(extents.max() / extents.min()), stretch


def shape_of(roundness: float, solidity: float, aspect: float) -> str:
    """"irregular" unless solid (MIN_SOLIDITY) and about as long as wide along its principal axes
    (MAX_ASPECT); then triangle, square or circle by its roundness (thresholds between the world's own)."""
    if solidity < MIN_SOLIDITY or aspect > MAX_ASPECT:
        return "irregular"
    if roundness < _TRIANGLE_SQUARE:
        return "triangle"
    return "square" if roundness < _SQUARE_CIRCLE else "circle"


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
            pixels = components[slc] == index
            area = int(pixels.sum())
            if area < min_area:
                continue
            box = (slc[1].start, slc[0].start, slc[1].stop, slc[0].stop)
            roundness, aspect, stretch = outline(pixels)
            fill = area / ((box[2] - box[0]) * (box[3] - box[1]))
            solidity = min(1.0, area / hull_area(pixels))
            ys, xs = np.nonzero(pixels)
            centroid = (float(xs.mean() + box[0] + 0.5), float(ys.mean() + box[1] + 0.5))
            objects.append(DetectedObject(colour, shape_of(roundness, solidity, aspect), box, area, fill, solidity,
                                          aspect, centroid, stretch, roundness))
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
    """Is there an object of this colour and shape in mask (H, W): at least min_inside of its pixels
    inside, its centroid inside, and its area between MIN_AREA_OF_MASK and MAX_AREA_OF_MASK of the mask's?"""
    mask_area = int(mask.sum())
    for obj in reading.find(colour, shape):
        x0, y0, x1, y1 = obj.box
        pixels = reading.labels[y0:y1, x0:x1] == _OBJECT_NAMES.index(colour)
        inside = (pixels & mask[y0:y1, x0:x1]).sum()
        cx, cy = (int(v) for v in obj.centroid)
        if (inside >= min_inside * pixels.sum() and mask[min(cy, mask.shape[0] - 1), min(cx, mask.shape[1] - 1)]
                and MIN_AREA_OF_MASK * mask_area <= obj.area <= MAX_AREA_OF_MASK * mask_area):
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
