"""The driving-video tab: a sampled street clip of the toy world or an uploaded layout JSON, frames and
prompts in; the surround mosaic video to watch, and a zip of every camera's mp4 and frames out.

`DrivingTab` holds the callbacks, each a thin call into `pipelines.driving_video`; `build_driving_tab`
lays the tab out. Errors become a message, never a traceback; what a request writes is a scratch or
kept folder of the app's bounded work folder.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import gradio as gr
import torch

from app.files import WorkFolder
from app.layered import _warn
from app.models import ModelCache
from formats.layout import StreetClip
from pipelines.driving_video import DrivingVideoPipeline, write_video

logger = logging.getLogger(__name__)
MAX_APP_FRAMES = 16  # a request of the shared app stays in minutes on a CPU
MAX_APP_SIDE = 256


class DrivingTab:
    def __init__(self, models: ModelCache, work: WorkFolder):
        self.models, self.work = models, work

    def generate(self, model_name, seed, layout_file, frames, prompt, car, truck, pedestrian, steps,
                 progress=gr.Progress()):
        """(mosaic mp4, zip of the outputs, message)."""
        folder = None
        try:
            clip = self._layout(seed, layout_file)
            frames = _whole(frames, "frames", 1, min(MAX_APP_FRAMES, len(clip.frames)))
            steps = _whole(steps, "steps", 1, 50)
            if max(clip.image_size) > MAX_APP_SIDE:
                raise ValueError(f"layout.image_size: this app renders at most {MAX_APP_SIDE} px per side, got "
                                 f"{clip.image_size}")
            local = {cls: text.strip() for cls, text in (("car", car), ("truck", truck), ("pedestrian", pedestrian))
                     if isinstance(text, str) and text.strip()}
            pipe = self.models.get(model_name, DrivingVideoPipeline)

            def done(frame, images):
                if progress is not None:
                    progress((frame + 1) / frames, desc=f"frame {frame + 1}/{frames}")
            with self.models.generation:
                result = pipe(clip, prompt or "a street view", local or None, num_frames=frames,
                              num_inference_steps=steps, generator=torch.Generator().manual_seed(int(seed or 0)),
                              frame_callback=done)
            folder = self.work.keep()
            video = write_video(result.frames, result.camera_names, clip, folder / "driving-video")
            archive = shutil.make_archive(str(folder / "driving-video"), "zip", video)
            return str(video / "surround.mp4"), archive, (f"{frames} frames × {len(clip.rig)} cameras. The zip has "
                                                          f"every camera's mp4, its frames as PNG and the layout.")
        except Exception as err:
            if folder is not None:
                self.work.forget(folder)
            return None, None, _warn(err)

    def _layout(self, seed, layout_file) -> StreetClip:
        if layout_file:
            return StreetClip.load(Path(layout_file))
        from world.street import sample_street_clip  # the app's example scenes
        return sample_street_clip(_whole(seed, "seed", 0, 2**31 - 1), n_frames=MAX_APP_FRAMES)


def _whole(value, name: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: expected a whole number in {low}..{high}, got {value!r}")
    return value


def build_driving_tab(tab: DrivingTab, model_name: gr.Dropdown) -> None:
    """The tab's components and events, inside the caller's `gr.Tab`."""
    with gr.Row():
        with gr.Column():
            seed = gr.Number(value=0, precision=0, label="Street clip (a seed of the toy world)")
            layout = gr.File(label="…or upload a layout JSON", file_types=[".json"], type="filepath")
            frames = gr.Slider(1, MAX_APP_FRAMES, value=4, step=1, label="Frames")
            steps = gr.Slider(1, 50, value=10, step=1, label="Steps")
            prompt = gr.Textbox(value="a street view", label="Scene prompt")
            with gr.Accordion("Local prompts (each box class gets its own)", open=False):
                car = gr.Textbox(value="a car", label="car")
                truck = gr.Textbox(value="a truck", label="truck")
                pedestrian = gr.Textbox(value="a pedestrian", label="pedestrian")
            go = gr.Button("Generate", variant="primary", elem_id="drive-generate")
        with gr.Column(scale=2):
            video = gr.Video(label="Surround view (front-left, front, front-right / back-left, back, back-right)",
                             elem_id="drive-video")
            files = gr.File(label="Every camera's mp4 and frames", interactive=False)
            message = gr.Markdown(elem_id="drive-message")
    go.click(tab.generate, [model_name, seed, layout, frames, prompt, car, truck, pedestrian, steps],
             [video, files, message], api_name="generate_driving_video", show_progress_on=[video])
