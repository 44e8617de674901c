"""Vectorised ray casting of the 3D worlds' primitives, through `formats.Camera`s.

World frame: z up, ground plane z = 0. Cameras use the OpenCV convention (x right, y down, z
forward); `Camera.rays` scales directions so that the ray parameter t *is* the z-depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from formats.cameras import Camera
from formats.projection import intersect_boxes, intersect_ground


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV camera-to-world matrix for a camera at eye looking at target."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


# ---- ray/primitive intersections: rays (R, 3), primitives (P, ...) → t (R, P), normals (R, P, 3)

def intersect_spheres(o, d, centers, radii):
    oc = o[:, None, :] - centers[None]
    a = (d * d).sum(-1)[:, None]
    b = 2 * (oc * d[:, None, :]).sum(-1)
    c = (oc * oc).sum(-1) - radii[None] ** 2
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
    hit = o[:, None, :] + t[..., None] * d[:, None, :]
    normals = (hit - centers[None]) / radii[None, :, None]
    return t, np.nan_to_num(normals)


def intersect_cylinders(o, d, centers, radii, half_heights):
    """Vertical cylinders with caps: centre (P, 3), radius (P,), half height (P,)."""
    oc = o[:, None, :] - centers[None]
    dx, dy, dz = d[:, None, 0], d[:, None, 1], d[:, None, 2]
    a = dx * dx + dy * dy
    b = 2 * (oc[..., 0] * dx + oc[..., 1] * dy)
    c = oc[..., 0] ** 2 + oc[..., 1] ** 2 - radii[None] ** 2
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / (2 * a)
        z_side = oc[..., 2] + t_side * dz
        t_side = np.where((disc >= 0) & (t_side > 1e-6) & (np.abs(z_side) <= half_heights[None]), t_side, np.inf)
        t_cap = (np.sign(oc[..., 2]) * half_heights[None] - oc[..., 2]) / dz
        cap_xy = oc[..., :2] + t_cap[..., None] * d[:, None, :2]
        inside_cap = (cap_xy ** 2).sum(-1) <= radii[None] ** 2
        t_cap = np.where(inside_cap & (t_cap > 1e-6), t_cap, np.inf)
    t = np.minimum(t_side, t_cap)
    hit = oc + t[..., None] * d[:, None, :]
    side_n = np.concatenate([hit[..., :2] / radii[None, :, None], np.zeros_like(hit[..., :1])], -1)
    cap_n = np.zeros_like(hit)
    cap_n[..., 2] = np.sign(oc[..., 2])
    normals = np.where((t_cap < t_side)[..., None], cap_n, side_n)
    return t, np.nan_to_num(normals)


LIGHT = np.array([0.4, 0.3, 0.86]) / np.linalg.norm([0.4, 0.3, 0.86])


SHADING = (0.7, 1.0)  # the range of lambert(); world.oracle reads shaded renders with it


def lambert(normals: np.ndarray) -> np.ndarray:
    """View-independent shading factor in SHADING, so colours stay near their palette entry."""
    lo, hi = SHADING
    return lo + (hi - lo) * np.clip(normals @ LIGHT, 0, 1)


@dataclass(frozen=True)
class Primitive:
    """A solid resting in the world. size: half extents (box), (r, r, r) (sphere), (r, r, half height) (cylinder)."""

    kind: str  # "sphere" | "box" | "cylinder"
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float
    colour: tuple[int, int, int]  # base colour of its RGB rendering
    layout_colour: tuple[int, int, int]  # colour of its silhouette in layout maps


@dataclass
class RenderedView:
    """rgb (H, W, 3) uint8, depth (H, W) float z-depth (inf for sky), instance (H, W) int
    (-1 sky, 0 ground, k + 1 primitive k), layout (H, W, 3) uint8 silhouettes in layout colours."""

    camera: Camera
    rgb: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    layout: np.ndarray


def render_primitives(camera: Camera, primitives: list[Primitive], ground_colour, sky=(150, 190, 235)) -> RenderedView:
    """Ray-cast a camera's view of the primitives on the ground plane z = 0.

    ground_colour: function of world points (R, 3) → colours (R, 3) in 0..255 (view-independent).
    """
    origins, dirs = camera.rays()
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    n_rays = len(o)
    ts = [intersect_ground(o, d)[:, None]]
    normals = [np.broadcast_to(np.array([0.0, 0.0, 1.0]), (n_rays, 1, 3))]
    order: list[int] = []
    for kind in ("sphere", "box", "cylinder"):
        idx = [i for i, p in enumerate(primitives) if p.kind == kind]
        if not idx:
            continue
        centers = np.array([primitives[i].center for i in idx], dtype=np.float64)
        sizes = np.array([primitives[i].size for i in idx], dtype=np.float64)
        if kind == "sphere":
            t, n = intersect_spheres(o, d, centers, sizes[:, 0])
        elif kind == "box":
            t, n = intersect_boxes(o, d, centers, sizes, np.array([primitives[i].yaw for i in idx]))
        else:
            t, n = intersect_cylinders(o, d, centers, sizes[:, 0], sizes[:, 2])
        ts.append(t)
        normals.append(n)
        order.extend(idx)
    t_all = np.concatenate(ts, 1)
    n_all = np.concatenate(normals, 1)
    nearest = t_all.argmin(1)
    depth = t_all[np.arange(n_rays), nearest]
    hit = np.isfinite(depth)
    ids = np.array([0] + [k + 1 for k in order])[nearest]
    ids[~hit] = -1
    rgb = np.empty((n_rays, 3))
    rgb[~hit] = sky
    ground = hit & (ids == 0)
    rgb[ground] = ground_colour(o[ground] + d[ground] * depth[ground, None])
    layout = np.zeros((n_rays, 3))
    if primitives:
        base = np.array([p.colour for p in primitives], dtype=np.float64)
        lay = np.array([p.layout_colour for p in primitives], dtype=np.float64)
        obj = hit & (ids > 0)
        shade = lambert(n_all[np.arange(n_rays), nearest][obj])
        rgb[obj] = base[ids[obj] - 1] * shade[:, None]
        layout[obj] = lay[ids[obj] - 1]
    h, w = camera.height, camera.width
    return RenderedView(camera, np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(h, w, 3),
                        depth.reshape(h, w), ids.reshape(h, w), layout.astype(np.uint8).reshape(h, w, 3))
