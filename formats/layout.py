"""The street layout JSON (version 1): a camera rig, the ego pose per frame and the 3D boxes in it.

Frames: world x along the road, y to the left, z up; the ego frame is the same with its origin at the
ego position. Cameras use OpenCV axes. A rig is listed in ring order (nuScenes: front, front-right,
back-right, back, back-left, front-left), which is what cross-camera attention takes its neighbours from.

    {"version": 1,
     "image_size": [W, H],
     "rig": [{"name": "CAM_FRONT", "yaw_deg": 0.0, "fov_deg": 64.0,
              "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
              "extrinsics": 4×4 camera-to-ego (OpenCV camera axes)}, …],
     "frames": [{"ego_pose": 4×4 ego-to-world,
                 "boxes": [{"id": int, "class": "car"|"truck"|"pedestrian", "colour": a word (optional),
                            "size": [length, width, height] m, "yaw": radians (world),
                            "position": [x, y, z] world centre of the box, m}, …]}, …]}

`StreetClip.from_json` / `load` validate every field and raise one ValueError naming the first bad one
(e.g. "layout.frames[2].boxes[0].size: expected three positive finite lengths …").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from formats.cameras import Camera
from formats.jsonfile import read_json

VERSION = 1
CLASSES = ("car", "truck", "pedestrian")
# the colour each class's boxes have in control maps (the embedded ControlNet was trained with these)
CLASS_COLOURS = {"car": (36, 60, 224), "truck": (136, 48, 176), "pedestrian": (246, 134, 20)}
MAX_IMAGE_SIDE = 4096  # pixels per side of one camera image
MAX_CAMERAS = 12
MAX_FRAMES = 10_000
MAX_BOXES = 1_000  # per frame
MAX_FILE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class RigCamera:
    name: str
    yaw_deg: float
    fov_deg: float
    intrinsics: np.ndarray  # (3, 3)
    extrinsics: np.ndarray  # (4, 4) camera-to-ego, OpenCV camera axes


@dataclass(frozen=True)
class StreetBox:
    id: int
    cls: str
    colour: str | None  # a word for the object's colour (the local prompts use it), or None
    size: tuple[float, float, float]  # length, width, height (m)
    yaw: float  # radians, world frame
    position: tuple[float, float, float]  # world centre (m)

    def __post_init__(self):
        if self.cls not in CLASSES:
            raise ValueError(f"class: expected one of {CLASSES}, got {self.cls!r}")
        if self.colour is not None and (not isinstance(self.colour, str) or not self.colour.strip()):
            raise ValueError(f"colour: expected a word, got {self.colour!r}")
        if len(self.size) != 3 or not all(math.isfinite(s) and s > 0 for s in self.size):
            raise ValueError(f"size: expected three positive finite lengths [l, w, h] in metres, got {self.size!r}")
        if not math.isfinite(self.yaw):
            raise ValueError(f"yaw: expected a finite angle in radians, got {self.yaw!r}")
        if len(self.position) != 3 or not all(math.isfinite(p) for p in self.position):
            raise ValueError(f"position: expected finite [x, y, z] in metres, got {self.position!r}")


@dataclass(frozen=True)
class StreetFrame:
    ego_pose: np.ndarray  # (4, 4) ego-to-world
    boxes: tuple[StreetBox, ...]


@dataclass(frozen=True)
class StreetClip:
    rig: tuple[RigCamera, ...]
    frames: tuple[StreetFrame, ...]
    image_size: tuple[int, int]  # (W, H)

    def cameras(self, frame: int) -> list[Camera]:
        """The rig's cameras placed at this frame's ego pose."""
        pose = self.frames[frame].ego_pose
        w, h = self.image_size
        return [Camera(pose @ cam.extrinsics, cam.intrinsics[0, 0], cam.intrinsics[1, 1],
                       cam.intrinsics[0, 2], cam.intrinsics[1, 2], w, h) for cam in self.rig]

    def to_json(self) -> dict:
        def box(b: StreetBox) -> dict:
            out = {"id": b.id, "class": b.cls, "size": list(b.size), "yaw": b.yaw, "position": list(b.position)}
            return out if b.colour is None else {**out, "colour": b.colour}
        return {
            "version": VERSION,
            "image_size": list(self.image_size),
            "rig": [{"name": c.name, "yaw_deg": c.yaw_deg, "fov_deg": c.fov_deg,
                     "intrinsics": c.intrinsics.tolist(), "extrinsics": c.extrinsics.tolist()} for c in self.rig],
            "frames": [{"ego_pose": f.ego_pose.tolist(), "boxes": [box(b) for b in f.boxes]} for f in self.frames],
        }

    @staticmethod
    def from_json(data) -> "StreetClip":
        """Parse and validate a layout; a missing or malformed field raises ValueError naming it."""
        _require(data, "layout", ("version", "image_size", "rig", "frames"))
        if data["version"] != VERSION:
            raise ValueError(f"layout.version: expected {VERSION}, got {data['version']!r}")
        size = data["image_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_IMAGE_SIDE for s in size)):
            raise ValueError(f"layout.image_size: expected [width, height], integers in 1..{MAX_IMAGE_SIDE}, "
                             f"got {size!r}")
        rig = tuple(_rig_camera(cam, f"layout.rig[{i}]") for i, cam in enumerate(_list(data["rig"], "layout.rig",
                                                                                     1, MAX_CAMERAS)))
        frames = tuple(_frame(frame, f"layout.frames[{i}]")
                       for i, frame in enumerate(_list(data["frames"], "layout.frames", 1, MAX_FRAMES)))
        return StreetClip(rig, frames, (size[0], size[1]))

    def save(self, path: str | Path) -> None:
        """Written to a temporary file beside path and renamed: a reader never sees half a layout."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(self.to_json(), indent=1))
        partial.replace(path)

    @staticmethod
    def load(path: str | Path) -> "StreetClip":
        return StreetClip.from_json(read_json(path, "layout", MAX_FILE_BYTES))


def _require(obj, where: str, keys) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    for key in keys:
        if key not in obj:
            raise ValueError(f"{where}: missing field {key!r}")


def _list(value, where: str, least: int, most: int) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    if not least <= len(value) <= most:
        raise ValueError(f"{where}: expected {least} to {most} entries, got {len(value)}")
    return value


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _numbers(value, n: int, where: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"{where}: expected a list of {n} numbers, got {value!r}")
    return tuple(_number(v, f"{where}[{i}]") for i, v in enumerate(value))


def _matrix(value, shape, where: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: expected a {shape[0]}×{shape[1]} matrix of numbers") from None
    if m.shape != shape or not np.isfinite(m).all():
        raise ValueError(f"{where}: expected a finite {shape[0]}×{shape[1]} matrix, got shape {m.shape}")
    return m


def _pose(value, where: str) -> np.ndarray:
    """A rigid 4×4 transform: a rotation (orthonormal, determinant 1) and a translation."""
    m = _matrix(value, (4, 4), where)
    rotation = m[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or np.linalg.det(rotation) < 0 \
            or not np.allclose(m[3], [0, 0, 0, 1]):
        raise ValueError(f"{where}: expected a rigid transform (an orthonormal rotation with determinant 1, "
                         f"last row [0, 0, 0, 1])")
    return m


def _rig_camera(cam, where: str) -> RigCamera:
    _require(cam, where, ("name", "yaw_deg", "fov_deg", "intrinsics", "extrinsics"))
    if not isinstance(cam["name"], str) or not cam["name"]:
        raise ValueError(f"{where}.name: expected a camera name, got {cam['name']!r}")
    fov = _number(cam["fov_deg"], f"{where}.fov_deg")
    if not 0 < fov < 180:
        raise ValueError(f"{where}.fov_deg: expected a field of view in (0, 180) degrees, got {fov}")
    intrinsics = _matrix(cam["intrinsics"], (3, 3), f"{where}.intrinsics")
    if intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0 or not np.allclose(intrinsics[2], [0, 0, 1]):
        raise ValueError(f"{where}.intrinsics: expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    return RigCamera(cam["name"], _number(cam["yaw_deg"], f"{where}.yaw_deg"), fov, intrinsics,
                     _pose(cam["extrinsics"], f"{where}.extrinsics"))


def _frame(frame, where: str) -> StreetFrame:
    _require(frame, where, ("ego_pose", "boxes"))
    boxes = []
    for j, box in enumerate(_list(frame["boxes"], f"{where}.boxes", 0, MAX_BOXES)):
        at = f"{where}.boxes[{j}]"
        _require(box, at, ("id", "class", "size", "yaw", "position"))
        if isinstance(box["id"], bool) or not isinstance(box["id"], int):
            raise ValueError(f"{at}.id: expected an integer, got {box['id']!r}")
        if box["class"] not in CLASSES:
            raise ValueError(f"{at}.class: expected one of {CLASSES}, got {box['class']!r}")
        colour = box.get("colour")
        if colour is not None and (not isinstance(colour, str) or not colour.strip()):
            raise ValueError(f"{at}.colour: expected a word, got {colour!r}")
        size = _numbers(box["size"], 3, f"{at}.size")
        if min(size) <= 0:
            raise ValueError(f"{at}.size: expected three positive lengths [l, w, h] in metres, got {list(size)}")
        boxes.append(StreetBox(box["id"], box["class"], colour, size, _number(box["yaw"], f"{at}.yaw"),
                               _numbers(box["position"], 3, f"{at}.position")))
    return StreetFrame(_pose(frame["ego_pose"], f"{where}.ego_pose"), tuple(boxes))
