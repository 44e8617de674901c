"""The layered-editing tab: start a scene, draw rough masks, add / remove / re-edit layers.

`LayeredTab` holds the session store; its methods are the callbacks, each a thin call into
`pipelines.layered_edit.LayeredSession`. Errors become a message in the UI, never a traceback, and
leave the session as it was. `build_layered_tab` lays the tab out and wires the callbacks.

Every event that changes the scene answers with the same view (the editor's new background, the
composite, the layers' cut-outs, the status line, the selection, the mask preview, the visible layers). Progress is
drawn once, on the status line: drawn on the editor it was left behind (Gradio's overlay stayed over
the canvas after roughly a third of events, and strokes painted on it were lost).
"""

from __future__ import annotations

import logging
import random
import shutil
import uuid
import warnings
from dataclasses import replace

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app.files import WorkFolder, unpack_session_zip
from app.masks import rough_mask, upscale
from app.models import ModelCache
from app.sessions import SessionGone, SessionStore
from app.stopping import STOPPED_MESSAGE, StopFlags, Stopped
from pipelines.conditioning import UnknownWordsWarning
from pipelines.layered_edit import EditSettings, LayeredEditPipeline, LayeredSession, MaskResizedWarning
from pipelines.layered_edit.session_format import session_model
from pipelines.loading import ModelLoadError

logger = logging.getLogger(__name__)

DISPLAY = 4  # the editor shows the scene this many times larger
# the app's words for EditSettings.replay
REPLAY_CHOICES = {"keep their objects (from memory, fast)": "memory", "re-draw them from their seeds": "seed"}
MAX_SEED = 2**63 - 1
MAX_STEPS = 50
# Masks a user can pick instead of painting (rows y0..y1, columns x0..x1, fractions of the side); the
# examples below use them, so each example is a prompt with a mask that works on the embedded model.
PRESET_MASKS = {"top left": (0.06, 0.44, 0.06, 0.44), "top right": (0.06, 0.44, 0.56, 0.94),
                "centre": (0.3, 0.7, 0.3, 0.7), "bottom left": (0.56, 0.94, 0.06, 0.44),
                "bottom right": (0.56, 0.94, 0.56, 0.94)}
DRAW_IT = "(paint it on the scene)"
EXAMPLES = [["a red circle", 1, "top left"], ["a blue square", 2, "bottom right"],
            ["a yellow triangle", 3, "centre"], ["a pink circle", 4, "top right"]]
EXPORT_SIDE = 1024  # the upscaled composite in an export is at least this many pixels on a side


class LayeredTab:
    def __init__(self, models: ModelCache, work: WorkFolder, store: SessionStore | None = None,
                 settings: EditSettings | None = None):
        self.models = models
        self.work = work
        self.store = store or SessionStore()
        # every session of the app edits at one size: the default model's unless the settings say
        self.settings = (settings or EditSettings()).sized_for(self.models.get(None, LayeredEditPipeline))
        self.stops = StopFlags()

    def session_bytes(self) -> int:
        """The most a saved session of this app can hold: saved_layers layers at its size and most steps."""
        s = self.settings
        pipe = self.models.get(None, LayeredEditPipeline)
        latent = (max(s.steps, MAX_STEPS) + 1) * pipe.denoiser.config.in_channels * \
            (s.height // pipe.vae_scale_factor) * (s.width // pipe.vae_scale_factor) * \
            torch.finfo(pipe.denoiser.dtype).bits // 8
        return self.saved_layers * (latent + 6 * s.height * s.width) + (1 << 20)

    @property
    def saved_layers(self) -> int:
        """The most layers a downloaded session holds, its undo/redo history included (newest kept)."""
        return 2 * self.store.max_layers

    # -- rendering the session into the UI

    def _view(self, session: LayeredSession | None, message: str = "", selected: int | None = None):
        """VIEW's values for session (None: a blank page). selected: the layer to keep selected."""
        if session is None or not session.layers:
            blank = {"background": None, "layers": [], "composite": None}
            return blank, None, [], message, None, None, gr.CheckboxGroup(choices=[], value=[])
        gallery = [(upscale(session.layer_cutout(i), 2), f"{i}: {layer.prompt}") for i, layer in enumerate(session.layers)]
        editor = {"background": upscale(session.composite, DISPLAY), "layers": [], "composite": None}
        shown = selected if selected is not None else len(session.layers) - 1
        objects = list(range(1, len(session.layers)))
        return (editor, session.composite, gallery, message, selected, mask_preview(session, shown),
                gr.CheckboxGroup(choices=[(f"{i}", i) for i in objects], value=objects))

    def _session(self, key: str | None) -> LayeredSession:
        session = self.store.get(key)
        if session is None:
            raise ValueError("session: no scene yet; start one from a prompt or an image")
        return session

    def _run(self, key, work, progress=None, done: str = "", selected=None, replaces: str | None = None):
        """Run work(callback) under the generation lock and store the session it returns there too (so
        two edits of one session cannot both start from the same state); view it with the message done
        (a str, or a function of the new session; so is selected). Errors, and Stop, become a message
        and change nothing. replaces: the result is a new scene, and the one it replaces is kept for Undo: "scene" (a
        new scene; unless it is a fork that goes on from the old one, whose history holds it already) or
        "upload" (a resumed session, whose history is its own)."""
        self.stops.clear(key)

        def callback(i, n):
            self.stops.check(key)
            if progress is not None:
                progress(i / n, desc=f"denoising {i}/{n}")
        try:
            with self.models.generation, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                session = work(callback)
                if replaces == "upload" or (replaces == "scene" and not session.can_undo):
                    self.store.replace(key, session)
                else:
                    self.store.put(key, session)
                    self.store.forget_forward(key)
            notes = [str(w.message) for w in caught if issubclass(w.category, NOTED_WARNINGS)]
        except Stopped:
            return (gr.skip(),) * 3 + (STOPPED_MESSAGE,) + (gr.skip(),) * 3
        except Exception as err:  # the message only: the strokes and the scene stay as they were
            return (gr.skip(),) * 3 + (_warn(err),) + (gr.skip(),) * 3
        finally:
            self.stops.clear(key)
        said = done(session) if callable(done) else done
        selected = selected(session) if callable(selected) else selected
        return self._view(session, " ".join([said] + list(dict.fromkeys(notes))).strip(), selected)

    def _new_session(self, key, model_name, advanced) -> LayeredSession:
        """A session for a new scene: a fork of the current one when it runs on the same model at the
        same steps (its history goes on, so Undo brings the old scene back), a new one otherwise (the
        store keeps the old one for Undo: `_run(replaces="scene")`)."""
        settings = self._advanced(self.settings, advanced, steps=True)
        pipe = self.models.get(model_name, LayeredEditPipeline)
        try:
            current = self.store.get(key)
        except SessionGone:
            current = None
        if current is not None and current.pipe is pipe and current.settings.steps == settings.steps:
            session = current.fork()
            session.settings = settings
            return session
        return LayeredSession(pipe, settings)

    # -- callbacks

    def start_from_prompt(self, key, model_name, prompt, seed, *advanced, progress=gr.Progress()):
        def work(callback):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("scene prompt: empty; describe the scene, e.g. 'an empty scene of grass'")
            session = self._new_session(key, model_name, advanced)
            session.start_from_prompt(prompt, _seed(seed, "scene seed"), callback=callback)
            return session
        return self._run(key, work, progress, lambda s: self._started(key), replaces="scene")

    def start_from_image(self, key, model_name, image, method, *advanced, progress=gr.Progress()):
        said = []

        def work(callback):
            if image is None:
                raise ValueError("image: upload a picture first (PNG or JPEG)")
            if method not in IMAGE_METHODS:
                raise ValueError(f"method: choose one of {list(IMAGE_METHODS)}")
            session = self._new_session(key, model_name, advanced)
            picture = _picture(image)
            size = (session.settings.width, session.settings.height)
            if picture.size != size:
                said.append(f"Your {picture.width}×{picture.height} image was resized to {size[0]}×{size[1]}, "
                            "the size this model edits at.")
            session.start_from_image(picture, "", IMAGE_METHODS[method], callback=callback)
            return session
        return self._run(key, work, progress, lambda s: " ".join([self._started(key)] + said), replaces="scene")

    def _started(self, key) -> str:
        return "Scene started: paint a rough mask where a new object should go." + (
            " Undo brings back the scene it replaced." if self._can(key, "undo") or self.store.other(key) == "back"
            else "")

    def add_layer(self, key, editor, prompt, seed, use_box, *advanced, progress=gr.Progress()):
        def work(callback):
            session = self._fork(key, None, advanced)
            mask = rough_mask(editor, session.settings.height, session.settings.width, bool(use_box))
            session.add_layer(_layer_prompt(prompt), mask, _seed(seed), callback=callback)
            return session
        return self._run(key, work, progress, lambda s: f"Added layer {len(s.layers) - 1}.")

    def remove_layer(self, key, index, replay=None, *advanced, progress=gr.Progress()):
        def work(callback):
            session = self._fork(key, replay, advanced)
            session.remove_layer(_index(index, session), callback=callback)
            return session
        return self._run(key, work, progress, lambda s: f"Removed layer {int(index)}; Undo brings it back.")

    def edit_layer(self, key, index, editor, prompt, use_box, replay=None, *advanced, progress=gr.Progress()):
        def work(callback):
            session = self._fork(key, replay, advanced)
            layer = _index(index, session, background=True)
            try:
                mask = rough_mask(editor, session.settings.height, session.settings.width, bool(use_box))
            except ValueError:
                mask = None  # nothing drawn: keep the layer's mask
            session.edit_layer(layer, prompt=_layer_prompt(prompt) if prompt else None, mask=mask, callback=callback)
            return session
        # (done and selected are used only once the edit worked, so the index is a layer number by then)
        return self._run(key, work, progress, lambda s: f"Re-edited layer {int(index)}.",
                         selected=lambda s: int(index))

    def undo(self, key):
        """Undo the last step; past a scene's first step, bring back the scene it replaced."""
        if not self._can(key, "undo") and self.store.other(key) == "back":
            self.store.swap(key)
            return self._view(self.store.get(key),
                              "Brought back the scene you had before; Redo returns to the new one.")
        return self._run(key, lambda callback: _apply(self._fork(key), "undo"), done="Undone.")

    def redo(self, key):
        if not self._can(key, "redo") and self.store.other(key) == "forward":
            self.store.swap(key)
            return self._view(self.store.get(key), "Back to the newer scene.")
        return self._run(key, lambda callback: _apply(self._fork(key), "redo"), done="Redone.")

    def _can(self, key, action) -> bool:
        try:
            session = self.store.get(key)
        except SessionGone:
            return False
        return session is not None and getattr(session, f"can_{action}")

    def new_session(self, key):
        """A blank page; the scene it clears is kept for Undo."""
        try:
            had = self.store.get(key) is not None
        except SessionGone:
            had = False
        self.store.replace(key, None)
        return self._view(None, "New session: start a scene from a prompt or an image." +
                          (" Undo brings back the scene you had." if had else ""))

    def stop(self, key):
        """Ask the running edit of this page to stop at its next step."""
        self.stops.stop(key)
        return "Stopping…"

    def select(self, key, evt: gr.SelectData):
        """A layer picked in the gallery: select it and preview its mask."""
        try:
            session = self._session(key)
            index = _index(evt.index, session, background=True)
        except Exception as err:
            return None, None, _warn(err)
        what = "the background" if index == 0 else f"layer {index}"
        return index, mask_preview(session, index), f"Selected {what}: Remove or Re-edit it."

    def show_layers(self, key, visible):
        """The composite and editor with the unticked layers hidden (a view: nothing is removed)."""
        try:
            session = self._session(key)
            if not isinstance(visible, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                                 for i in visible):
                raise ValueError("visible layers: expected layer numbers from the list")
            hidden = set(range(1, len(session.layers))) - set(visible)
        except Exception as err:
            return gr.skip(), gr.skip(), _warn(err)
        view = with_hidden(session, hidden)
        said = (f"Showing the scene without layer{'s' if len(hidden) > 1 else ''} "
                f"{', '.join(map(str, sorted(hidden)))} (a view: Remove makes it so; editing shows every layer "
                "again).") if hidden else "Every layer shown."
        editor = {"background": upscale(view, DISPLAY), "layers": [], "composite": None}
        return editor, view, said

    def paint_preset(self, key, preset):
        """The editor with a preset mask painted over the scene (DRAW_IT: leave the editor alone)."""
        if preset in (None, "", DRAW_IT):
            return gr.skip(), gr.skip()
        try:
            session = self._session(key)
            if preset not in PRESET_MASKS:
                raise ValueError(f"mask: choose one of {[DRAW_IT] + list(PRESET_MASKS)}")
        except Exception as err:
            return gr.skip(), _warn(err)
        side_y, side_x = session.settings.height * DISPLAY, session.settings.width * DISPLAY
        y0, y1, x0, x1 = PRESET_MASKS[preset]
        strokes = np.zeros((side_y, side_x, 4), np.uint8)
        strokes[round(y0 * side_y):round(y1 * side_y), round(x0 * side_x):round(x1 * side_x)] = (255, 0, 255, 128)
        editor = {"background": upscale(session.composite, DISPLAY), "layers": [strokes], "composite": None}
        return editor, f"Mask painted at the {preset}; Add layer uses it."

    def _fork(self, key, replay: str | None = None, advanced=()) -> LayeredSession:
        """A fork of the user's session (with its own model, whatever the model field says now), so a
        failing edit leaves the stored session untouched; replay: one of REPLAY_CHOICES; advanced: the
        Advanced accordion's values (guidance, negative prompt, harmonize, dilate) for this edit."""
        session = self._session(key)
        changes = {}
        if replay is not None:
            if replay not in REPLAY_CHOICES:
                raise ValueError(f"replay: choose one of {list(REPLAY_CHOICES)}")
            changes["replay"] = REPLAY_CHOICES[replay]
        fork = session.fork(**changes)
        fork.settings = self._advanced(fork.settings, advanced)
        return fork

    def _advanced(self, settings: EditSettings, advanced, steps: bool = False) -> EditSettings:
        """settings with the Advanced accordion's guidance, negative prompt, harmonize and dilate (and,
        steps=True, first the steps: only for a new scene; a scene's steps are fixed). A value left empty
        keeps the setting."""
        if not advanced:
            return settings
        if len(advanced) != 4 + steps:
            raise ValueError(f"advanced: expected {'steps, ' if steps else ''}guidance, negative prompt, harmonize "
                             "and dilate")
        n, guidance, negative, harmonize, dilate = advanced if steps else (None, *advanced)
        changes = {}
        if n not in (None, ""):
            changes["steps"] = _whole(n, "steps", 1, MAX_STEPS)
        if guidance not in (None, ""):
            if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= 30:
                raise ValueError(f"guidance: expected a number in 0..30, got {guidance!r}")
            changes["guidance"] = float(guidance)
        if negative is not None:
            if not isinstance(negative, str):
                raise ValueError(f"negative prompt: expected text, got {type(negative).__name__}")
            changes["negative_prompt"] = negative.strip()
        if harmonize not in (None, ""):
            if isinstance(harmonize, bool) or not isinstance(harmonize, (int, float)) or not 0 <= harmonize <= 1:
                raise ValueError(f"harmonize: expected a fraction in 0..1, got {harmonize!r}")
            changes["harmonize"] = float(harmonize)
        if dilate not in (None, ""):
            changes["dilate_px"] = _whole(dilate, "dilate", 0, 64)
        return replace(settings, **changes)

    def _file(self, key, write, done: str):
        """(file, status) from write(session, folder) into a kept work folder, or (None, a warning)."""
        folder = None
        try:
            session = self._session(key)
            folder = self.work.keep()
            return str(write(session, folder)), done
        except Exception as err:
            if folder is not None:
                self.work.forget(folder)
            return None, _warn(err)

    def download_session(self, key):
        def write(session, folder):
            session.save(folder / "session", model=self.models.label_of(session.pipe), max_layers=self.saved_layers)
            archive = shutil.make_archive(str(folder / "strata-session"), "zip", folder / "session")
            shutil.rmtree(folder / "session")  # the zip is what the browser gets
            return archive
        return self._file(key, write, "Session saved: upload this zip later to resume.")

    def upload_session(self, key, model_name, file):
        said = []

        def work(callback):
            if file is None:
                raise ValueError("session: choose a session zip to upload")
            pipe = self.models.get(model_name, LayeredEditPipeline)
            with self.work.scratch() as folder:  # the unpacked upload is gone when the request ends
                unpacked = unpack_session_zip(file, folder, self.session_bytes())
                session = LayeredSession.load(pipe, unpacked)
                made_with = session_model(unpacked)
            label = model_name or self.models.default
            if made_with is not None and made_with != label:
                said.append(f"It was made with the model {made_with!r}; it goes on with {label!r}.")
            if (session.settings.height, session.settings.width) != (self.settings.height, self.settings.width):
                raise ValueError(f"session: made at {session.settings.width}×{session.settings.height}; this app "
                                 f"edits at {self.settings.width}×{self.settings.height}")
            return session
        return self._run(key, work, done=lambda s: " ".join([f"Session resumed: {len(s.layers)} layers, with its "
                                                             "undo history."] + said), replaces="upload")

    def export_png(self, key):
        def write(session, folder):
            folder = folder / "strata-export"
            folder.mkdir()
            export_layers(session, folder)
            archive = shutil.make_archive(str(folder), "zip", folder)
            shutil.rmtree(folder)
            return archive
        return self._file(key, write, "Exported the composite (and an enlarged copy), each layer's own cut-out with "
                                      "transparency, and each layer's mask.")


IMAGE_METHODS = {"DDIM inversion": "inversion", "forward noising (fast)": "noise"}
# warnings a user should see beside the result
NOTED_WARNINGS = (MaskResizedWarning, UnknownWordsWarning)


def with_hidden(session: LayeredSession, hidden) -> np.ndarray:
    """The composite with the layers in hidden left out, as a view: each shown layer's changed pixels
    (wherever its picture differs from the one below it) laid over the background in order. With none
    hidden this is the composite exactly; hiding one shows what lies below it, instantly (Remove
    re-renders the later layers; this does not)."""
    layers = session.layers
    view = layers[0].image.copy()
    for i in range(1, len(layers)):
        if i in hidden:
            continue
        changed = (layers[i].image != layers[i - 1].image).any(-1)
        view[changed] = layers[i].image[changed]
    return view


def mask_preview(session: LayeredSession, index: int) -> np.ndarray:
    """The composite with layer index's rough mask (the mask the edit actually used, at image size) tinted."""
    image = session.composite.astype(np.float32)
    if index >= 1:
        mask = session.layers[index].rough_mask
        image[mask] = 0.45 * image[mask] + 0.55 * np.array([255, 0, 255], np.float32)
    return upscale(np.round(image).astype(np.uint8), 2)


def export_layers(session: LayeredSession, folder) -> None:
    """composite.png, composite_large.png (nearest-neighbour, at least EXPORT_SIDE px), and per layer:
    layer_NN.png (layer 0 the background; others the layer's own RGBA cut-out) and, for objects,
    mask_NN.png (the rough mask as drawn, white inside)."""
    Image.fromarray(session.composite).save(folder / "composite.png")
    factor = max(1, -(-EXPORT_SIDE // max(session.composite.shape[:2])))
    Image.fromarray(upscale(session.composite, factor)).save(folder / "composite_large.png")
    for i, layer in enumerate(session.layers):
        Image.fromarray(session.layer_cutout(i)).save(folder / f"layer_{i:02d}.png")
        if i:
            Image.fromarray((layer.rough_mask * 255).astype(np.uint8)).save(folder / f"mask_{i:02d}.png")


def _warn(err: Exception) -> str:
    """The message a client sees for an error: what to do, never a server path or a traceback. One
    place shows it (the status line at the top of the tab), so there is no second toast."""
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
    return f"⚠️ {text}"


def reveal_file(event, files: gr.File) -> None:
    """After event (which outputs files): the file box is shown only while it holds a file (an empty
    one is a tall placeholder)."""
    event.then(lambda file: gr.File(visible=file is not None), files, files, api_name=False, show_progress="hidden")


def _whole(value, name: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: expected a whole number in {low}..{high}, got {value!r}")
    return value


def _seed(value, name: str = "seed") -> int:
    """A seed from a number field: a whole number in 0..2^63 − 1 (an emptied field is None)."""
    if value is None or value == "":
        raise ValueError(f"{name}: enter a whole number (0 or more)")
    return _whole(value, name, 0, MAX_SEED)


def _layer_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("layer prompt: empty; say what the new layer should contain, e.g. 'a red circle'")
    return prompt


def _index(value, session: LayeredSession, background: bool = False) -> int:
    """The selected layer: a number the gallery gave (None: nothing selected). background: layer 0 may
    be chosen (re-edit re-prompts it); otherwise only the objects."""
    if value is None or value == "":
        raise ValueError("layer: select a layer in the Layers list first")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"layer: expected a layer number from the list, got {value!r}")
    if not background and value == 0:
        raise ValueError("layer: the background (layer 0) cannot be removed; start a new scene instead")
    if not 0 <= value < len(session.layers):
        raise IndexError(f"layer: no layer {value!r}; the session has {len(session.layers)} "
                         f"(0 is the background, 1..{len(session.layers) - 1} the objects)")
    return value


def picture_upload(**kwargs) -> gr.Image:
    """gr.Image whose upload of a file that is not a picture reaches the callback as NOT_A_PICTURE (which
    says so in the status line) instead of failing in Gradio's preprocessing (a bare "Error" toast that
    showed a server temp path). The instance's preprocess is wrapped: a subclass would make Gradio
    write a .pyi stub beside this module."""
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def tolerant(payload):
        try:
            return preprocess(payload)
        except Exception:
            return NOT_A_PICTURE
    image.preprocess = tolerant
    return image


NOT_A_PICTURE = "<not a picture>"


def _picture(image) -> Image.Image:
    if isinstance(image, str) and image == NOT_A_PICTURE:
        raise ValueError("image: the uploaded file is not a picture this server can read; upload a PNG or JPEG")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ValueError("image: expected a picture (PNG or JPEG)")
    return Image.fromarray(array if array.ndim == 2 or array.shape[-1] != 1 else array[..., 0]).convert("RGB")


def _apply(session: LayeredSession, action: str) -> LayeredSession:
    getattr(session, action)()
    return session


def random_seed() -> int:
    return random.randrange(0, 2**31)


# Ctrl+Z / Ctrl+Shift+Z (or Ctrl+Y) press the app's Undo / Redo, except while typing in a field or
# painting (the editor has its own stroke undo).
SHORTCUTS = """
<script>
document.addEventListener("keydown", (e) => {
  if (!(e.ctrlKey || e.metaKey) || e.altKey) return;
  const t = e.target;
  const typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
  if (typing || (t && t.closest && t.closest("#mask-editor"))) return;
  const key = e.key.toLowerCase();
  const id = key === "z" ? (e.shiftKey ? "redo" : "undo") : key === "y" ? "redo" : null;
  const button = id && document.getElementById(id);
  if (button) { e.preventDefault(); button.click(); }
});
</script>
"""


def build_layered_tab(tab: LayeredTab, model_name: gr.Dropdown) -> None:
    """The tab's components and events, inside the caller's `gr.Tab`. model_name: the app's model field."""
    store = tab.store
    s = tab.settings
    # A plain function, not a bound method: Gradio keeps the callback in the Blocks config and
    # deep-copies that config on every page load, and a bound method would copy the store with it.
    # No time_to_live: Gradio counts it from the key's first use, never from its last (the key is an
    # input only), so a session in steady use was dropped after 30 min and every new key with it; the
    # store closes idle sessions itself.
    key = gr.State(lambda: uuid.uuid4().hex, delete_callback=lambda k: store.drop(k))
    # The status line: at the top, where the progress of every edit is drawn and every message lands.
    message = gr.Markdown("Start a scene from a prompt (or your own image), then paint where a new object "
                          "should go and describe it.", elem_id="message", elem_classes=["status"],
                          min_height=48)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            scene_prompt = gr.Textbox(value="an empty scene of grass", label="Scene prompt", elem_id="scene-prompt",
                                      info="Enter starts the scene")
            with gr.Row():
                scene_seed = gr.Number(value=0, precision=0, minimum=0, label="Scene seed", scale=3)
                scene_dice = gr.Button("Random seed", scale=1, min_width=90, elem_id="scene-random", size="sm")
            start = gr.Button("Start from prompt", variant="primary", elem_id="start-prompt")
            with gr.Accordion("…or start from your own image", open=False):
                upload = picture_upload(label=f"Your image (resized to {s.width}×{s.height})", type="numpy",
                                  sources=["upload", "clipboard"], elem_id="upload-image")
                method = gr.Radio(list(IMAGE_METHODS), value=next(iter(IMAGE_METHODS)), label="Image to layer 0")
                start_image = gr.Button("Start from image", elem_id="start-image")
            new = gr.Button("New session", elem_id="new-session")
            with gr.Row():
                save = gr.Button("Download session", min_width=120, size="sm")
                export = gr.Button("Export PNGs", elem_id="export", min_width=120, size="sm")
            files = gr.File(label="Files", interactive=False, elem_id="files", height=120, visible=False)
            with gr.Accordion("Resume a downloaded session", open=False):
                resume = gr.File(label="Upload a session zip", file_types=[".zip"], type="filepath", height=120)
        with gr.Column(scale=2, min_width=320):
            # The brush is translucent, as inpainting tools draw it: the scene shows through the mask.
            editor = gr.ImageEditor(label="Paint a rough mask", type="numpy", image_mode="RGBA", sources=[],
                                    transforms=[], layers=False, elem_id="mask-editor",
                                    brush=gr.Brush(default_size=24, colors=["rgba(255, 0, 255, 0.5)"],
                                                   color_mode="fixed"),
                                    canvas_size=(s.width * DISPLAY, s.height * DISPLAY), format="png")
            with gr.Row():
                layer_prompt = gr.Textbox(value="a red circle", label="Layer prompt", scale=3, elem_id="layer-prompt",
                                          info="Enter adds the layer")
                layer_seed = gr.Number(value=1, precision=0, minimum=0, label="Seed", scale=1)
                layer_dice = gr.Button("Random seed", scale=1, min_width=90, elem_id="layer-random", size="sm")
            with gr.Row():
                preset = gr.Dropdown([DRAW_IT] + list(PRESET_MASKS), value=DRAW_IT, label="Mask", scale=2)
                use_box = gr.Checkbox(value=False, label="Use the strokes' bounding box", scale=2)
            with gr.Row():
                add = gr.Button("Add layer", variant="primary", elem_id="add-layer", min_width=100)
                undo = gr.Button("Undo edit", elem_id="undo", min_width=80)
                redo = gr.Button("Redo edit", elem_id="redo", min_width=80)
                stop = gr.Button("Stop", variant="stop", elem_id="stop", min_width=60)
            with gr.Accordion("Advanced", open=False):
                steps = gr.Slider(1, MAX_STEPS, value=s.steps, step=1, label="Steps (for a new scene)")
                guidance = gr.Slider(0, 15, value=s.guidance, step=0.5, label="Guidance")
                negative = gr.Textbox(value=s.negative_prompt, label="Negative prompt")
                harmonize = gr.Slider(0, 1, value=s.harmonize, step=0.05,
                                      label="Harmonize (last fraction of steps that blend the seam)")
                dilate = gr.Slider(0, 16, value=s.dilate_px, step=1, label="Dilate (pixels kept exact beyond the mask)")
            gr.Examples(EXAMPLES, [layer_prompt, layer_seed, preset], label="Examples (start a scene first)",
                        examples_per_page=4)
        with gr.Column(scale=1, min_width=280):
            composite = gr.Image(label="Composite", type="numpy", interactive=False, elem_id="composite",
                                 format="png", height=280)  # lossless: what you see is the session's pixels
            layers = gr.Gallery(label="Layers (select one)", columns=2,
                                height="auto", elem_id="layers", format="png", object_fit="contain",
                                allow_preview=False)
            with gr.Row():
                selected = gr.Number(value=None, precision=0, label="Selected layer", interactive=False, scale=1)
                preview = gr.Image(label="Mask used", type="numpy", interactive=False, elem_id="mask-preview",
                                   format="png", height=140, scale=1)
            visible = gr.CheckboxGroup([], value=[], label="Visible layers (untick to hide; a view only)",
                                       elem_id="visible-layers")
            with gr.Row():
                remove = gr.Button("Remove layer", elem_id="remove-layer")
                reedit = gr.Button("Re-edit layer (prompt and/or new mask)", elem_id="reedit-layer")
            with gr.Accordion("When a layer is removed or re-edited", open=False):
                replay = gr.Radio(list(REPLAY_CHOICES), value=next(iter(REPLAY_CHOICES)),
                                  label="Later layers whose mask sees the change")

    view = [editor, composite, layers, message, selected, preview, visible]
    shown = dict(show_progress_on=[message])  # one progress bar, on the status line
    adv = [steps, guidance, negative, harmonize, dilate]
    for trigger in (start.click, scene_prompt.submit):
        trigger(tab.start_from_prompt, [key, model_name, scene_prompt, scene_seed, *adv], view,
                api_name="start_from_prompt" if trigger == start.click else False, **shown)
    start_image.click(tab.start_from_image, [key, model_name, upload, method, *adv], view, api_name="start_from_image",
                      **shown)
    for trigger in (add.click, layer_prompt.submit):
        added = trigger(tab.add_layer, [key, editor, layer_prompt, layer_seed, use_box, *adv[1:]], view,
                        api_name="add_layer" if trigger == add.click else False, **shown)
        # the preset is used up: choosing it again paints it again
        added.then(lambda: DRAW_IT, None, preset, api_name=False, show_progress="hidden")
    remove.click(tab.remove_layer, [key, selected, replay, *adv[1:]], view, api_name="remove_layer", **shown)
    reedit.click(tab.edit_layer, [key, selected, editor, layer_prompt, use_box, replay, *adv[1:]], view,
                 api_name="edit_layer", **shown)
    undo.click(tab.undo, [key], view, api_name="undo", **shown)
    redo.click(tab.redo, [key], view, api_name="redo", **shown)
    new.click(tab.new_session, [key], view, api_name="new_session", **shown)
    stop.click(tab.stop, [key], message, api_name="stop", concurrency_limit=None, show_progress="hidden")
    scene_dice.click(random_seed, None, scene_seed, api_name=False, show_progress="hidden")
    layer_dice.click(random_seed, None, layer_seed, api_name=False, show_progress="hidden")
    visible.input(tab.show_layers, [key, visible], [editor, composite, message], api_name=False, show_progress="hidden")
    preset.change(tab.paint_preset, [key, preset], [editor, message], api_name=False, show_progress="hidden")
    layers.select(tab.select, [key], [selected, preview, message], api_name=False, show_progress="hidden")
    for button, write, name in ((save, tab.download_session, "download_session"), (export, tab.export_png, "export_png")):
        reveal_file(button.click(write, key, [files, message], api_name=name, **shown), files)
    resume.upload(tab.upload_session, [key, model_name, resume], view, api_name="upload_session", **shown)
