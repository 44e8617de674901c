"""Pinhole cameras and nerfstudio's transforms.json.

`Camera` uses the OpenCV convention (x right, y down, z forward); `Camera.rays` scales directions so
that the ray parameter t *is* the z-depth. nerfstudio's transforms.json stores camera-to-world
matrices in OpenGL axes (x right, y up, z back): `c2w_opengl` converts, and `read_transforms` /
`write_transforms` convert on the way in and out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from formats.jsonfile import read_json

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
# camera models whose images Strata can use as they are (no distortion to undo)
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
MAX_TRANSFORMS_BYTES = 64 << 20


@dataclass(frozen=True)
class Camera:
    c2w: np.ndarray  # (4, 4) camera-to-world, OpenCV axes
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @staticmethod
    def from_fov(c2w: np.ndarray, fov_deg: float, width: int, height: int) -> "Camera":
        """A pinhole camera with horizontal field of view fov_deg and square pixels."""
        if not 1.0 <= fov_deg < 179.0:
            raise ValueError(f"fov_deg: expected a horizontal field of view in [1, 179), got {fov_deg}")
        if width < 1 or height < 1:
            raise ValueError(f"width/height: expected positive image size, got {width}×{height}")
        f = width / 2 / np.tan(np.radians(fov_deg) / 2)
        return Camera(np.asarray(c2w, dtype=np.float64), f, f, width / 2, height / 2, width, height)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    @property
    def w2c(self) -> np.ndarray:
        return np.linalg.inv(self.c2w)

    def c2w_opengl(self) -> np.ndarray:
        return self.c2w @ OPENCV_TO_OPENGL

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Origins (H, W, 3) and directions (H, W, 3) through pixel centres; t along them is z-depth."""
        u = np.arange(self.width) + 0.5
        v = np.arange(self.height) + 0.5
        uu, vv = np.meshgrid(u, v, indexing="xy")
        d_cam = np.stack([(uu - self.cx) / self.fx, (vv - self.cy) / self.fy, np.ones_like(uu)], -1)
        dirs = d_cam @ self.c2w[:3, :3].T
        origins = np.broadcast_to(self.c2w[:3, 3], dirs.shape)
        return origins, dirs

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) → pixel coordinates (..., 2) (continuous, pixel centres at +0.5) and z."""
        cam = points @ self.w2c[:3, :3].T + self.w2c[:3, 3]
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * cam[..., 0] / z + self.cx, self.fy * cam[..., 1] / z + self.cy], -1)
        return uv, z

    def unproject(self, depth: np.ndarray) -> np.ndarray:
        """z-depth (H, W) → world points (H, W, 3)."""
        origins, dirs = self.rays()
        return origins + dirs * depth[..., None]


@dataclass
class NerfstudioScene:
    """What a transforms.json describes: per frame its camera and image (and depth, mask) path,
    absolute; depth_scale: metres per stored depth unit; extra: the file's other top-level fields."""

    cameras: list[Camera]
    images: list[Path]
    depths: list[Path | None]
    masks: list[Path | None]
    depth_scale: float = 1.0
    extra: dict = field(default_factory=dict)


def _number(value, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (positive and value <= 0):
        raise ValueError(f"{where}: expected a finite {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def read_transforms(path: str | Path, check_files: bool = True) -> NerfstudioScene:
    """Cameras (OpenCV axes) and file paths from a nerfstudio transforms.json (a file, or the folder
    holding it). Intrinsics may be top-level or per frame, as nerfstudio allows. Each malformed field
    is a ValueError that names it; check_files: every frame's image (and depth, mask) must exist."""
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    data = read_json(path, "transforms.json", MAX_TRANSFORMS_BYTES)
    if not isinstance(data, dict):
        raise ValueError(f"transforms.json: expected an object, got {type(data).__name__}")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError("transforms.json.frames: expected a non-empty list of frames")
    model = data.get("camera_model", "OPENCV")
    if model not in PINHOLE_MODELS:
        raise ValueError(f"transforms.json.camera_model: expected one of {PINHOLE_MODELS}, got {model!r}")
    root = path.parent
    cameras, images, depths, masks = [], [], [], []
    for i, frame in enumerate(frames):
        where = f"transforms.json.frames[{i}]"
        if not isinstance(frame, dict):
            raise ValueError(f"{where}: expected an object, got {type(frame).__name__}")
        intrinsics = {}
        for key in INTRINSICS:
            value = frame.get(key, data.get(key))
            if value is None:
                raise ValueError(f"{where}.{key}: missing (neither in the frame nor at the top level)")
            intrinsics[key] = _number(value, f"{where}.{key}", positive=key in ("fl_x", "fl_y", "w", "h"))
        for key in DISTORTION:
            if _number(frame.get(key, data.get(key, 0.0)), f"{where}.{key}") != 0:
                raise ValueError(f"{where}.{key}: lens distortion is not supported; undistort the images first")
        if intrinsics["w"] != int(intrinsics["w"]) or intrinsics["h"] != int(intrinsics["h"]):
            raise ValueError(f"{where}.w/h: expected whole pixel counts, got {intrinsics['w']}×{intrinsics['h']}")
        try:
            c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except KeyError:
            raise ValueError(f"{where}.transform_matrix: missing") from None
        except (ValueError, TypeError):
            raise ValueError(f"{where}.transform_matrix: expected a 4×4 matrix of numbers") from None
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all() or abs(np.linalg.det(c2w[:3, :3])) < 1e-6:
            raise ValueError(f"{where}.transform_matrix: expected a finite, invertible 4×4 camera-to-world matrix")
        cameras.append(Camera(c2w @ OPENCV_TO_OPENGL, intrinsics["fl_x"], intrinsics["fl_y"], intrinsics["cx"],
                              intrinsics["cy"], int(intrinsics["w"]), int(intrinsics["h"])))
        files = []
        for key, required in (("file_path", True), ("depth_file_path", False), ("mask_path", False)):
            name = frame.get(key)
            if name is None:
                if required:
                    raise ValueError(f"{where}.file_path: missing")
                files.append(None)
                continue
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}.{key}: expected a relative path, got {name!r}")
            file = (root / name).resolve()
            if not file.is_relative_to(root.resolve()):
                raise ValueError(f"{where}.{key}: {name!r} points outside the dataset folder")
            if check_files and not file.is_file():
                raise ValueError(f"{where}.{key}: {name!r} does not exist in the dataset folder")
            files.append(file)
        images.append(files[0])
        depths.append(files[1])
        masks.append(files[2])
    depth_scale = _number(data.get("depth_unit_scale_factor", 1.0), "transforms.json.depth_unit_scale_factor",
                          positive=True)
    known = {"frames", "camera_model", "depth_unit_scale_factor", *INTRINSICS, *DISTORTION}
    return NerfstudioScene(cameras, images, depths, masks, depth_scale,
                           {k: v for k, v in data.items() if k not in known})


def write_transforms(folder: str | Path, cameras: list[Camera], images: list[str], depths: list[str] | None = None,
                     masks: list[str] | None = None, depth_scale: float | None = None,
                     extra: dict | None = None) -> Path:
    """Write folder/transforms.json for images (paths relative to folder) seen by cameras: shared
    intrinsics at the top level when every camera has the same, else per frame. Written to a
    temporary file and renamed, so a reader never sees half a file."""
    folder = Path(folder)
    if len(images) != len(cameras) or (depths and len(depths) != len(cameras)) or (masks and len(masks) != len(cameras)):
        raise ValueError(f"images/depths/masks: expected one per camera ({len(cameras)})")
    intrinsics = [{"fl_x": c.fx, "fl_y": c.fy, "cx": c.cx, "cy": c.cy, "w": c.width, "h": c.height} for c in cameras]
    shared = all(i == intrinsics[0] for i in intrinsics)
    data = {"camera_model": "OPENCV", **(intrinsics[0] if shared else {}), "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    if depth_scale is not None:
        data["depth_unit_scale_factor"] = depth_scale
    frames = []
    for k, camera in enumerate(cameras):
        frame = {"file_path": images[k], "transform_matrix": camera.c2w_opengl().tolist()}
        if depths:
            frame["depth_file_path"] = depths[k]
        if masks:
            frame["mask_path"] = masks[k]
        frames.append(frame if shared else {**frame, **intrinsics[k]})
    data["frames"] = frames
    data.update(extra or {})
    target = folder / "transforms.json"
    partial = folder / ".transforms.json.partial"
    partial.write_text(json.dumps(data, indent=2))
    partial.replace(target)
    return target
