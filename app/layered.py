"""The layered-editing tab: start a scene, draw rough masks, add / remove / re-edit layers.

`LayeredTab` holds the session store; its methods are the callbacks, each a thin call into
`pipelines.layered_edit.LayeredSession`. Errors become a message in the UI, never a traceback, and
leave the session as it was. `build_layered_tab` lays the tab out and wires the callbacks.
"""

from __future__ import annotations

import shutil
import uuid
import warnings
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from app.masks import rough_mask, upscale
from app.models import ModelCache
from app.sessions import SessionStore
from pipelines.layered_edit import EditSettings, LayeredEditPipeline, LayeredSession, MaskResizedWarning, SessionError
from pipelines.loading import ModelLoadError

DISPLAY = 4  # the editor shows the scene this many times larger
# the app's words for EditSettings.replay
REPLAY_CHOICES = {"keep their objects (from memory, fast)": "memory", "re-draw them from their seeds": "seed"}
USER_ERRORS = (ValueError, IndexError, SessionError, ModelLoadError, OSError, zipfile.BadZipFile)


class LayeredTab:
    def __init__(self, models: ModelCache, workdir: Path, store: SessionStore | None = None,
                 settings: EditSettings | None = None):
        self.models = models
        self.workdir = workdir
        self.store = store or SessionStore()
        # every session of the app edits at one size: the default model's unless the settings say
        self.settings = (settings or EditSettings()).sized_for(self.model(None))

    def model(self, name: str | None) -> LayeredEditPipeline:
        return self.models.get(name, LayeredEditPipeline)

    # -- rendering the session into the UI

    def _view(self, session: LayeredSession | None, message: str = ""):
        if session is None or not session.layers:
            return None, None, [], message
        image = session.composite
        gallery = [(upscale(im, 2), f"{i}: {layer.prompt}") for i, (im, layer) in enumerate(zip(session.layer_images(), session.layers))]
        editor = {"background": upscale(image, DISPLAY), "layers": [], "composite": None}
        return editor, image, gallery, message

    def _session(self, key: str | None) -> LayeredSession:
        session = self.store.get(key)
        if session is None:
            raise ValueError("session: no scene yet (or it expired); start one from a prompt or an image")
        return session

    def _run(self, key, model_name, work, progress=None):
        """Run work(pipe, callback) under the generation lock; store the session it returns; view it."""
        notes = []
        try:
            pipe = self.model(model_name)
            callback = (lambda i, n: progress(i / n, desc=f"denoising {i}/{n}")) if progress is not None else None
            with self.models.generation, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                session = work(pipe, callback)
            notes = [str(w.message) for w in caught if issubclass(w.category, MaskResizedWarning)]
            self.store.put(key, session)
        except USER_ERRORS as err:  # the message only: the strokes and the scene stay as they were
            gr.Warning(str(err))
            return gr.skip(), gr.skip(), gr.skip(), f"⚠️ {err}"
        return self._view(session, " ".join(notes))

    # -- callbacks

    def start_from_prompt(self, key, model_name, prompt, seed, progress=gr.Progress()):
        def work(pipe, callback):
            session = LayeredSession(pipe, self.settings)
            session.start_from_prompt(prompt, int(seed), callback=callback)
            return session
        return self._run(key, model_name, work, progress)

    def start_from_image(self, key, model_name, image, method, progress=gr.Progress()):
        def work(pipe, callback):
            if image is None:
                raise ValueError("image: upload a picture first")
            session = LayeredSession(pipe, self.settings)
            picture = Image.fromarray(np.asarray(image)).convert("RGB")
            session.start_from_image(picture, "", "inversion" if method.startswith("DDIM") else "noise")
            return session
        return self._run(key, model_name, work, progress)

    def add_layer(self, key, model_name, editor, prompt, seed, use_box, progress=gr.Progress()):
        def work(pipe, callback):
            session = self._copy(key)
            mask = rough_mask(editor, self.settings.height, self.settings.width, use_box)
            session.add_layer(prompt, mask, int(seed), callback=callback)
            return session
        return self._run(key, model_name, work, progress)

    def remove_layer(self, key, model_name, index, replay=None, progress=gr.Progress()):
        def work(pipe, callback):
            session = self._copy(key, replay)
            session.remove_layer(_index(index))
            return session
        return self._run(key, model_name, work, progress)

    def edit_layer(self, key, model_name, index, editor, prompt, use_box, replay=None,
                   progress=gr.Progress()):
        def work(pipe, callback):
            session = self._copy(key, replay)
            try:
                mask = rough_mask(editor, self.settings.height, self.settings.width, use_box)
            except ValueError:
                mask = None  # nothing drawn: keep the layer's mask
            session.edit_layer(_index(index), prompt=prompt or None, mask=mask)
            return session
        return self._run(key, model_name, work, progress)

    def undo(self, key, model_name):
        return self._run(key, model_name, lambda pipe, cb: _apply(self._copy(key), "undo"))

    def redo(self, key, model_name):
        return self._run(key, model_name, lambda pipe, cb: _apply(self._copy(key), "redo"))

    def _copy(self, key, replay: str | None = None) -> LayeredSession:
        """A fork, so a failing edit leaves the stored session untouched; replay: one of
        REPLAY_CHOICES, how later layers that see a removal or re-edit are brought up to date."""
        session = self._session(key)
        if replay is None:
            return session.fork()
        if replay not in REPLAY_CHOICES:
            raise ValueError(f"replay: expected one of {list(REPLAY_CHOICES)}, got {replay!r}")
        return session.fork(replay=REPLAY_CHOICES[replay])

    def _file_from_session(self, key, write):
        """(file, status) from write(session, folder), or (None, warning) when there is no session."""
        try:
            session = self._session(key)
        except USER_ERRORS as err:
            gr.Warning(str(err))
            return None, f"⚠️ {err}"
        return write(session, self.workdir / uuid.uuid4().hex)

    def download_session(self, key):
        def write(session, folder):
            session.save(folder / "session")
            archive = shutil.make_archive(str(folder / "strata-session"), "zip", folder / "session")
            return archive, "Session saved: upload this zip later to resume."
        return self._file_from_session(key, write)

    def upload_session(self, key, model_name, file):
        def work(pipe, callback):
            if file is None:
                raise ValueError("session: choose a session zip to upload")
            folder = self.workdir / uuid.uuid4().hex
            with zipfile.ZipFile(file) as archive:
                for name in archive.namelist():
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise SessionError(f"session zip: unsafe path {name!r}")
                archive.extractall(folder)
            return LayeredSession.load(pipe, folder)
        return self._run(key, model_name, work)

    def export_png(self, key):
        def write(session, folder):
            folder = folder / "strata-export"
            folder.mkdir(parents=True)
            Image.fromarray(session.composite).save(folder / "composite.png")
            for i, image in enumerate(session.layer_images()):
                Image.fromarray(image).save(folder / f"layer_{i:02d}.png")
            return shutil.make_archive(str(folder), "zip", folder), "Exported the composite and every layer as PNG."
        return self._file_from_session(key, write)


def _index(value) -> int:
    if value is None or value == "":
        raise ValueError("layer: select a layer in the list first")
    return int(value)


def _apply(session: LayeredSession, action: str) -> LayeredSession:
    getattr(session, action)()
    return session


def build_layered_tab(tab: LayeredTab, model_name: gr.Textbox) -> None:
    """The tab's components and events, inside the caller's `gr.Tab`. model_name: the app's model field."""
    store = tab.store
    # A plain function, not a bound method: Gradio keeps the callback in the Blocks config and
    # deep-copies that config on every page load, and a bound method would copy the store with it.
    key = gr.State(lambda: uuid.uuid4().hex, time_to_live=store.idle_seconds, delete_callback=lambda k: store.drop(k))
    with gr.Row():
        with gr.Column():
            scene_prompt = gr.Textbox(value="an empty scene of grass", label="Scene prompt")
            scene_seed = gr.Number(value=0, precision=0, label="Scene seed")
            start = gr.Button("Start from prompt", variant="primary", elem_id="start-prompt")
            upload = gr.Image(label="…or start from your own image", type="numpy", sources=["upload"])
            method = gr.Radio(["DDIM inversion", "forward noising (fast)"], value="DDIM inversion", label="Image to layer 0")
            start_image = gr.Button("Start from image")
        with gr.Column(scale=2):
            editor = gr.ImageEditor(label="Paint a rough mask", type="numpy", image_mode="RGBA", sources=[],
                                    transforms=[], layers=False, elem_id="mask-editor",
                                    brush=gr.Brush(default_size=24, colors=["#ff00ff"], color_mode="fixed"),
                                    canvas_size=(tab.settings.width * DISPLAY, tab.settings.height * DISPLAY),
                                    format="png")
            with gr.Row():
                layer_prompt = gr.Textbox(value="a red circle", label="Layer prompt", scale=3)
                layer_seed = gr.Number(value=1, precision=0, label="Seed", scale=1)
                use_box = gr.Checkbox(value=False, label="Use the strokes' bounding box", scale=1)
            with gr.Row():
                add = gr.Button("Add layer", variant="primary", elem_id="add-layer")
                undo = gr.Button("Undo", elem_id="undo")
                redo = gr.Button("Redo", elem_id="redo")
        with gr.Column():
            composite = gr.Image(label="Composite", type="numpy", interactive=False, elem_id="composite",
                                 format="png", height=280)  # lossless: what you see is the session's pixels
            layers = gr.Gallery(label="Layers (select one to remove or re-edit)", columns=3, height=260,
                                elem_id="layers", format="png")
            selected = gr.Number(value=None, precision=0, label="Selected layer", interactive=False)
            with gr.Row():
                remove = gr.Button("Remove layer", elem_id="remove-layer")
                reedit = gr.Button("Re-edit layer (prompt and/or new mask)")
            replay = gr.Radio(list(REPLAY_CHOICES), value=next(iter(REPLAY_CHOICES)),
                              label="Later layers whose mask sees the change")
    message = gr.Markdown(elem_id="message")
    with gr.Row():
        save = gr.Button("Download session")
        export = gr.Button("Export PNGs")
        files = gr.File(label="Files", interactive=False)
        resume = gr.File(label="Upload a session zip to resume", file_types=[".zip"], type="filepath")

    view = [editor, composite, layers, message]
    start.click(tab.start_from_prompt, [key, model_name, scene_prompt, scene_seed], view, api_name="start_from_prompt")
    start_image.click(tab.start_from_image, [key, model_name, upload, method], view, api_name="start_from_image")
    add.click(tab.add_layer, [key, model_name, editor, layer_prompt, layer_seed, use_box], view, api_name="add_layer")
    remove.click(tab.remove_layer, [key, model_name, selected, replay], view, api_name="remove_layer")
    reedit.click(tab.edit_layer, [key, model_name, selected, editor, layer_prompt, use_box, replay], view,
                 api_name="edit_layer")
    undo.click(tab.undo, [key, model_name], view, api_name="undo")
    redo.click(tab.redo, [key, model_name], view, api_name="redo")
    layers.select(_selected_index, None, selected, api_name=False)
    save.click(tab.download_session, key, [files, message], api_name="download_session")
    export.click(tab.export_png, key, [files, message], api_name="export_png")
    resume.upload(tab.upload_session, [key, model_name, resume], view, api_name="upload_session")

def _selected_index(evt: gr.SelectData):
    return evt.index
