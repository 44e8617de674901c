"""Reprojection: warp one view into another with depth and cameras, and score their agreement.

For every pixel of the target view with a finite depth, its 3D point is projected into the source
view and the source colour is sampled bilinearly. A pixel is co-visible when it lands inside the
source image and the source's own depth at all four bilinear neighbours agrees with the projected
depth (so occluded points and points on a depth edge are left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from formats.cameras import Camera


@dataclass(frozen=True)
class Consistency:
    mae: float  # mean absolute colour error over co-visible pixels, in 0..1 (×255 for grey levels)
    covisible_fraction: float  # of the target's pixels
    n_pixels: int


def warp(src_image: np.ndarray, src_depth: np.ndarray, src_cam: Camera,
         dst_depth: np.ndarray, dst_cam: Camera, depth_tolerance: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Source view resampled into the target view: (H, W, C) float image and (H, W) co-visible mask."""
    if src_image.shape[:2] != src_depth.shape:
        raise ValueError(f"src_depth: shape {src_depth.shape} does not match src_image {src_image.shape[:2]}")
    finite = np.isfinite(dst_depth)
    points = dst_cam.unproject(np.where(finite, dst_depth, 1.0))
    uv, z = src_cam.project(points)
    h, w = src_depth.shape
    # Pixel centres sit at +0.5; shift so that integer coordinates are pixel centres.
    x, y = uv[..., 0] - 0.5, uv[..., 1] - 0.5
    inside = finite & (z > 1e-6) & (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    x, y = np.where(inside, x, 0), np.where(inside, y, 0)
    x0, y0 = np.clip(np.floor(x).astype(int), 0, w - 2 if w > 1 else 0), np.clip(np.floor(y).astype(int), 0, h - 2 if h > 1 else 0)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    img = src_image.astype(np.float64)
    sampled = (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x1] * fx * (1 - fy)
               + img[y1, x0] * (1 - fx) * fy + img[y1, x1] * fx * fy)
    corners = np.stack([src_depth[y0, x0], src_depth[y0, x1], src_depth[y1, x0], src_depth[y1, x1]])
    with np.errstate(invalid="ignore"):
        spread = corners.max(0) - corners.min(0)
        src_z = (corners[0] * (1 - fx[..., 0]) * (1 - fy[..., 0]) + corners[1] * fx[..., 0] * (1 - fy[..., 0])
                 + corners[2] * (1 - fx[..., 0]) * fy[..., 0] + corners[3] * fx[..., 0] * fy[..., 0])
    # Occlusion: the source sees something else in front. Depth edge: the four neighbours disagree.
    scale = np.maximum(z, 1e-6)
    visible = (inside & np.isfinite(corners).all(0) & (np.abs(src_z - z) <= depth_tolerance * scale)
               & (spread <= 5 * depth_tolerance * scale))
    return sampled, visible


def consistency(src_image: np.ndarray, src_depth: np.ndarray, src_cam: Camera,
                dst_image: np.ndarray, dst_depth: np.ndarray, dst_cam: Camera) -> Consistency:
    """How well the target view agrees with the source warped into it (uint8 images)."""
    warped, visible = warp(src_image, src_depth, src_cam, dst_depth, dst_cam)
    n = int(visible.sum())
    if n == 0:
        return Consistency(float("nan"), 0.0, 0)
    err = np.abs(warped[visible] - dst_image.astype(np.float64)[visible]).mean() / 255.0
    return Consistency(float(err), n / visible.size, n)
