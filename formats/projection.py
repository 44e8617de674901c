"""What a street layout looks like from each camera, without a model: ray casting of the ground plane
and the layout's boxes. The driving pipeline's control maps (class colours and depth) and class
regions come from here, and the toy world's renderer casts its boxes and ground with the same code.
Which cells of one camera its neighbours see (`depth_correspondences`, from any cameras' depths) is
what both pipelines' overlap sync averages over.

Rays are (R, 3) origins and directions in world coordinates (`Camera.rays`: t along a ray is z-depth).
"""

from __future__ import annotations

import numpy as np

from formats.cameras import Camera
from formats.layout import CLASS_COLOURS, CLASSES, StreetClip


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def intersect_boxes(o, d, centers, half_sizes, yaws):
    """Boxes with yaw about z: centre (P, 3), half extents (P, 3), yaw (P,) radians."""
    rot = np.stack([yaw_matrix(-y) for y in yaws]) if len(yaws) else np.zeros((0, 3, 3))
    o_local = np.einsum("pij,rpj->rpi", rot, o[:, None, :] - centers[None])
    d_local = np.einsum("pij,rj->rpi", rot, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d_local
        t0 = (-half_sizes[None] - o_local) * inv
        t1 = (half_sizes[None] - o_local) * inv
    t_near = np.nanmax(np.minimum(t0, t1), -1)
    t_far = np.nanmin(np.maximum(t0, t1), -1)
    t = np.where((t_far >= t_near) & (t_near > 1e-6), t_near, np.inf)
    axis = np.nanargmax(np.minimum(t0, t1), -1)
    sign = -np.sign(np.take_along_axis(d_local, axis[..., None], -1))[..., 0]
    n_local = np.zeros(d_local.shape)
    np.put_along_axis(n_local, axis[..., None], sign[..., None], -1)
    normals = np.einsum("pji,rpj->rpi", rot, n_local)  # rotate back (rot is orthonormal)
    return t, normals


def intersect_ground(o, d):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -o[:, 2] / d[:, 2]
    return np.where(t > 1e-6, t, np.inf)


def cast_layout(camera: Camera, boxes) -> tuple[np.ndarray, np.ndarray]:
    """(class index (H, W): −1 ground or sky, else the index in CLASSES; z-depth (H, W), inf for sky) of
    the first surface each pixel's ray meets: a box or the ground plane z = 0."""
    origins, dirs = camera.rays()
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    depth = intersect_ground(o, d)
    classes = np.full(len(o), -1, dtype=np.int64)
    if boxes:
        centers = np.array([b.position for b in boxes], dtype=np.float64)
        half = np.array([b.size for b in boxes], dtype=np.float64) / 2
        t, _ = intersect_boxes(o, d, centers, half, np.array([b.yaw for b in boxes], dtype=np.float64))
        nearest = t.argmin(1)
        hit = t[np.arange(len(o)), nearest]
        front = hit < depth
        depth = np.where(front, hit, depth)
        kinds = np.array([CLASSES.index(b.cls) for b in boxes])
        classes[front] = kinds[nearest[front]]
    return classes.reshape(camera.height, camera.width), depth.reshape(camera.height, camera.width)


def control_maps(clip: StreetClip, frame: int, max_depth: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Every camera's control image at one frame, as the embedded ControlNet was trained on street
    views: (V, H, W, 4) float32 in [0, 1], the class colours of the boxes (ground and sky black), then
    1 − depth / max_depth (near = 1, sky 0); and the class map (V, H, W) (−1: none)."""
    palette = np.array([CLASS_COLOURS[c] for c in CLASSES] + [(0, 0, 0)], dtype=np.float32) / 255
    maps, class_maps = [], []
    for camera in clip.cameras(frame):
        classes, depth = cast_layout(camera, clip.frames[frame].boxes)
        near = np.where(np.isfinite(depth), np.clip(1 - depth / max_depth, 0, 1), 0.0)
        maps.append(np.concatenate([palette[classes], near[..., None]], -1).astype(np.float32))
        class_maps.append(classes)
    return np.stack(maps), np.stack(class_maps)


def scaled_camera(camera: Camera, width: int, height: int) -> Camera:
    """The same camera with its image resampled to width × height (a latent grid: one pixel per cell)."""
    sx, sy = width / camera.width, height / camera.height
    return Camera(camera.c2w, camera.fx * sx, camera.fy * sy, camera.cx * sx, camera.cy * sy, width, height)


def grid_depth(depth: np.ndarray, size: tuple[int, int], edge_tolerance: float | None = None) -> np.ndarray:
    """A z-depth map (H, W) read at the cell centres of a (width, height) = size grid (a latent grid): the
    pixel nearest each centre (inf and NaN stay unknown). edge_tolerance: a cell holding a depth edge
    (where inverse depth bends by more than this fraction of itself over three pixels: two surfaces,
    or a surface and empty space, meet; the cell mixes them) is unknown (NaN); a plane seen at any
    slope is not an edge."""
    width, height = size
    depth = np.asarray(depth, dtype=np.float64)
    rows = np.minimum((np.arange(height) + 0.5) * depth.shape[0] / height, depth.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * depth.shape[1] / width, depth.shape[1] - 1).astype(int)
    out = depth[rows[:, None], cols[None, :]]
    if edge_tolerance is None:
        return out
    # On a plane, inverse depth is linear in the pixel coordinates: its second difference is zero on a
    # slope however steep and large where two surfaces (or a surface and empty space) meet.
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(np.isfinite(depth), 1.0 / depth, 0.0)
    jump = np.isnan(depth)  # unknown
    for axis in (0, 1):
        a = np.moveaxis(inverse, axis, 0)
        second = np.abs(a[:-2] - 2 * a[1:-1] + a[2:])
        bent = second > edge_tolerance * np.maximum(a[1:-1], np.maximum(a[:-2], a[2:]))
        marks = np.moveaxis(jump, axis, 0)
        marks[:-2] |= bent
        marks[1:-1] |= bent
        marks[2:] |= bent
    row_of = np.minimum(np.arange(depth.shape[0]) * height // depth.shape[0], height - 1)
    col_of = np.minimum(np.arange(depth.shape[1]) * width // depth.shape[1], width - 1)
    edge = np.zeros(height * width, bool)
    np.logical_or.at(edge, (row_of[:, None] * width + col_of[None, :]).ravel(), jump.ravel())
    return np.where(edge.reshape(height, width), np.nan, out)


def depth_correspondences(cameras: list[Camera], depths: list[np.ndarray | None], neighbours: list[list[int]],
                          depth_tolerance: float = 0.05) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """Where each camera's pixels are seen by its neighbouring cameras, from every camera's z-depth (inf:
    nothing there; None: unknown, that camera is linked to nothing).

    For every camera b, one (a, seen (h, w) bool, where (h, w, 2) float) per a in neighbours[b]: seen
    marks b's pixels whose surface point lands inside a's image with a's own depth agreeing there
    (within depth_tolerance, relative; empty and occluded points are never seen), where holds the
    point's continuous (x, y) pixel coordinates in a (pixel centres at +0.5)."""
    out = []
    for b, camera in enumerate(cameras):
        links = []
        if depths[b] is not None:
            finite = np.isfinite(depths[b])
            points = camera.unproject(np.where(finite, depths[b], 1.0))
        for a in neighbours[b]:
            if depths[b] is None or depths[a] is None:
                links.append((a, np.zeros((camera.height, camera.width), bool), np.zeros((camera.height, camera.width, 2))))
                continue
            uv, z = cameras[a].project(points)
            width, height = cameras[a].width, cameras[a].height
            with np.errstate(invalid="ignore"):
                inside = finite & (z > 1e-6) & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) \
                    & (uv[..., 1] < height)
            col = np.clip(np.where(inside, uv[..., 0], 0).astype(int), 0, width - 1)
            row = np.clip(np.where(inside, uv[..., 1], 0).astype(int), 0, height - 1)
            surface = depths[a][row, col]
            with np.errstate(invalid="ignore"):
                seen = inside & np.isfinite(surface) & (np.abs(surface - z) <= depth_tolerance * np.maximum(z, 1e-6))
            links.append((a, seen, np.where(seen[..., None], uv, 0.0)))
        out.append(links)
    return out


def view_correspondences(clip: StreetClip, frame: int, size: tuple[int, int], neighbours: list[list[int]],
                         depth_tolerance: float = 0.05) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """`depth_correspondences` of a street clip's cameras at one frame on a (width, height) = size grid
    (a latent grid), from the layout alone (its ground plane and boxes, `cast_layout`; the sky is never
    seen)."""
    width, height = size
    cameras = [scaled_camera(c, width, height) for c in clip.cameras(frame)]
    boxes = clip.frames[frame].boxes
    return depth_correspondences(cameras, [cast_layout(c, boxes)[1] for c in cameras], neighbours, depth_tolerance)
