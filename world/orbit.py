"""The orbit world: primitives on a ground plane, seen by N cameras on an orbit.

Gives per-view RGB, z-depth, instance masks and layout maps, writes a nerfstudio dataset folder
(`transforms.json`, OpenGL camera axes) and supports geometric edits (move, scale, recolour one
object) whose re-render gives the new per-view control maps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from formats.cameras import Camera, write_transforms
from world.flat import caption_for
from world.geometry import Primitive, RenderedView, look_at, render_primitives
from world.vocab import BACKGROUNDS, COLOURS, ORBIT_PRIMITIVES, check_word, object_phrase


@dataclass(frozen=True)
class OrbitObject:
    primitive: str  # sphere | box | cylinder
    colour: str
    position: tuple[float, float]  # (x, y) on the ground, metres
    scale: float  # radius (sphere, cylinder) or half side (box), metres
    yaw: float = 0.0  # radians, boxes only

    def __post_init__(self):
        check_word("primitive", self.primitive, ORBIT_PRIMITIVES)
        check_word("colour", self.colour, COLOURS)
        if not self.scale > 0:
            raise ValueError(f"scale: must be positive (metres), got {self.scale!r}")

    def to_primitive(self) -> Primitive:
        s = float(self.scale)
        x, y = self.position
        colour = COLOURS[self.colour]
        if self.primitive == "sphere":
            return Primitive("sphere", (x, y, s), (s, s, s), 0.0, colour, colour)
        if self.primitive == "box":
            return Primitive("box", (x, y, s), (s, s, s), self.yaw, colour, colour)
        return Primitive("cylinder", (x, y, 1.2 * s), (s, s, 1.2 * s), 0.0, colour, colour)

    @property
    def prompt(self) -> str:
        return object_phrase(self.colour, self.primitive)


@dataclass(frozen=True)
class OrbitSpec:
    objects: tuple[OrbitObject, ...]
    n_cameras: int = 8
    orbit_radius: float = 6.0
    elevation_deg: float = 30.0
    fov_deg: float = 50.0
    resolution: int = 64
    ground: str = "grass"

    def __post_init__(self):
        if not isinstance(self.n_cameras, int) or self.n_cameras < 1:
            raise ValueError(f"n_cameras: expected an integer ≥ 1, got {self.n_cameras!r}")
        if not self.orbit_radius > 0:
            raise ValueError(f"orbit_radius: must be positive, got {self.orbit_radius!r}")
        if not 0 < self.elevation_deg < 90:
            raise ValueError(f"elevation_deg: expected (0, 90), got {self.elevation_deg!r}")
        if not isinstance(self.resolution, int) or self.resolution < 8:
            raise ValueError(f"resolution: expected an integer ≥ 8, got {self.resolution!r}")
        check_word("ground", self.ground, BACKGROUNDS)

    @property
    def caption(self) -> str:
        return caption_for(self.ground, [o.prompt for o in self.objects])

    def cameras(self) -> list[Camera]:
        elevation = np.radians(self.elevation_deg)
        cams = []
        for k in range(self.n_cameras):
            azimuth = 2 * np.pi * k / self.n_cameras
            eye = self.orbit_radius * np.array([np.cos(azimuth) * np.cos(elevation),
                                                np.sin(azimuth) * np.cos(elevation), np.sin(elevation)])
            cams.append(Camera.from_fov(look_at(eye, (0.0, 0.0, 0.5)), self.fov_deg, self.resolution, self.resolution))
        return cams


def ground_texture(ground: str):
    """A smooth world-space texture: the same ground point has the same colour from every view."""
    base = np.array(BACKGROUNDS[ground], dtype=np.float64)

    def colour(points: np.ndarray) -> np.ndarray:
        x, y = points[:, 0], points[:, 1]
        pattern = np.sin(1.3 * x) * np.sin(1.1 * y) + 0.5 * np.sin(0.7 * x + 0.4 * y)
        return np.clip(base + 14.0 * pattern[:, None], 0, 255)

    return colour


def render_orbit(spec: OrbitSpec, views: list[int] | None = None) -> list[RenderedView]:
    """Render every camera of the orbit, or only those listed in views."""
    prims = [o.to_primitive() for o in spec.objects]
    texture = ground_texture(spec.ground)
    cams = spec.cameras()
    return [render_primitives(cams[k], prims, texture) for k in (range(len(cams)) if views is None else views)]


def sample_orbit_spec(seed: int, n_objects: int | tuple[int, int] = (2, 4), **camera_options) -> OrbitSpec:
    """A few primitives with distinct colours, spread on the ground without touching."""
    rng = np.random.default_rng(seed)
    lo, hi = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    if lo < 1 or hi < lo or hi > len(COLOURS):
        raise ValueError(f"n_objects: expected 1 ≤ lo ≤ hi ≤ {len(COLOURS)}, got {n_objects!r}")
    n = int(rng.integers(lo, hi + 1))
    colours = rng.permutation(list(COLOURS))[:n]
    objects: list[OrbitObject] = []
    for i in range(n):
        for _ in range(500):
            scale = float(rng.uniform(0.4, 0.7))
            pos = rng.uniform(-1.8, 1.8, size=2)
            if all(np.hypot(*(pos - o.position)) > scale + o.scale + 0.3 for o in objects):
                break
        else:
            raise ValueError(f"n_objects: could not place {n} objects without touching")
        objects.append(OrbitObject(ORBIT_PRIMITIVES[rng.integers(3)], str(colours[i]),
                                   (float(pos[0]), float(pos[1])), scale, float(rng.uniform(0, np.pi / 2))))
    ground = camera_options.pop("ground", ["grass", "sand", "snow"][rng.integers(3)])
    return OrbitSpec(tuple(objects), ground=ground, **camera_options)


# ---- geometric edits: each returns a new spec; re-render it for the new control maps

def _check_index(spec: OrbitSpec, index: int) -> None:
    if not 0 <= index < len(spec.objects):
        raise IndexError(f"index: object {index} does not exist; the scene has {len(spec.objects)}")


def move_object(spec: OrbitSpec, index: int, offset: tuple[float, float]) -> OrbitSpec:
    _check_index(spec, index)
    obj = spec.objects[index]
    moved = replace(obj, position=(obj.position[0] + offset[0], obj.position[1] + offset[1]))
    return replace(spec, objects=spec.objects[:index] + (moved,) + spec.objects[index + 1:])


def scale_object(spec: OrbitSpec, index: int, factor: float) -> OrbitSpec:
    _check_index(spec, index)
    if not factor > 0:
        raise ValueError(f"factor: must be positive, got {factor!r}")
    obj = spec.objects[index]
    return replace(spec, objects=spec.objects[:index] + (replace(obj, scale=obj.scale * factor),) + spec.objects[index + 1:])


def recolour_object(spec: OrbitSpec, index: int, colour: str) -> OrbitSpec:
    _check_index(spec, index)
    check_word("colour", colour, COLOURS)
    obj = spec.objects[index]
    return replace(spec, objects=spec.objects[:index] + (replace(obj, colour=colour),) + spec.objects[index + 1:])


def example_edit(spec: OrbitSpec, kind: int) -> dict:
    """The edit the benchmark and batch jobs give a scene (the edit JSON of `pipelines.multiview_edit`):
    kind 0 moves object 0 by 0.6 m, 1 scales it by 1.4, 2 recolours it to a colour not in the scene."""
    if kind % 3 == 0:
        return {"object": 0, "move": [0.6, 0.0]}
    if kind % 3 == 1:
        return {"object": 0, "scale": 1.4}
    used = {o.colour for o in spec.objects}
    return {"object": 0, "colour": next(c for c in COLOURS if c not in used)}


def control_map(view: RenderedView, max_depth: float = 12.0) -> np.ndarray:
    """A (H, W, 4) float control image in [0, 1]: layout colours, then inverse-ish depth (near = 1)."""
    depth = np.where(np.isfinite(view.depth), np.clip(1 - view.depth / max_depth, 0, 1), 0.0)
    return np.concatenate([view.layout / 255.0, depth[..., None]], -1).astype(np.float32)


def spec_to_dict(spec: OrbitSpec) -> dict:
    """The spec as JSON values (stored in the dataset's transforms.json, so an edit can re-render it)."""
    return {"objects": [{"primitive": o.primitive, "colour": o.colour, "position": list(o.position), "scale": o.scale,
                         "yaw": o.yaw} for o in spec.objects],
            "n_cameras": spec.n_cameras, "orbit_radius": spec.orbit_radius, "elevation_deg": spec.elevation_deg,
            "fov_deg": spec.fov_deg, "resolution": spec.resolution, "ground": spec.ground}


def spec_from_dict(data) -> OrbitSpec:
    """The inverse of spec_to_dict; a bad field is a ValueError naming it."""
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise ValueError("strata_scene.orbit: expected an object with a list of objects")
    try:
        objects = tuple(OrbitObject(str(o["primitive"]), str(o["colour"]), (float(o["position"][0]), float(o["position"][1])),
                                    float(o["scale"]), float(o.get("yaw", 0.0))) for o in data["objects"])
        extra = {k: data[k] for k in ("n_cameras", "orbit_radius", "elevation_deg", "fov_deg", "resolution", "ground")
                 if k in data}
        return OrbitSpec(objects, **extra)
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"strata_scene.orbit: malformed ({err!r})") from None


def write_nerfstudio_dataset(spec: OrbitSpec, views: list[RenderedView], folder: str | Path) -> Path:
    """Write images/, depths/ (16-bit PNG, millimetres), masks/ and transforms.json."""
    from PIL import Image

    folder = Path(folder)
    for sub in ("images", "depths", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    names = [f"frame_{k:05d}.png" for k in range(len(views))]
    for name, view in zip(names, views):
        Image.fromarray(view.rgb).save(folder / "images" / name)
        depth_mm = np.where(np.isfinite(view.depth), np.round(view.depth * 1000), 0).clip(0, 65535)
        Image.fromarray(depth_mm.astype(np.uint16)).save(folder / "depths" / name)
        Image.fromarray(((view.instance > 0) * 255).astype(np.uint8)).save(folder / "masks" / name)
    write_transforms(folder, [view.camera for view in views], [f"images/{n}" for n in names],
                     [f"depths/{n}" for n in names], [f"masks/{n}" for n in names], depth_scale=0.001,
                     extra={"strata_scene": {"caption": spec.caption, "orbit": spec_to_dict(spec)}})
    return folder
