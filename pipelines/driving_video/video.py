"""A generated driving video on disk, written all or nothing: one mp4 per camera, a surround mosaic mp4
in nuScenes order (front-left, front, front-right over back-left, back, back-right), every frame as
PNG in a folder per camera (CAM_FRONT/000000.png, …), and the layout JSON the video was made from."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image

from formats.layout import StreetClip
from pipelines.atomic import writing_folder

# the nuScenes mosaic: its rows, by camera name; other rigs are laid out in rig order, two rows
NUSCENES_MOSAIC = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))


def mosaic_order(names: list[str]) -> list[list[int]]:
    """Rows of camera indices for the surround mosaic."""
    if set(names) == {n for row in NUSCENES_MOSAIC for n in row}:
        return [[names.index(n) for n in row] for row in NUSCENES_MOSAIC]
    half = (len(names) + 1) // 2
    return [list(range(half)), list(range(half, len(names)))]


def mosaic(views: np.ndarray, names: list[str]) -> np.ndarray:
    """(V, H, W, 3) → one (rows·H, columns·W, 3) image; an empty slot is black."""
    rows = mosaic_order(names)
    columns = max(len(r) for r in rows)
    blank = np.zeros_like(views[0])
    return np.concatenate([np.concatenate([views[i] for i in row] + [blank] * (columns - len(row)), 1) for row in rows])


def _writer(path: Path, fps: int):
    return imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error")


def write_video(frames: np.ndarray, names: list[str], layout: StreetClip, folder: str | Path, fps: int = 4) -> Path:
    """frames (F, V, H, W, 3) uint8 → folder (see the module docstring); returns folder."""
    if frames.ndim != 5 or frames.shape[1] != len(names) or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected (F, {len(names)}, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    folder = Path(folder)
    with writing_folder(folder) as partial:
        writers = {name: _writer(partial / f"{name}.mp4", fps) for name in names}
        surround = _writer(partial / "surround.mp4", fps)
        try:
            for f, views in enumerate(frames):
                for v, name in enumerate(names):
                    (partial / name).mkdir(exist_ok=True)
                    Image.fromarray(views[v]).save(partial / name / f"{f:06d}.png")
                    writers[name].append_data(views[v])
                surround.append_data(mosaic(views, names))
        finally:
            for writer in [*writers.values(), surround]:
                writer.close()
        layout.save(partial / "layout.json")
    return folder
