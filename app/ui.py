"""The Strata app: one `gr.Blocks` with a tab per capability, each tab from its own builder.

`build_app` lays out what the tabs share (the title, the model field) and calls each tab's builder;
the callbacks live with their tab (`app.layered`). `python -m app` and the Space's `app.py` both
launch what it returns.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import gradio as gr

from app.layered import LayeredTab, build_layered_tab
from app.models import ModelCache
from app.sessions import SessionStore
from kernels import region_cpp
from pipelines.layered_edit import EditSettings, LayeredEditPipeline
from pipelines.loading import EMBEDDED, ModelLoadError

MAX_UPLOAD = "5mb"
# Scenes are small: show them enlarged with hard pixel edges.
CSS = "#composite img, #layers img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"


def load_model(models: ModelCache, name: str) -> str:
    """The model field's "Load model": load it now (it is cached) and say what it is."""
    try:
        pipe = models.get(name, LayeredEditPipeline)
    except (ModelLoadError, ValueError, OSError) as err:
        return f"⚠️ {err}"
    return f"Model ready: `{name or models.default}` ({type(pipe.denoiser).__name__})"


def build_app(model: str = EMBEDDED, store: SessionStore | None = None, settings: EditSettings | None = None) -> gr.Blocks:
    # The fused CPU attention kernel compiles once per machine (~30 s): start it now, not on the first edit.
    threading.Thread(target=region_cpp.available, name="strata-build-cpu-kernel", daemon=True).start()
    models = ModelCache(model)
    layered = LayeredTab(models, Path(tempfile.mkdtemp(prefix="strata-app-")), store, settings)
    with gr.Blocks(title="Strata — layered editing") as demo:
        demo.strata = layered
        gr.Markdown("# Strata — layered editing\nStart a scene, paint a rough mask where a new object should go, "
                    "describe it, and add it as a layer. Every layer can be removed or re-edited later.")
        with gr.Row():
            model_name = gr.Textbox(value=model, label="Model: 'embedded', a local diffusers folder, or a hub id", scale=4)
            load = gr.Button("Load model", scale=1)
        model_status = gr.Markdown()
        load.click(lambda name: load_model(models, name), model_name, model_status, api_name="load_model")
        with gr.Tab("Layered editing"):
            build_layered_tab(layered, model_name)
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo
