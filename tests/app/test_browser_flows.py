"""What a user trips over in a real browser (headless Debian Chromium, Playwright), each test failing
on a finding of the hour-long review before its fix:

- strokes were silently lost: after about a third of events the editor stayed under Gradio's stale
  progress overlay ("denoising 20/20 – 100.0%"), which took the pointer, and the next Add said
  "mask: nothing drawn";
- with nothing selected Re-edit regenerated the background and Remove spoke of the background; after a
  removal or a new scene the selection pointed at another layer or none at all;
- a new scene silently replaced the old one; bare red "Error" toasts for inputs the fuzz suite knows.
"""

import io
import re
import time
import zipfile
from urllib.parse import urljoin

import numpy as np
import requests
from PIL import Image

from app.layered import DISPLAY
from tests.app.test_browser import _composite, _message, _start, _stroke_committed, _wait_for_message, _wait_for_new_composite


def _paint(page, dx: float, dy: float) -> None:
    """A short diagonal stroke at (dx, dy) display pixels from the canvas centre."""
    page.click("#mask-editor button[aria-label='Brush']")
    box = page.locator("#mask-editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx + dx, cy + dy)
    page.mouse.down()
    for k in range(8):
        page.mouse.move(cx + dx + 5 * k, cy + dy + 3 * k, steps=2)
    page.mouse.up()
    _stroke_committed(page)


def _overlay_on_editor(page) -> list[str]:
    """The texts of progress overlays shown over the editor (none once an event is over)."""
    return page.evaluate("""() => [...document.querySelectorAll('#mask-editor .wrap')]
        .filter(e => !e.classList.contains('hide') && e.offsetParent !== null).map(e => e.innerText)""")


def _bare_errors(page) -> list[str]:
    """Toasts that say only "Error" (Gradio's own, when a request fails outside the app's messages)."""
    return page.evaluate("""() => [...document.querySelectorAll('.toast-body, [data-testid="toast-body"]')]
        .map(e => e.innerText.trim()).filter(t => /^error$/i.test(t.split('\\n')[0].trim()))""")


def test_the_editor_takes_strokes_after_every_kind_of_event(page):
    """Guards: the editor an output of the slow events, so Gradio's progress overlay on it (left behind
    after some events) swallowed the next strokes. After a success, an error, undo, redo, a removal
    refused, a selection: paint, Add, and the mask arrives (the layer is added)."""
    _start(page)
    events = [  # each leaves a status other than "Added layer …", so the wait below sees the new add
        ("a scene started", lambda: None),
        ("an error (nothing drawn)", lambda: (page.click("#add-layer"), _wait_for_message(page, "nothing drawn"))),
        ("undo", lambda: (page.click("#undo"), _wait_for_message(page, "Undone"))),
        ("redo", lambda: (page.click("#undo"), _wait_for_message(page, "Undone"), page.click("#redo"),
                          _wait_for_message(page, "Redone"))),
        ("a removal refused", lambda: (page.click("#remove-layer"), _wait_for_message(page, "select a layer"))),
        ("a layer selected", lambda: (page.click("#layers button[aria-label^='Thumbnail 2 of']"),
                                      _wait_for_message(page, "Selected layer 1"))),
    ]
    for i, (name, event) in enumerate(events):
        event()
        time.sleep(0.3)
        assert not _overlay_on_editor(page), f"after {name}: a progress overlay covers the editor"
        _paint(page, -100 + 20 * i, -100 + 10 * i)
        page.click("#add-layer")
        deadline = time.monotonic() + 60
        while not (text := _message(page)).startswith(("Added layer", "⚠️")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert text.startswith("Added layer"), f"after {name}: the strokes were lost ({text!r})"
    assert not _overlay_on_editor(page)


def test_nothing_selected_remove_and_reedit_ask_first_and_selection_follows_changes(page):
    """Guards: "Selected layer" showing 0 at load (Re-edit with nothing selected regenerated the
    background); a selection left pointing at another layer after a removal, or at none after a new
    scene."""
    src0, _ = _start(page)
    _paint(page, -100, -100)
    page.click("#add-layer")
    src1, after = _wait_for_new_composite(page, src0)
    for button in ("#remove-layer", "#reedit-layer"):
        page.click(button)
        assert "select a layer" in _wait_for_message(page, "select a layer")
        time.sleep(0.5)
        assert _composite(page)[0] == src1, f"{button} with nothing selected changed the scene"
    page.click("#layers button[aria-label='Thumbnail 2 of 2']")
    _wait_for_message(page, "Selected layer 1")
    page.click("#remove-layer")
    src2, removed = _wait_for_new_composite(page, src1)
    _wait_for_message(page, "Removed layer 1")
    page.click("#remove-layer")  # the selection went with the layer: nothing else is removed
    _wait_for_message(page, "select a layer")
    assert _composite(page)[0] == src2
    page.keyboard.press("Control+z")  # the shortcut: Undo brings the layer back
    src3, undone = _wait_for_new_composite(page, src2)
    np.testing.assert_array_equal(undone, after)
    page.click("#layers button[aria-label='Thumbnail 2 of 2']")
    _wait_for_message(page, "Selected layer 1")
    page.click("#start-prompt")  # a new scene: layer 1 of the old one is no longer selected
    _wait_for_message(page, "Scene started")
    page.click("#reedit-layer")
    _wait_for_message(page, "select a layer")


def test_export_in_the_browser_gives_each_layers_cutout_and_mask(page):
    """Guards: "Export every layer" writing the composite after each layer, RGB only, no masks."""
    src0, _ = _start(page)
    _paint(page, -100, -100)
    page.click("#add-layer")
    _, composite = _wait_for_new_composite(page, src0)
    page.click("#export")
    _wait_for_message(page, "Exported")
    page.wait_for_selector("#files a", timeout=30_000)
    href = page.get_attribute("#files a", "href")
    with zipfile.ZipFile(io.BytesIO(requests.get(urljoin(page.url, href), timeout=10).content)) as z:
        names = set(z.namelist())
        cut = np.asarray(Image.open(z.open("layer_01.png")))
        mask = np.asarray(Image.open(z.open("mask_01.png")))
    assert {"composite.png", "composite_large.png", "layer_00.png", "layer_01.png", "mask_01.png"} <= names
    assert cut.shape[-1] == 4 and 0 < (cut[..., 3] > 0).sum() < cut[..., 3].size  # a cut-out, not the composite
    np.testing.assert_array_equal(cut[..., :3][cut[..., 3] > 0], composite[cut[..., 3] > 0])
    assert mask.any() and not mask.all()


def test_a_new_scene_can_be_undone(page):
    """Guards: a new scene silently discarding the old one (Undo could not bring it back), and Undo
    past the first scene blanking the page without a word."""
    src0, first = _start(page)
    page.fill("#scene-prompt textarea, #scene-prompt input", "an empty scene of sand")
    page.click("#start-prompt")
    src1, second = _wait_for_new_composite(page, src0)
    assert "Undo brings back" in _wait_for_message(page, "Scene started")
    page.click("#undo")
    src2, back = _wait_for_new_composite(page, src1)
    np.testing.assert_array_equal(back, first)
    page.click("#undo")  # nothing before the first scene: said, and nothing blanked
    _wait_for_message(page, "nothing to undo")  # (the old scene is back: its own history starts there)
    assert _composite(page)[0] == src2


def test_no_bare_error_for_bad_input(page, tmp_path):
    """Guards: bare red "Error" toasts (export of an empty page, a file that is not a picture)."""
    page.click("#export")
    _wait_for_message(page, "no scene yet")
    page.click("#undo")
    _wait_for_message(page, "no scene yet")
    page.click("text=…or start from your own image")
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    page.set_input_files("#upload-image input[type=file]", str(bad))
    time.sleep(2)
    page.click("#start-image")
    assert "not a picture" in _wait_for_message(page, "image:")
    assert not _bare_errors(page), _bare_errors(page)
    assert "/tmp" not in page.inner_text("body")


def test_the_brush_shows_the_scene_through_it_and_buttons_have_their_own_names(page):
    """Guards: an opaque magenta brush hiding what is under the mask (inpainting tools draw it
    translucent), and the app's Undo/Redo sharing accessible names with the editor's stroke undo."""
    _start(page)
    _paint(page, -60, -60)
    time.sleep(0.5)
    canvas = page.locator("#mask-editor canvas").first
    shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
    magenta = (shot[..., 0] > 200) & (shot[..., 2] > 200) & (shot[..., 1] < 40)
    tinted = (shot[..., 0] - shot[..., 1] > 60) & (shot[..., 2] - shot[..., 1] > 60)  # magenta-ish over the scene
    assert tinted.sum() > 50, "no stroke seen on the canvas"
    assert magenta.sum() < 0.2 * tinted.sum(), "the brush paints opaque magenta over the scene"
    for name in ("Undo edit", "Redo edit", "Add layer", "Remove layer", "Stop", "New session"):
        assert page.get_by_role("button", name=name, exact=True).count() == 1, name


def test_unticking_a_layer_hides_it_from_the_view_only(page):
    src0, before = _start(page)
    _paint(page, -100, -100)
    page.click("#add-layer")
    src1, after = _wait_for_new_composite(page, src0)
    page.locator("#visible-layers label", has_text="1").click()
    _wait_for_message(page, "without layer 1")
    _, hidden = _wait_for_new_composite(page, src1)
    np.testing.assert_array_equal(hidden, before)  # one layer hidden: the background as it was
    page.locator("#visible-layers label", has_text="1").click()
    _wait_for_message(page, "Every layer shown")
    time.sleep(0.5)
    np.testing.assert_array_equal(_composite(page)[1], after)


def test_on_a_phone_the_tool_strip_leaves_the_picture_free_and_strokes_land_where_painted(page, live_app):
    """Guards: on a phone (390×844) the editor's tool strip lay over the picture's left edge, and the
    status line was 2,800 px down the page."""
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    _start(page)
    page.locator("#mask-editor").scroll_into_view_if_needed()
    status = page.locator("#message").bounding_box()  # scrolled down to the editor, the status is in view
    assert 0 <= status["y"] < 80, f"the status line is at y = {status['y']}, out of view"
    strip = page.locator("#mask-editor button[aria-label='Brush']").bounding_box()
    canvas = page.locator("#mask-editor canvas").first.bounding_box()
    assert canvas["x"] >= strip["x"] + strip["width"], (canvas, strip)
    zoom = int(re.search(r"(\d+)%", page.locator("#mask-editor").inner_text()).group(1)) / 100
    store = live_app[0].strata.store
    size = live_app[0].strata.settings.height
    scale = zoom * DISPLAY  # screen pixels per image pixel: the picture is shown at DISPLAY× and zoomed
    dx, dy = -0.25 * size * scale, -0.25 * size * scale  # the centre of the top-left quarter
    _paint(page, dx, dy)  # a diagonal from there, 35 × 21 screen pixels
    page.fill("#layer-prompt textarea, #layer-prompt input", "a purple triangle on a phone")
    page.click("#add-layer")
    _wait_for_message(page, "Added layer 1")
    # this page's session: the store is shared with other tests (whose clocks may have been shifted)
    session = next(entry[0] for entry in store._sessions.values()
                   if entry[0].layers[-1].prompt == "a purple triangle on a phone")
    rows, cols = np.nonzero(session.layers[1].rough_mask)
    want = (size / 4 + 10.5 / scale, size / 4 + 17.5 / scale)  # the stroke's middle, in image pixels
    assert abs(rows.mean() - want[0]) < 2 and abs(cols.mean() - want[1]) < 2, \
        f"the stroke's centre is at {(rows.mean(), cols.mean())}, painted at {want} (of {size})"
