"""The Strata app: one `gr.Blocks` with a tab per capability, each tab from its own builder.

`build_app` lays out what the tabs share (the title, the model choice) and calls each tab's builder;
the callbacks live with their tab (`app.layered`). `python -m app` and the Space's `app.py` both
launch what it returns, with `launch_options(demo)`.

What the app trusts: the operator (the command line: which models may load, where). What it does not:
anything a client sends. Clients pick a model by label from the operator's list, never a path or hub
id; uploads are session zips whose names and sizes are checked before they are unpacked, into a
scratch folder deleted when the request ends, and never loaded as a model; messages never show
server paths; the work folder is bounded and removed when the server stops.
"""

from __future__ import annotations

import threading

import gradio as gr

from app.driving import DrivingTab, build_driving_tab
from app.multiview import MultiViewTab, build_multiview_tab
from app.files import WorkFolder
from app.layered import SHORTCUTS, LayeredTab, _warn, build_layered_tab
from app.models import ModelCache
from app.sessions import SessionStore
from kernels import region_cpp
from pipelines.layered_edit import EditSettings, LayeredEditPipeline
from pipelines.loading import EMBEDDED

# Scenes are small: show them enlarged with hard pixel edges. Gallery thumbnails keep their own box
# (no overflow) and captions wrap instead of being cut ("1: a red ci…"); the status line stays in view
# at the top of the window while the page scrolls (it was below the fold at 1400×1000, and on a phone).
CSS = """
#composite img, #layers img, #mask-preview img { image-rendering: pixelated; }
#composite img, #mask-preview img { width: 100%; height: 100%; object-fit: contain; }
#layers .thumbnail-item img { object-fit: contain; }
#layers .caption-label { white-space: normal; overflow: visible; text-overflow: clip; max-width: 100%; }
.status { font-size: 1.05em; position: sticky; top: 0; z-index: 20; background: var(--background-fill-primary);
           padding: 4px 0; }
.gradio-container { overflow: clip !important; }  /* clips as "hidden" did, without the scroll box that stops sticky */
@media (max-width: 700px) {
  #composite { display: none; }  /* on a phone the editor shows the same picture */
  /* the editor's tool strip sits over the canvas's left edge: on a narrow screen the canvas starts after it */
  #mask-editor .pixi-target { left: 46px !important; width: calc(100% - 46px) !important; }
}
"""


def load_model(models: ModelCache, label: str) -> str:
    """The model choice's "Load model": load it now (it is cached) and say what it is."""
    try:
        pipe = models.get(label, LayeredEditPipeline)
    except Exception as err:
        return _warn(err)
    return f"Model ready: `{label or models.default}` ({type(pipe.denoiser).__name__})"


def build_app(model: str | list[str] = EMBEDDED, store: SessionStore | None = None,
              settings: EditSettings | None = None, device: str | None = None, dtype=None) -> gr.Blocks:
    """model: the operator's models (the first is the default); the embedded one is always offered.
    settings: the size and steps every session edits at (unset: the default model's own size);
    device, dtype: where and in what precision the models run."""
    # The fused CPU attention kernel compiles once per machine (~30 s): start it now, not on the first edit.
    threading.Thread(target=region_cpp.available, name="strata-build-cpu-kernel", daemon=True).start()
    sources = [model] if isinstance(model, str) else list(model)
    models = ModelCache(sources + [EMBEDDED], device=device, dtype=dtype)
    work = WorkFolder()
    layered = LayeredTab(models, work, store, settings)
    driving = DrivingTab(models, work)
    multiview = MultiViewTab(models, work)
    # Gradio's own cache of uploads and outputs: swept every 10 min of files older than 30 min
    with gr.Blocks(title="Strata", delete_cache=(600, 1800)) as demo:
        demo.strata = layered
        gr.Markdown("# Strata\n**Layered editing**: start a scene, paint a rough mask where a new object should "
                    "go, describe it, and add it as a layer; every layer can be removed or re-edited later. "
                    "**Multi-view**: one 3D edit across many views of a scene, kept consistent by QNeRF. "
                    "**Driving video**: six cameras × N frames from a 3D box layout.")
        with gr.Row():
            model_name = gr.Dropdown(models.labels, value=models.default, label="Model (for a new scene)", scale=4)
            load = gr.Button("Load model", scale=1)
        model_status = gr.Markdown()
        load.click(lambda label: load_model(models, label), model_name, model_status, api_name="load_model")
        with gr.Tab("Layered editing"):
            build_layered_tab(layered, model_name)
        with gr.Tab("Multi-view"):
            build_multiview_tab(multiview, model_name)
        with gr.Tab("Driving video"):
            build_driving_tab(driving, model_name)
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


def launch_options(demo: gr.Blocks) -> dict:
    """What every launch of the app passes: its CSS, Gradio's own errors shown as messages, and an
    upload limit that holds the largest session this app can save (at its model's size), and the
    keyboard shortcuts for Undo / Redo."""
    return {"css": CSS, "head": SHORTCUTS, "show_error": True, "max_file_size": demo.strata.session_bytes()}
