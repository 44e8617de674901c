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
from app.layered import _warn, _whole, reveal_file
from app.models import ModelCache
from app.stopping import STOPPED_MESSAGE, StopFlags, Stopped
from formats.layout import StreetClip
from pipelines.driving_video import DrivingVideoPipeline, write_video

logger = logging.getLogger(__name__)
MAX_APP_FRAMES = 16  # a request of the shared app stays in minutes on a CPU
MAX_APP_SIDE = 256


class DrivingTab:
    def __init__(self, models: ModelCache, work: WorkFolder):
        self.models, self.work = models, work
        self.stops = StopFlags()

    def stop(self, request: gr.Request):
        """Stop: the page's running generation ends after its current frame."""
        self.stops.stop(getattr(request, "session_hash", None))
        return "Stopping after this frame…"

    def generate(self, model_name, seed, layout_file, frames, prompt, car, truck, pedestrian, steps,
                 progress=gr.Progress(), request: gr.Request = None):
        """(mosaic mp4, zip of the outputs, message)."""
        folder = None
        page = getattr(request, "session_hash", None)
        self.stops.clear(page)
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
                self.stops.check(page)
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
            return None, None, STOPPED_MESSAGE if isinstance(err, Stopped) else _warn(err)
        finally:
            self.stops.clear(page)

    def _layout(self, seed, layout_file) -> StreetClip:
        if layout_file:
            return StreetClip.load(Path(layout_file))
        from world.street import sample_street_clip  # the app's example scenes
        return sample_street_clip(_whole(seed, "seed", 0, 2**31 - 1), n_frames=MAX_APP_FRAMES)


def build_driving_tab(tab: DrivingTab, model_name: gr.Dropdown) -> None:
    """The tab's components and events, inside the caller's `gr.Tab`: the status line at the top (progress
    and messages, as in the layered tab), the inputs, the outputs; the zip's box shows once it holds one."""
    message = gr.Markdown("Pick a street clip (or upload a layout) and Generate.", elem_id="drive-message",
                          elem_classes=["status"], min_height=48)
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
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="drive-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="drive-stop", min_width=60)
        with gr.Column(scale=2):
            video = gr.Video(label="Surround view (front-left, front, front-right / back-left, back, back-right)",
                             elem_id="drive-video")
            files = gr.File(label="Every camera's mp4 and frames", interactive=False, visible=False)
    reveal_file(go.click(tab.generate, [model_name, seed, layout, frames, prompt, car, truck, pedestrian, steps],
                         [video, files, message], api_name="generate_driving_video", show_progress_on=[message]),
                files)
    stop.click(tab.stop, None, message, api_name=False, concurrency_limit=None, show_progress="hidden")
