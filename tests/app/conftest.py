"""A live app on 127.0.0.1 (free port) with a tiny random model, shared by the app tests."""

import os
import socket

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image

from app.sessions import SessionStore
from app.layered import DISPLAY
from app.ui import build_app, launch_options
from pipelines.layered_edit import EditSettings
from tests.app.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.tiny_models import sd1_components

SIZE = 32
SETTINGS = EditSettings(height=SIZE, width=SIZE, steps=2, dilate_px=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny-sd"
    StableDiffusionPipeline(**sd1_components()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def live_app(tiny_model_dir):
    demo = build_app(str(tiny_model_dir), SessionStore(max_sessions=8), SETTINGS)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(demo))
    yield demo, f"http://127.0.0.1:{port}/", tiny_model_dir.name  # clients choose the model by its label
    demo.close()


def stroke_png(path, y0, y1, x0, x1, size=SIZE * DISPLAY):
    """An RGBA editor layer with a painted box (display coordinates)."""
    layer = np.zeros((size, size, 4), dtype=np.uint8)
    layer[y0:y1, x0:x1] = (255, 0, 255, 255)
    Image.fromarray(layer).save(path)
    return path


@pytest.fixture
def page(live_app, tmp_path):
    """A fresh desktop-sized page (1400×1000) of the live app in Debian's headless Chromium, driven by
    Playwright (never a browser download); the browser tests skip without /usr/bin/chromium."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (Debian package chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(live_app[1])
        yield page
        context.close()
