"""Posed views in and out: a nerfstudio dataset folder (transforms.json in nerfstudio's OpenGL
convention, through `formats.cameras`) read into arrays, and edited views written back as one that
nerfstudio's own parser reads (same cameras, all or nothing). Model-free."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from formats.cameras import Camera, read_transforms, write_transforms
from pipelines.atomic import writing_folder

MAX_VIEWS = 64
MAX_PIXELS = 1024 * 1024


@dataclass
class PosedViews:
    """images (V, H, W, 3) uint8; cameras per view; depths per view (H, W) z-depth in metres or None;
    extra: transforms.json's other top-level fields (Strata's orbit scenes keep their spec there)."""

    images: np.ndarray
    cameras: list[Camera]
    depths: list[np.ndarray | None]
    extra: dict = field(default_factory=dict)


def _read_image(path: Path, where: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"{where}: {image.width}×{image.height} is larger than {MAX_PIXELS} pixels")
            return np.asarray(image.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{where}: not a readable image ({type(err).__name__})") from None


def read_views(folder: str | Path) -> PosedViews:
    """A nerfstudio dataset folder → PosedViews. Every problem is a ValueError naming the frame and field:
    no or a malformed transforms.json, frames naming missing files, views of different sizes (or not the
    size their camera says), fewer than 2 views."""
    folder = Path(folder)
    if not (folder / "transforms.json").is_file():
        raise ValueError(f"dataset: no transforms.json in the folder {folder.name!r}")
    scene = read_transforms(folder / "transforms.json")
    if not 2 <= len(scene.cameras) <= MAX_VIEWS:
        raise ValueError(f"transforms.json.frames: expected 2..{MAX_VIEWS} views, got {len(scene.cameras)}")
    images, depths = [], []
    for k, (camera, path, depth_path) in enumerate(zip(scene.cameras, scene.images, scene.depths)):
        image = _read_image(path, f"frames[{k}].file_path")
        if image.shape[:2] != (camera.height, camera.width):
            raise ValueError(f"frames[{k}].file_path: the image is {image.shape[1]}×{image.shape[0]}, its camera says "
                             f"{camera.width}×{camera.height}")
        if images and image.shape != images[0].shape:
            raise ValueError(f"frames[{k}].file_path: views of different sizes ({image.shape[1]}×{image.shape[0]} "
                             f"after {images[0].shape[1]}×{images[0].shape[0]})")
        images.append(image)
        depth = None
        if depth_path is not None:
            with Image.open(depth_path) as d:
                raw = np.asarray(d).astype(np.float64)
            if raw.shape != image.shape[:2]:
                raise ValueError(f"frames[{k}].depth_file_path: {raw.shape[1]}×{raw.shape[0]} does not match the image")
            depth = np.where(raw > 0, raw * scene.depth_scale, np.inf)
        depths.append(depth)
    return PosedViews(np.stack(images), list(scene.cameras), depths, dict(scene.extra))


def write_views(folder: str | Path, images: np.ndarray, cameras: list[Camera], extra: dict | None = None,
                files: dict[str, bytes] | None = None) -> Path:
    """Edited views → a nerfstudio dataset folder (images/, transforms.json; files: other files to put
    beside them, name → bytes), written into a temporary folder renamed into place."""
    if len(images) != len(cameras):
        raise ValueError(f"images: {len(images)} views for {len(cameras)} cameras")
    names = [f"images/frame_{k:05d}.png" for k in range(len(images))]
    with writing_folder(folder) as partial:
        (partial / "images").mkdir()
        for name, image in zip(names, images):
            Image.fromarray(image).save(partial / name)
        write_transforms(partial, cameras, names, extra=extra or {})
        for name, data in (files or {}).items():
            (partial / name).write_bytes(data)
    return Path(folder)


def read_control_maps(folder: str | Path, n_views: int, size: tuple[int, int], channels: int) -> np.ndarray:
    """Control maps for any dataset: frame_00000.png … in a folder, RGBA (layout colours, then depth in
    alpha) or RGB, one per view, of the views' size → (V, H, W, channels) floats in [0, 1]."""
    folder = Path(folder)
    maps = []
    for k in range(n_views):
        path = folder / f"frame_{k:05d}.png"
        if not path.is_file():
            raise ValueError(f"controls: {path.name} is missing (one control map per view, named like the images)")
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGBA" if channels == 4 else "RGB")).astype(np.float32) / 255
        if array.shape[:2] != size:
            raise ValueError(f"controls: {path.name} is {array.shape[1]}×{array.shape[0]}, the views are {size[1]}×{size[0]}")
        maps.append(array)
    return np.stack(maps)


def parse_edit(text: str | bytes) -> dict:
    """The edit JSON (see pipelines.multiview_edit.cli), checked field by field."""
    try:
        edit = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"edit: not JSON ({err})") from None
    if not isinstance(edit, dict):
        raise ValueError("edit: expected a JSON object")
    unknown = set(edit) - {"object", "move", "scale", "colour", "prompt"}
    if unknown:
        raise ValueError(f"edit: unknown fields {sorted(unknown)} (expected object, move, scale, colour, prompt)")
    if isinstance(edit.get("object"), bool) or not isinstance(edit.get("object"), int):
        raise ValueError(f"edit.object: expected the index of an object in the scene, got {edit.get('object')!r}")
    if not {"move", "scale", "colour"} & set(edit):
        raise ValueError("edit: expected at least one of move, scale, colour")
    move = edit.get("move")
    if move is not None and (not isinstance(move, list) or len(move) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 10 for v in move)):
        raise ValueError(f"edit.move: expected [dx, dy] in metres (|d| ≤ 10), got {move!r}")
    scale = edit.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.1 <= scale <= 10):
        raise ValueError(f"edit.scale: expected a factor in [0.1, 10], got {scale!r}")
    for key in ("colour", "prompt"):
        if key in edit and (not isinstance(edit[key], str) or not edit[key].strip()):
            raise ValueError(f"edit.{key}: expected a non-empty string")
    return edit
