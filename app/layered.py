"""The layered-editing tab: start a scene, draw rough masks, add / remove / re-edit layers.

`LayeredTab` holds the session store; its methods are the callbacks, each a thin call into
`pipelines.layered_edit.LayeredSession`. Errors become a message in the UI, never a traceback, and
leave the session as it was. `build_layered_tab` lays the tab out and wires the callbacks.
"""

from __future__ import annotations

import logging
import shutil
import uuid
import warnings

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app.files import WorkFolder, unpack_session_zip
from app.masks import rough_mask, upscale
from app.models import ModelCache
from app.sessions import SessionGone, SessionStore
from pipelines.conditioning import UnknownWordsWarning
from pipelines.layered_edit import EditSettings, LayeredEditPipeline, LayeredSession, MaskResizedWarning
from pipelines.loading import ModelLoadError

logger = logging.getLogger(__name__)

DISPLAY = 4  # the editor shows the scene this many times larger
# the app's words for EditSettings.replay
REPLAY_CHOICES = {"keep their objects (from memory, fast)": "memory", "re-draw them from their seeds": "seed"}
MAX_SEED = 2**63 - 1


class LayeredTab:
    def __init__(self, models: ModelCache, work: WorkFolder, store: SessionStore | None = None,
                 settings: EditSettings | None = None):
        self.models = models
        self.work = work
        self.store = store or SessionStore()
        # every session of the app edits at one size: the default model's unless the settings say
        self.settings = (settings or EditSettings()).sized_for(self.models.get(None, LayeredEditPipeline))

    def session_bytes(self) -> int:
        """The most a saved session of this app can hold: max_layers layers at its size and steps."""
        s = self.settings
        pipe = self.models.get(None, LayeredEditPipeline)
        latent = (s.steps + 1) * pipe.denoiser.config.in_channels * (s.height // pipe.vae_scale_factor) * \
            (s.width // pipe.vae_scale_factor) * torch.finfo(pipe.denoiser.dtype).bits // 8
        return self.store.max_layers * (latent + 6 * s.height * s.width) + (1 << 20)

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
            raise ValueError("session: no scene yet; start one from a prompt or an image")
        return session

    def _run(self, key, work, progress=None):
        """Run work(callback) under the generation lock and store the session it returns there too (so
        two edits of one session cannot both start from the same state); view it. Errors become a
        message and change nothing."""
        try:
            callback = (lambda i, n: progress(i / n, desc=f"denoising {i}/{n}")) if progress is not None else None
            with self.models.generation, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                session = work(callback)
                self.store.put(key, session)
            notes = [str(w.message) for w in caught if issubclass(w.category, NOTED_WARNINGS)]
        except Exception as err:  # the message only: the strokes and the scene stay as they were
            return (gr.skip(), gr.skip(), gr.skip(), _warn(err))
        return self._view(session, " ".join(dict.fromkeys(notes)))

    # -- callbacks

    def start_from_prompt(self, key, model_name, prompt, seed, progress=gr.Progress()):
        def work(callback):
            session = LayeredSession(self.models.get(model_name, LayeredEditPipeline), self.settings)
            session.start_from_prompt(prompt, _seed(seed), callback=callback)
            return session
        return self._run(key, work, progress)

    def start_from_image(self, key, model_name, image, method, progress=gr.Progress()):
        def work(callback):
            if image is None:
                raise ValueError("image: upload a picture first")
            if method not in IMAGE_METHODS:
                raise ValueError(f"method: choose one of {list(IMAGE_METHODS)}")
            session = LayeredSession(self.models.get(model_name, LayeredEditPipeline), self.settings)
            picture = _picture(image)
            session.start_from_image(picture, "", IMAGE_METHODS[method])
            return session
        return self._run(key, work, progress)

    def add_layer(self, key, editor, prompt, seed, use_box, progress=gr.Progress()):
        def work(callback):
            session = self._fork(key)
            mask = rough_mask(editor, self.settings.height, self.settings.width, bool(use_box))
            session.add_layer(prompt, mask, _seed(seed), callback=callback)
            return session
        return self._run(key, work, progress)

    def remove_layer(self, key, index, replay=None, progress=gr.Progress()):
        def work(callback):
            session = self._fork(key, replay)
            session.remove_layer(_index(index))
            return session
        return self._run(key, work, progress)

    def edit_layer(self, key, index, editor, prompt, use_box, replay=None, progress=gr.Progress()):
        def work(callback):
            session = self._fork(key, replay)
            layer = _index(index)
            try:
                mask = rough_mask(editor, self.settings.height, self.settings.width, bool(use_box))
            except ValueError:
                mask = None  # nothing drawn: keep the layer's mask
            session.edit_layer(layer, prompt=prompt or None, mask=mask)
            return session
        return self._run(key, work, progress)

    def undo(self, key):
        return self._run(key, lambda callback: _apply(self._fork(key), "undo"))

    def redo(self, key):
        return self._run(key, lambda callback: _apply(self._fork(key), "redo"))

    def _fork(self, key, replay: str | None = None) -> LayeredSession:
        """A fork of the user's session (with its own model, whatever the model field says now), so a
        failing edit leaves the stored session untouched; replay: one of REPLAY_CHOICES."""
        session = self._session(key)
        if replay is None:
            return session.fork()
        if replay not in REPLAY_CHOICES:
            raise ValueError(f"replay: choose one of {list(REPLAY_CHOICES)}")
        return session.fork(replay=REPLAY_CHOICES[replay])

    def _file(self, key, write, done: str):
        """(file, status) from write(session, folder) into a kept work folder, or (None, a warning)."""
        folder = None
        try:
            session = self._session(key)
            if not session.layers:
                raise ValueError("session: nothing to save; start a scene first (undo went past it)")
            folder = self.work.keep()
            return str(write(session, folder)), done
        except Exception as err:
            if folder is not None:
                self.work.forget(folder)
            return None, _warn(err)

    def download_session(self, key):
        def write(session, folder):
            session.save(folder / "session")
            archive = shutil.make_archive(str(folder / "strata-session"), "zip", folder / "session")
            shutil.rmtree(folder / "session")  # the zip is what the browser gets
            return archive
        return self._file(key, write, "Session saved: upload this zip later to resume.")

    def upload_session(self, key, model_name, file):
        def work(callback):
            if file is None:
                raise ValueError("session: choose a session zip to upload")
            pipe = self.models.get(model_name, LayeredEditPipeline)
            with self.work.scratch() as folder:  # the unpacked upload is gone when the request ends
                session = LayeredSession.load(pipe, unpack_session_zip(file, folder, self.session_bytes()))
            if (session.settings.height, session.settings.width) != (self.settings.height, self.settings.width):
                raise ValueError(f"session: made at {session.settings.width}×{session.settings.height}; this app "
                                 f"edits at {self.settings.width}×{self.settings.height}")
            return session
        return self._run(key, work)

    def export_png(self, key):
        def write(session, folder):
            folder = folder / "strata-export"
            folder.mkdir()
            Image.fromarray(session.composite).save(folder / "composite.png")
            for i, image in enumerate(session.layer_images()):
                Image.fromarray(image).save(folder / f"layer_{i:02d}.png")
            archive = shutil.make_archive(str(folder), "zip", folder)
            shutil.rmtree(folder)
            return archive
        return self._file(key, write, "Exported the composite and every layer as PNG.")


IMAGE_METHODS = {"DDIM inversion": "inversion", "forward noising (fast)": "noise"}
# warnings a user should see beside the result
NOTED_WARNINGS = (MaskResizedWarning, UnknownWordsWarning)


def _warn(err: Exception) -> str:
    """The message a client sees for an error: what to do, never a server path or a traceback."""
    if isinstance(err, ModelLoadError):
        logger.warning("model could not be loaded: %s", err)
        text = "model: it could not be loaded on this server (the server's log says why); choose another"
    elif isinstance(err, (ValueError, IndexError, SessionGone)):
        text = str(err)
    elif isinstance(err, OSError):
        logger.warning("file error in a request: %s", err)
        text = f"the server could not read or write a file ({err.strerror or type(err).__name__}); try again"
    else:
        logger.exception("unexpected error in a request")
        text = f"something went wrong on the server ({type(err).__name__}); the scene is as it was"
    gr.Warning(text)
    return f"⚠️ {text}"


def _seed(value) -> int:
    """A seed from a number field: a whole number in 0..2^63 − 1 (an emptied field is None)."""
    if value is None or value == "":
        raise ValueError("seed: enter a whole number (0 or more)")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed: expected a whole number in 0..{MAX_SEED}, got {value!r}")
    return value


def _index(value) -> int:
    if value is None or value == "":
        raise ValueError("layer: select a layer in the list first")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"layer: expected a layer number from the list, got {value!r}")
    return value


def _picture(image) -> Image.Image:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ValueError("image: expected a picture (PNG or JPEG)")
    return Image.fromarray(array if array.ndim == 2 or array.shape[-1] != 1 else array[..., 0]).convert("RGB")


def _apply(session: LayeredSession, action: str) -> LayeredSession:
    getattr(session, action)()
    return session


def build_layered_tab(tab: LayeredTab, model_name: gr.Dropdown) -> None:
    """The tab's components and events, inside the caller's `gr.Tab`. model_name: the app's model field."""
    store = tab.store
    # A plain function, not a bound method: Gradio keeps the callback in the Blocks config and
    # deep-copies that config on every page load, and a bound method would copy the store with it.
    # No time_to_live: the key never changes, so Gradio would count from page load and drop a session
    # in steady use; the store closes idle sessions itself.
    key = gr.State(lambda: uuid.uuid4().hex, delete_callback=lambda k: store.drop(k))
    with gr.Row():
        with gr.Column():
            scene_prompt = gr.Textbox(value="an empty scene of grass", label="Scene prompt")
            scene_seed = gr.Number(value=0, precision=0, label="Scene seed")
            start = gr.Button("Start from prompt", variant="primary", elem_id="start-prompt")
            upload = gr.Image(label="…or start from your own image", type="numpy", sources=["upload"])
            method = gr.Radio(list(IMAGE_METHODS), value=next(iter(IMAGE_METHODS)), label="Image to layer 0")
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
    add.click(tab.add_layer, [key, editor, layer_prompt, layer_seed, use_box], view, api_name="add_layer")
    remove.click(tab.remove_layer, [key, selected, replay], view, api_name="remove_layer")
    reedit.click(tab.edit_layer, [key, selected, editor, layer_prompt, use_box, replay], view, api_name="edit_layer")
    undo.click(tab.undo, [key], view, api_name="undo")
    redo.click(tab.redo, [key], view, api_name="redo")
    layers.select(_selected_index, None, selected, api_name=False)
    save.click(tab.download_session, key, [files, message], api_name="download_session")
    export.click(tab.export_png, key, [files, message], api_name="export_png")
    resume.upload(tab.upload_session, [key, model_name, resume], view, api_name="upload_session")



def _selected_index(evt: gr.SelectData):
    return evt.index
