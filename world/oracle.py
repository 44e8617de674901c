"""The oracle: reads a world image back without any learned model.

Pixels are assigned to the nearest palette colour (object colours and background colours; for
shaded 3-D renders, the nearest shade s·colour with s in the renderer's shading range);
objects are connected components of one object colour, and the background is the majority of
background-coloured pixels. The shape is read from the component's outline, at any rotation: it is a
shape only if it is solid (its area at least MIN_SOLIDITY of its convex hull's) and compact — its
second moments' elongation (the square root of their eigenvalues' ratio) and the sides of the smallest
rectangle around its hull at any angle (rotating calipers) both at most MAX_ASPECT; then its fill of
that rectangle tells a triangle (0.5: any triangle fills half its smallest rectangle; a circle 0.785, a
square 1.0), and its roundness (area over the disk that reaches its farthest pixel) a circle (1) from a
square (2/π). Otherwise it is "irregular" (a speckle, a bar, a 2:1 ellipse, at any angle), which
matches no asked shape. On ground-truth scenes the world's shapes have solidity ≥ 0.86, elongation
≤ 1.2 and rectangle aspect ≤ 1.1 (benchmarks.oracle); a square turned 45° reads as a square.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from world.vocab import BACKGROUNDS, COLOURS, SHAPE_FILL

_OBJECT_NAMES = list(COLOURS)
_BACKGROUND_NAMES = list(BACKGROUNDS)
_PALETTE = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), dtype=np.float32)
# Fill-ratio thresholds halfway between triangle (0.5), circle (0.785) and square (1.0).
_TRIANGLE_CIRCLE = (SHAPE_FILL["triangle"] + SHAPE_FILL["circle"]) / 2
_CIRCLE_SQUARE = (SHAPE_FILL["circle"] + SHAPE_FILL["square"]) / 2
MIN_SOLIDITY = 0.8  # area / convex hull area; the world's shapes: circle ≥ 0.90, triangle ≥ 0.86, square 1.0
MIN_CIRCLE_ROUNDNESS = 0.8  # between a square's 2/π (0.64; 0.78 for a 6-px square at 45°) and a disk's 1
MAX_ASPECT = 1.4  # elongation and the smallest rectangle's longer / shorter side; the world's shapes ≤ 1.25
# An edit succeeds when the asked object lies in its rough mask at a plausible size: its area between
# these fractions of the mask's (in the edit scenarios the true object is 0.135–0.635 of its mask).
MIN_AREA_OF_MASK, MAX_AREA_OF_MASK = 0.1, 1.0


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str  # "circle", "square", "triangle", or "irregular"
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive)
    area: int
    fill: float  # area / the area of the smallest rectangle around it, at any angle
    solidity: float = 1.0  # area / convex hull area
    aspect: float = 1.0  # longer / shorter side of that rectangle
    centroid: tuple[float, float] = (0.0, 0.0)  # (x, y) pixel coordinates
    elongation: float = 1.0  # √(λ_max / λ_min) of the pixels' second central moments
    roundness: float = 1.0  # area / π r², r the farthest pixel from the centroid (`outline`)


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
    """From the convex hull of a component's pixel centres: the area and aspect (longer / shorter side)
    of the smallest rectangle around the component at any angle (rotating calipers: one side lies along a
    hull edge; the rectangle around the centres, each side one pixel longer; of equal areas, the
    squarest), and its roundness, area / π r² with r the farthest centre from the centroid plus half a
    pixel (a disk 0.82–0.95 at 64 px, a square 0.64–0.78 at any angle, a triangle under 0.5). A line of
    pixels has no 2-D hull: its bounding box, and roundness 0."""
    ys, xs = np.nonzero(pixels)
    centres = np.stack([xs, ys], 1).astype(float)
    try:
        points = centres[ConvexHull(centres).vertices]
    except (QhullError, ValueError):
        height, width = pixels.shape
        return float(height * width), max(height, width) / min(height, width), 0.0
    edges = np.roll(points, -1, axis=0) - points
    angles = np.arctan2(edges[:, 1], edges[:, 0])
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    along, across = points[:, 0] * cos + points[:, 1] * sin, points[:, 1] * cos - points[:, 0] * sin
    sides = np.stack([np.ptp(along, axis=1), np.ptp(across, axis=1)], 1) + 1  # (edges, 2)
    areas = sides.prod(1)
    aspects = sides.max(1) / sides.min(1)
    best = np.flatnonzero(areas <= areas.min() * (1 + 1e-9))
    k = best[aspects[best].argmin()]
    radius = np.linalg.norm(points - centres.mean(0), axis=1).max() + 0.5
    return float(areas[k]), float(aspects[k]), float(len(xs) / (np.pi * radius**2))


def elongation(pixels: np.ndarray) -> float:
    """√(λ_max / λ_min) of the second central moments of a component's pixels (each a unit square,
    so a line of pixels has a finite elongation): 1 for a disk or a square at any angle, 2 for a 2:1
    ellipse."""
    ys, xs = np.nonzero(pixels)
    covariance = np.cov(np.stack([xs, ys]).astype(float), bias=True) + np.eye(2) / 12
    low, high = np.linalg.eigvalsh(covariance)
    return float(np.sqrt(high / low))


def shape_of(fill: float, solidity: float, aspect: float, elongation: float = 1.0, roundness: float | None = None) -> str:
    """"irregular" unless solid and compact; then a triangle by its rectangle fill (under the halfway
    mark between triangle and circle), and a circle or a square by roundness (without one: by fill)."""
    if solidity < MIN_SOLIDITY or aspect > MAX_ASPECT or elongation > MAX_ASPECT:
        return "irregular"
    shape = shape_from_fill(fill)
    if shape == "triangle" or roundness is None:
        return shape
    return "circle" if roundness >= MIN_CIRCLE_ROUNDNESS else "square"


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
            pixels = components[slc] == index
            area = int(pixels.sum())
            if area < min_area:
                continue
            box = (slc[1].start, slc[0].start, slc[1].stop, slc[0].stop)
            rectangle, aspect, roundness = outline(pixels)
            fill = min(1.0, area / rectangle)
            solidity = min(1.0, area / hull_area(pixels))
            stretch = elongation(pixels)
            ys, xs = np.nonzero(pixels)
            centroid = (float(xs.mean() + box[0] + 0.5), float(ys.mean() + box[1] + 0.5))
            objects.append(DetectedObject(colour, shape_of(fill, solidity, aspect, stretch, roundness), box, area,
                                          fill, solidity, aspect, centroid, stretch, roundness))
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
