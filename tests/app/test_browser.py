"""The app in a real browser: headless Debian Chromium driven by Playwright.

Starts a scene, paints a stroke on the editor, adds a layer and checks that the composite changed
inside the stroke's corner and nowhere else (pixels compared), removes the layer, undoes, and
saves a screenshot (out/app-browser.png). Chromium comes from Debian's `chromium` package, which
`./strata test` installs when it can; without it these tests are skipped with the reason.
"""

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.app.chromium import CHROMIUM

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (Debian package chromium)")


def _composite(page) -> tuple[str, np.ndarray]:
    src = page.get_attribute("#composite img", "src")
    return src, np.asarray(Image.open(io.BytesIO(requests.get(src, timeout=10).content)).convert("RGB"))


def _stroke_committed(page, timeout=30.0) -> None:
    """Wait until the editor has taken the stroke into its history (its Undo button is enabled), then a
    moment: the editor commits a stroke asynchronously, and an Add clicked before that sends an empty
    mask ("mask: nothing drawn"; seen on a loaded machine, never at a human's pace)."""
    page.wait_for_selector("#mask-editor button[aria-label='Undo']:not([disabled])", timeout=timeout * 1000)
    time.sleep(0.3)


def _wait_for_new_composite(page, old_src, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.locator("#composite img").count():
            src, image = _composite(page)
            if src != old_src:
                return src, image
        time.sleep(0.25)
    raise AssertionError(f"the composite did not change within {timeout} s; message: {page.inner_text('#message')!r}")


def _message(page) -> str:
    return page.inner_text("#message").strip()


def _wait_for_message(page, pattern: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _message(page)
        if pattern in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"no message with {pattern!r} within {timeout} s; the status line says {_message(page)!r}")


def _start(page):
    """A new scene, once it has reached the editor too (it comes with the message): a stroke painted
    before that is wiped when the scene arrives ("mask: nothing drawn", seen on the first test)."""
    page.click("#start-prompt")
    src, image = _wait_for_new_composite(page, None)
    _wait_for_message(page, "Scene started")
    return src, image


def test_paint_add_remove_undo_in_a_real_browser(page, tmp_path):
    src0, before = _start(page)
    time.sleep(1.0)
    page.click("#mask-editor button[aria-label='Brush']")
    box = page.locator("#mask-editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 90, cy - 90)  # the scene is centred; paint in its top-left corner
    page.mouse.down()
    for k in range(10):
        page.mouse.move(cx - 90 + 6 * k, cy - 90 + 4 * k, steps=2)
    page.mouse.up()
    _stroke_committed(page)
    page.click("#add-layer")
    src1, after = _wait_for_new_composite(page, src0)
    changed = (after != before).any(-1)
    size = before.shape[0]
    assert changed.any(), "the new layer changed nothing"
    ys, xs = np.nonzero(changed)
    # stroke (≈ pixels 6..15) + brush radius + dilation and feathering stay well inside 3/4 of the scene
    assert xs.max() < 0.75 * size and ys.max() < 0.75 * size, f"changed rows ..{ys.max()}, columns ..{xs.max()}"

    page.click("#layers button[aria-label='Thumbnail 2 of 2']")  # select layer 1 in the gallery
    page.wait_for_function("() => document.querySelector('#layers') !== null")
    time.sleep(0.5)
    page.click("#remove-layer")
    src2, removed = _wait_for_new_composite(page, src1)
    np.testing.assert_array_equal(removed, before)
    page.click("#undo")
    _, undone = _wait_for_new_composite(page, src2)
    np.testing.assert_array_equal(undone, after)

    shot = tmp_path / "app-browser.png"
    page.screenshot(path=str(shot), full_page=True)
    out = Path(__file__).resolve().parents[2] / "out"
    out.mkdir(exist_ok=True)
    shutil.copy(shot, out / "app-browser.png")
