"""The multi-view tab: a sampled orbit scene of the toy world or an uploaded zipped nerfstudio folder,
one 3D edit of one object, and the method; source and edited views as a grid (source above, edited
below), a turntable of each source view beside its edit, and the edited dataset folder as a zip.

`MultiViewTab` holds the callback, a thin call into `pipelines.multiview_edit`; `build_multiview_tab`
lays the tab out. Errors become a message, never a traceback; uploads are unpacked into a scratch folder
deleted after the request, outputs into a kept folder of the app's bounded work folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import imageio.v2 as imageio
import numpy as np
import torch

from app.files import WorkFolder, unpack_dataset_zip
from app.layered import _warn, _whole, reveal_file
from app.models import ModelCache
from app.stopping import STOPPED_MESSAGE, StopFlags, Stopped
from pipelines.multiview_edit import MultiViewEditPipeline, write_views
from pipelines.multiview_edit.cli import METHODS, grid_png, prepare
from qnerf import FitSettings

MAX_DATASET_BYTES = 64 << 20
MAX_PROMPT = 300  # characters
# blend first (the default): guidance lost edited objects on a report seed (benchmarks/RESULTS.md,
# "Nineteenth session") and neither moves the views' agreement on the embedded model
METHOD_LABELS = {"QNeRF blend (faster)": "blend", "QNeRF guidance (the paper)": "guidance",
                 "independent views (no QNeRF)": "independent"}


class MultiViewTab:
    def __init__(self, models: ModelCache, work: WorkFolder):
        self.models, self.work = models, work
        self.stops = StopFlags()

    def stop(self, request: gr.Request):
        """Stop: the page's running edit ends at its next denoising step."""
        self.stops.stop(getattr(request, "session_hash", None))
        return "Stopping…"

    def generate(self, model_name, seed, dataset_zip, object_index, move_x, move_y, scale, colour, method, steps,
                 fit_seconds, prompt="", progress=gr.Progress(), request: gr.Request = None):
        """(grid PNG path, turntable mp4 path, zip of the edited dataset, message). prompt: the scene after the
        edit (empty: an orbit scene's own caption; an uploaded folder with control maps needs one)."""
        folder = None
        page = getattr(request, "session_hash", None)
        self.stops.clear(page)
        try:
            steps = _whole(steps, "steps", 1, 50)
            edit = {"object": _whole(object_index, "object", 0, 63)}
            for name, value in (("move x", move_x), ("move y", move_y)):
                if not isinstance(value, (int, float)) or not -5 <= value <= 5:
                    raise ValueError(f"{name}: expected metres in -5..5, got {value!r}")
            if move_x or move_y:
                edit["move"] = [float(move_x), float(move_y)]
            if not isinstance(scale, (int, float)) or not 0.25 <= scale <= 4:
                raise ValueError(f"scale: expected a factor in 0.25..4, got {scale!r}")
            if scale != 1:
                edit["scale"] = float(scale)
            if colour:
                edit["colour"] = str(colour)
            if len(edit) == 1:
                raise ValueError("edit: choose a move, a scale other than 1 or a colour")
            if not isinstance(prompt or "", str) or len(prompt or "") > MAX_PROMPT:
                raise ValueError(f"prompt: expected text of at most {MAX_PROMPT} characters")
            if prompt and prompt.strip():
                edit["prompt"] = prompt.strip()
            if method not in METHOD_LABELS:
                raise ValueError(f"method: expected one of {list(METHOD_LABELS)}, got {method!r}")
            if not isinstance(fit_seconds, (int, float)) or not 1 <= fit_seconds <= 30:
                raise ValueError(f"fit seconds: expected 1..30, got {fit_seconds!r}")
            with self.work.scratch() as scratch:
                inputs, extra = self._inputs(seed, dataset_zip, edit, scratch)
            pipe = self.models.get(model_name, MultiViewEditPipeline)
            total = steps

            def step_done(pipe_, i, t, tensors):
                self.stops.check(page)
                if progress is not None:
                    progress((i + 1) / total, desc=f"step {i + 1}/{total}")
                return tensors

            def fitted(step, result, rendered):
                if progress is not None:
                    progress(step / total, desc=f"QNeRF fitted at step {step} ({result.seconds:.1f} s)")
            with self.models.generation:
                out = pipe(**inputs, num_inference_steps=steps, fit_settings=FitSettings(max_seconds=float(fit_seconds)),
                           generator=torch.Generator().manual_seed(int(seed or 0)), callback_on_step_end=step_done,
                           interval_callback=fitted, **METHODS[METHOD_LABELS[method]])
            folder = self.work.keep()
            grid = grid_png(inputs["images"], out.images)
            dataset = write_views(folder / "edited-views", out.images, inputs["cameras"], extra=extra,
                                  files={"grid.png": grid})
            turntable = folder / "turntable.mp4"
            with imageio.get_writer(turntable, fps=6, codec="libx264", macro_block_size=1,
                                    ffmpeg_log_level="error") as writer:
                for _ in range(3):
                    for source, edited in zip(inputs["images"], out.images):
                        pair = np.concatenate([source, edited], 1)  # source left, edited right
                        writer.append_data(np.repeat(np.repeat(pair, 4, 0), 4, 1) if pair.shape[0] <= 128 else pair)
            archive = shutil.make_archive(str(folder / "edited-views"), "zip", dataset)
            fits = ", ".join(f"{f['seconds']:.1f} s" for f in out.fits)
            return (str(dataset / "grid.png"), str(turntable), archive,
                    f"{len(out.images)} views edited ({out.seconds['generation'] + out.seconds['fitting']:.0f} s"
                    + (f"; QNeRF fits {fits}" if fits else "") + "). Top row: the source views; bottom: edited. "
                    "The zip is a nerfstudio dataset folder.")
        except Exception as err:
            if folder is not None:
                self.work.forget(folder)
            return None, None, None, STOPPED_MESSAGE if isinstance(err, Stopped) else _warn(err)
        finally:
            self.stops.clear(page)

    def _inputs(self, seed, dataset_zip, edit: dict, scratch: Path) -> tuple[dict, dict]:
        edit_file = scratch / "edit.json"
        edit_file.write_text(json.dumps(edit))
        if dataset_zip:
            folder = unpack_dataset_zip(dataset_zip, scratch / "dataset", MAX_DATASET_BYTES)
            controls = folder / "controls" if (folder / "controls").is_dir() else None
            args = SimpleNamespace(edit=edit_file, scene_seed=None, dataset=folder, controls=controls, prompt=None,
                                   source_prompt=None, views=8)
        else:
            args = SimpleNamespace(edit=edit_file, scene_seed=_whole(seed, "seed", 0, 2**31 - 1), dataset=None,
                                   controls=None, prompt=None, source_prompt=None, views=8)
        return prepare(args, channels=4)


def build_multiview_tab(tab: MultiViewTab, model_name: gr.Dropdown) -> None:
    """The tab's components and events, inside the caller's `gr.Tab`."""
    from world.vocab import COLOURS

    message = gr.Markdown("Pick an orbit scene (or upload a dataset), describe the 3D edit, and Edit every view.",
                          elem_id="mv-message", elem_classes=["status"], min_height=48)
    with gr.Row():
        with gr.Column():
            seed = gr.Number(value=0, precision=0, label="Orbit scene (a seed of the toy world)")
            dataset = gr.File(label="…or upload a zipped nerfstudio folder (made by Strata, or with a controls/ "
                                    "folder of control maps)", file_types=[".zip"], type="filepath")
            object_index = gr.Number(value=0, precision=0, label="Object to edit (its index in the scene)")
            with gr.Row():
                move_x = gr.Number(value=0.6, label="Move x (m)")
                move_y = gr.Number(value=0.0, label="Move y (m)")
            scale = gr.Slider(0.25, 4, value=1.0, step=0.05, label="Scale")
            colour = gr.Dropdown([""] + list(COLOURS), value="", label="New colour (empty: keep)")
            prompt = gr.Textbox(label="The scene after the edit (empty: the orbit scene's caption; an uploaded "
                                      "folder with control maps needs it)", max_lines=1, max_length=MAX_PROMPT)
            method = gr.Radio(list(METHOD_LABELS), value=next(iter(METHOD_LABELS)), label="Method")
            with gr.Accordion("Advanced", open=False):
                steps = gr.Slider(1, 50, value=20, step=1, label="Steps")
                fit_seconds = gr.Slider(1, 30, value=4, step=1, label="Seconds per QNeRF fit")
            with gr.Row():
                go = gr.Button("Edit every view", variant="primary", elem_id="mv-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="mv-stop", min_width=60)
        with gr.Column(scale=2):
            grid = gr.Image(label="Source views (top) and edited views (bottom)", type="filepath", elem_id="mv-grid")
            turntable = gr.Video(label="Turntable: each source view (left) beside its edit (right)",
                                 elem_id="mv-turntable")
            files = gr.File(label="The edited views as a nerfstudio dataset folder", interactive=False, visible=False)
    reveal_file(go.click(tab.generate, [model_name, seed, dataset, object_index, move_x, move_y, scale, colour, method,
                                        steps, fit_seconds, prompt], [grid, turntable, files, message],
                         api_name="edit_multiview", show_progress_on=[message]), files)
    stop.click(tab.stop, None, message, api_name=False, concurrency_limit=None, show_progress="hidden")
