"""The street world: a road with box cars, trucks and pedestrians, a 6-camera rig, ego motion.

Frames: world x along the road, y to the left, z up. The ego vehicle's frame is the same with its
origin at the ego position. Cameras use OpenCV axes. The rig follows nuScenes' yaw order (front,
front-right, back-right, back, back-left, front-left); neighbouring fields of view overlap by 8–9°.

Layout JSON (`StreetClip.to_json` / `StreetClip.from_json`), version 1:

    {"version": 1,
     "image_size": [W, H],
     "rig": [{"name": "CAM_FRONT", "yaw_deg": 0.0, "fov_deg": 64.0,
              "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
              "extrinsics": 4×4 camera-to-ego (OpenCV camera axes)}, … 6 cameras],
     "frames": [{"ego_pose": 4×4 ego-to-world,
                 "boxes": [{"id": int, "class": "car"|"truck"|"pedestrian", "colour": palette word,
                            "size": [length, width, height] m, "yaw": radians (world),
                            "position": [x, y, z] world centre of the box, m}, …]}, …]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from world.geometry import Camera, Primitive, RenderedView, render_primitives
from world.vocab import BACKGROUNDS, COLOURS, LANE_PAINT, STREET_CLASSES, check_word

# (name, yaw in degrees, horizontal field of view in degrees), nuScenes order.
NUSCENES_RIG = (
    ("CAM_FRONT", 0.0, 64.0),
    ("CAM_FRONT_RIGHT", -55.0, 64.0),
    ("CAM_BACK_RIGHT", -110.0, 64.0),
    ("CAM_BACK", 180.0, 92.0),
    ("CAM_BACK_LEFT", 110.0, 64.0),
    ("CAM_FRONT_LEFT", 55.0, 64.0),
)
CAMERA_HEIGHT = 1.6
ROAD_HALF_WIDTH = 4.0
SIDEWALK_WIDTH = 2.0
CLASS_SIZES = {"car": (4.2, 1.8, 1.5), "truck": (7.0, 2.4, 3.0), "pedestrian": (0.6, 0.6, 1.75)}


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
    colour: str
    size: tuple[float, float, float]  # length, width, height (m)
    yaw: float  # radians, world frame
    position: tuple[float, float, float]  # world centre (m)

    def __post_init__(self):
        check_word("class", self.cls, STREET_CLASSES)
        check_word("colour", self.colour, COLOURS)
        if len(self.size) != 3 or min(self.size) <= 0:
            raise ValueError(f"size: expected three positive lengths [l, w, h] in metres, got {self.size!r}")
        if len(self.position) != 3:
            raise ValueError(f"position: expected [x, y, z], got {self.position!r}")

    def to_primitive(self) -> Primitive:
        half = tuple(s / 2 for s in self.size)
        return Primitive("box", tuple(self.position), half, self.yaw, COLOURS[self.colour],
                         COLOURS[STREET_CLASSES[self.cls]])


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
        return {
            "version": 1,
            "image_size": list(self.image_size),
            "rig": [{"name": c.name, "yaw_deg": c.yaw_deg, "fov_deg": c.fov_deg,
                     "intrinsics": c.intrinsics.tolist(), "extrinsics": c.extrinsics.tolist()} for c in self.rig],
            "frames": [{"ego_pose": f.ego_pose.tolist(),
                        "boxes": [{"id": b.id, "class": b.cls, "colour": b.colour, "size": list(b.size),
                                   "yaw": b.yaw, "position": list(b.position)} for b in f.boxes]}
                       for f in self.frames],
        }

    @staticmethod
    def from_json(data: dict) -> "StreetClip":
        """Parse and validate a layout; a missing or malformed field raises ValueError naming it."""
        _require(data, "layout", ("version", "image_size", "rig", "frames"))
        if data["version"] != 1:
            raise ValueError(f"layout.version: expected 1, got {data['version']!r}")
        size = data["image_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise ValueError(f"layout.image_size: expected [width, height] positive integers, got {size!r}")
        if not data["rig"]:
            raise ValueError("layout.rig: expected at least one camera, got 0")
        rig = []
        for i, cam in enumerate(data["rig"]):
            _require(cam, f"layout.rig[{i}]", ("name", "yaw_deg", "fov_deg", "intrinsics", "extrinsics"))
            rig.append(RigCamera(cam["name"], float(cam["yaw_deg"]), float(cam["fov_deg"]),
                                 _matrix(cam["intrinsics"], (3, 3), f"layout.rig[{i}].intrinsics"),
                                 _matrix(cam["extrinsics"], (4, 4), f"layout.rig[{i}].extrinsics")))
        frames = []
        for i, frame in enumerate(data["frames"]):
            _require(frame, f"layout.frames[{i}]", ("ego_pose", "boxes"))
            boxes = []
            for j, box in enumerate(frame["boxes"]):
                where = f"layout.frames[{i}].boxes[{j}]"
                _require(box, where, ("id", "class", "size", "yaw", "position"))
                try:
                    boxes.append(StreetBox(int(box["id"]), box["class"], box.get("colour", STREET_CLASSES.get(box["class"], "blue")),
                                           tuple(float(s) for s in box["size"]), float(box["yaw"]),
                                           tuple(float(p) for p in box["position"])))
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{where}.{err}") from None
            frames.append(StreetFrame(_matrix(frame["ego_pose"], (4, 4), f"layout.frames[{i}].ego_pose"), tuple(boxes)))
        if not frames:
            raise ValueError("layout.frames: expected at least one frame, got 0")
        return StreetClip(tuple(rig), tuple(frames), (size[0], size[1]))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @staticmethod
    def load(path: str | Path) -> "StreetClip":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return StreetClip.from_json(data)


def _require(obj, where: str, keys) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    for key in keys:
        if key not in obj:
            raise ValueError(f"{where}: missing field {key!r}")


def _matrix(value, shape, where: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: expected a {shape[0]}×{shape[1]} matrix of numbers") from None
    if m.shape != shape or not np.isfinite(m).all():
        raise ValueError(f"{where}: expected a finite {shape[0]}×{shape[1]} matrix, got shape {m.shape}")
    return m


def make_rig(image_size: tuple[int, int] = (64, 64), n_cameras: int = 6) -> tuple[RigCamera, ...]:
    """The nuScenes-ordered rig; n_cameras < 6 takes the first ones (for tests)."""
    if not isinstance(n_cameras, int) or not 1 <= n_cameras <= len(NUSCENES_RIG):
        raise ValueError(f"n_cameras: expected 1..{len(NUSCENES_RIG)}, got {n_cameras!r}")
    w, h = image_size
    rig = []
    for name, yaw_deg, fov_deg in NUSCENES_RIG[:n_cameras]:
        yaw = np.radians(yaw_deg)
        f = w / 2 / np.tan(np.radians(fov_deg) / 2)
        forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        c2e = np.eye(4)
        c2e[:3, 0], c2e[:3, 1], c2e[:3, 2] = right, (0.0, 0.0, -1.0), forward
        c2e[:3, 3] = 0.1 * forward + np.array([0.0, 0.0, CAMERA_HEIGHT])
        rig.append(RigCamera(name, yaw_deg, fov_deg, np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]]), c2e))
    return tuple(rig)


def street_ground(points: np.ndarray) -> np.ndarray:
    """Road, dashed centre line, sidewalks, grass: a function of world position only. Boundaries
    are soft ramps, so that a colour edge never falls between two pixels of a continuous surface."""
    x, y = points[:, 0], points[:, 1]
    ay = np.abs(y)
    road = np.array(BACKGROUNDS["road"], dtype=np.float64) + 6.0 * np.sin(0.9 * x + 0.5 * y)[:, None]
    sidewalk = np.array(BACKGROUNDS["sand"], dtype=np.float64) + 6.0 * np.sin(0.6 * x)[:, None]
    grass = np.array(BACKGROUNDS["grass"], dtype=np.float64) + 10.0 * (np.sin(0.5 * x) * np.sin(0.4 * y))[:, None]
    to_sidewalk = np.clip((ay - ROAD_HALF_WIDTH) / 0.6 + 0.5, 0, 1)[:, None]
    to_grass = np.clip((ay - ROAD_HALF_WIDTH - SIDEWALK_WIDTH) / 0.6 + 0.5, 0, 1)[:, None]
    colour = road * (1 - to_sidewalk) + sidewalk * to_sidewalk
    colour = colour * (1 - to_grass) + grass * to_grass
    dash = (np.clip(2.0 - np.abs(np.mod(x, 6.0) - 1.5), 0, 1) * np.clip(1.5 - ay / 0.2, 0, 1))[:, None]
    colour = colour * (1 - dash) + np.array(LANE_PAINT) * dash
    return np.clip(colour, 0, 255)


def sample_street_clip(seed: int, n_frames: int = 8, image_size: tuple[int, int] = (64, 64),
                       n_cameras: int = 6, speed: float = 1.0) -> StreetClip:
    """A random street clip: ego in the right lane moving along +x; traffic in both lanes, parked
    cars and pedestrians on the sidewalks. Objects move with constant velocity."""
    if not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames: expected an integer ≥ 1, got {n_frames!r}")
    rng = np.random.default_rng(seed)
    rig = make_rig(image_size, n_cameras)
    colours = [c for c in COLOURS if c not in ("orange",)]  # orange is the pedestrian layout colour
    actors = []  # (class, colour, start xyz, yaw, velocity xy)
    def add(cls, x, y, yaw, v):
        l, w, h = CLASS_SIZES[cls]
        actors.append((cls, str(rng.choice(colours)), np.array([x, y, h / 2]), yaw, np.asarray(v, dtype=float)))
    lane_x = [-20.0]
    for _ in range(int(rng.integers(2, 4))):  # ego lane (y = -2), keep clear of the ego's path
        x = lane_x[-1] + rng.uniform(8, 12)
        if abs(x) < 7:
            x += 14
        lane_x.append(x)
        add("truck" if rng.random() < 0.2 else "car", x, -2.0, 0.0, (speed * rng.uniform(0.6, 1.2), 0))
    for _ in range(int(rng.integers(1, 4))):  # oncoming lane (y = +2)
        add("truck" if rng.random() < 0.2 else "car", rng.uniform(-12, 20), 2.0, np.pi, (-speed * rng.uniform(0.5, 1.2), 0))
    for _ in range(int(rng.integers(1, 4))):  # parked, along the kerb
        side = rng.choice([-1, 1])
        add("car", rng.uniform(-10, 15), side * (ROAD_HALF_WIDTH + 0.9), 0.0, (0, 0))
    for _ in range(int(rng.integers(1, 5))):  # pedestrians on the sidewalks
        side = rng.choice([-1, 1])
        add("pedestrian", rng.uniform(-6, 12), side * (ROAD_HALF_WIDTH + SIDEWALK_WIDTH / 2),
            rng.choice([0.0, np.pi]), (rng.uniform(-0.15, 0.15), 0))
    frames = []
    for f in range(n_frames):
        ego = np.eye(4)
        ego[:3, 3] = (speed * f, -2.0, 0.0)
        boxes = tuple(StreetBox(i, cls, colour, CLASS_SIZES[cls], float(yaw),
                                tuple(float(v) for v in pos + np.array([*vel, 0.0]) * f))
                      for i, (cls, colour, pos, yaw, vel) in enumerate(actors))
        frames.append(StreetFrame(ego, boxes))
    return StreetClip(rig, tuple(frames), image_size)


def render_street_frame(clip: StreetClip, frame: int, cameras: list[int] | None = None) -> list[RenderedView]:
    """Per-camera RGB, depth, instance ids and layout map of one frame (all cameras, or those listed)."""
    if not 0 <= frame < len(clip.frames):
        raise IndexError(f"frame: {frame} does not exist; the clip has {len(clip.frames)} frames")
    prims = [b.to_primitive() for b in clip.frames[frame].boxes]
    cams = clip.cameras(frame)
    return [render_primitives(cams[k], prims, street_ground) for k in (range(len(cams)) if cameras is None else cameras)]


def render_street_clip(clip: StreetClip) -> list[list[RenderedView]]:
    """views[frame][camera]."""
    return [render_street_frame(clip, f) for f in range(len(clip.frames))]


def neighbour_overlap_deg(rig: tuple[RigCamera, ...]) -> list[float]:
    """Horizontal field-of-view overlap between each camera and the next in ring order."""
    out = []
    for a, b in zip(rig, rig[1:] + rig[:1]):
        gap = abs((a.yaw_deg - b.yaw_deg + 180) % 360 - 180)
        out.append((a.fov_deg + b.fov_deg) / 2 - gap)
    return out

