"""The street world: a road with box cars, trucks and pedestrians, a 6-camera rig, ego motion.

Clips are `formats.layout.StreetClip`s (the product's layout JSON, documented there); this module
samples and renders them. Frames: world x along the road, y to the left, z up. Cameras use OpenCV
axes. The rig follows nuScenes' yaw order (front, front-right, back-right, back, back-left,
front-left); neighbouring fields of view overlap by 8–9°.
"""

from __future__ import annotations

import numpy as np

from formats.layout import RigCamera, StreetBox, StreetClip, StreetFrame
from world.geometry import Primitive, RenderedView, render_primitives
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


def box_primitive(box: StreetBox) -> Primitive:
    """A layout box as the renderer's solid: its colour word from the palette (unset: its class's
    layout colour), its silhouette in its class's layout colour."""
    colour = check_word("colour", box.colour or STREET_CLASSES[box.cls], COLOURS)
    half = tuple(s / 2 for s in box.size)
    return Primitive("box", tuple(box.position), half, box.yaw, COLOURS[colour], COLOURS[STREET_CLASSES[box.cls]])


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
    prims = [box_primitive(b) for b in clip.frames[frame].boxes]
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

