"""The layered tab's flows a user relies on, called as the UI calls them: a replaced scene comes back
with Undo, Stop changes nothing, an export holds each layer's own cut-out with its transparency and
mask, the Advanced accordion reaches the edit, presets paint a mask, a resized upload is said, and a
session in steady use outlives Gradio's and the store's clocks."""

import datetime
import json
import shutil
import types
import zipfile

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from app.files import WorkFolder
from app.layered import DRAW_IT, EXPORT_SIDE, PRESET_MASKS, LayeredTab
from app.models import ModelCache
from app.sessions import SessionStore
from tests.app.conftest import SETTINGS, SIZE, stroke_png
from tests.app.test_client import _editor as _client_editor


@pytest.fixture
def tab(tiny_model_dir):
    return LayeredTab(ModelCache([str(tiny_model_dir)]), WorkFolder(), SessionStore(max_sessions=4), SETTINGS)


@pytest.fixture
def two_models(tiny_model_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("other") / "tiny-sd-b"
    if not other.exists():
        shutil.copytree(tiny_model_dir, other)
    return LayeredTab(ModelCache([str(tiny_model_dir), str(other)]), WorkFolder(), SessionStore(max_sessions=4),
                      SETTINGS)


def _editor(tmp_path, box=(8, 40, 8, 40), name="s.png"):
    return {"background": None, "layers": [np.asarray(Image.open(stroke_png(tmp_path / name, *box)))],
            "composite": None}


def _msg(result):
    return result[3]


def _composite(tab, key="k"):
    return tab.store.get(key).composite


def test_a_scene_replaced_on_another_model_or_by_new_session_comes_back_with_undo(two_models, tmp_path):
    """Guards: a new scene (here on another model, where the old history cannot go on) or New session
    silently discarding the old scene; Undo past the first scene blanking the page."""
    tab = two_models
    a, b = tab.models.labels
    tab.start_from_prompt("k", a, "an empty scene of grass", 0, progress=None)
    tab.add_layer("k", _editor(tmp_path), "a red circle", 1, False, progress=None)
    first = _composite(tab).copy()
    message = _msg(tab.start_from_prompt("k", b, "an empty scene of sand", 0, progress=None))
    assert "Undo brings back the scene it replaced" in message
    second = _composite(tab).copy()
    assert "Brought back" in _msg(tab.undo("k"))
    np.testing.assert_array_equal(_composite(tab), first)
    assert len(tab.store.get("k").layers) == 2
    assert "newer scene" in _msg(tab.redo("k"))
    np.testing.assert_array_equal(_composite(tab), second)
    tab.undo("k")  # back to the first scene; an edit there drops the newer one, as redo history goes
    tab.add_layer("k", _editor(tmp_path, (80, 110, 80, 110), "t.png"), "a blue square", 2, False, progress=None)
    assert "nothing to redo" in _msg(tab.redo("k"))
    edited = _composite(tab).copy()
    view = tab.new_session("k")
    assert view[1] is None and view[2] == [] and "Undo brings back" in _msg(view)
    assert "no scene yet" in _msg(tab.add_layer("k", _editor(tmp_path), "a red circle", 1, False, progress=None))
    tab.undo("k")
    np.testing.assert_array_equal(_composite(tab), edited)


def test_stop_ends_the_edit_and_changes_nothing(tab, tmp_path, monkeypatch):
    """Guards: a Stop that only hid the progress while the edit went on and landed later."""
    tab.start_from_prompt("k", None, "an empty scene of grass", 0, progress=None)
    before = _composite(tab).copy()
    steps = []

    def progress(fraction, desc=""):
        steps.append(fraction)
        tab.stop("k")  # pressed during the first step
    message = _msg(tab.add_layer("k", _editor(tmp_path), "a red circle", 1, False, progress=progress))
    assert message.startswith("Stopped") and len(steps) == 1
    assert len(tab.store.get("k").layers) == 1
    np.testing.assert_array_equal(_composite(tab), before)
    assert _msg(tab.add_layer("k", _editor(tmp_path), "a red circle", 1, False, progress=None)) == "Added layer 1."


def test_export_holds_each_layers_own_rgba_cutout_and_mask(tab, tmp_path):
    """Guards: "Export every layer" writing the composite after each layer (layer_01.png equal to
    composite.png), RGB only, with no masks and no enlarged copy."""
    tab.start_from_prompt("k", None, "an empty scene of grass", 0, progress=None)
    tab.add_layer("k", _editor(tmp_path), "a red circle", 1, False, progress=None)
    session = tab.store.get("k")
    archive, message = tab.export_png("k")
    assert "cut-out" in message
    with zipfile.ZipFile(archive) as z:
        files = {name: np.asarray(Image.open(z.open(name))) for name in z.namelist()}
    layer = session.layers[1]
    cut = files["layer_01.png"]
    assert cut.shape == (SIZE, SIZE, 4)
    np.testing.assert_array_equal(cut[..., 3] > 0, layer.object_mask)
    np.testing.assert_array_equal(cut[layer.object_mask][:, :3], session.composite[layer.object_mask])
    assert not np.array_equal(cut[..., :3], files["composite.png"]) or not layer.object_mask.all()
    np.testing.assert_array_equal(files["layer_00.png"], session.layers[0].image)
    np.testing.assert_array_equal(files["mask_01.png"] > 0, layer.rough_mask)
    assert min(files["composite_large.png"].shape[:2]) >= EXPORT_SIDE


def test_advanced_settings_reach_the_edit_and_bad_ones_are_named(tab, tmp_path):
    tab.start_from_prompt("k", None, "an empty scene of grass", 0, 3, 4.0, "", 0.2, 2, progress=None)
    assert tab.store.get("k").settings.steps == 3
    base = _composite(tab).copy()
    view = tab.add_layer("k", _editor(tmp_path), "a red circle", 1, False, 9.0, "blurry", 0.5, 0, progress=None)
    s = tab.store.get("k").settings
    assert (s.guidance, s.negative_prompt, s.harmonize, s.dilate_px) == (9.0, "blurry", 0.5, 0), _msg(view)
    tab.undo("k")
    np.testing.assert_array_equal(_composite(tab), base)
    for values, field in [((-1, "", 0.2, 2), "guidance"), ((4.0, "", 1.5, 2), "harmonize"),
                          ((4.0, "", 0.2, 2.5), "dilate"), ((4.0, 7, 0.2, 2), "negative prompt")]:
        message = _msg(tab.add_layer("k", _editor(tmp_path), "a red circle", 1, False, *values, progress=None))
        assert message.startswith(f"⚠️ {field}:"), message
    message = _msg(tab.start_from_prompt("k", None, "an empty scene of grass", 0, 500, 4.0, "", 0.2, 2, progress=None))
    assert message.startswith("⚠️ steps:")


def test_a_preset_mask_paints_the_editor_and_an_example_adds_where_it_says(tab):
    assert "no scene yet" in tab.paint_preset("k", "top left")[1]
    tab.start_from_prompt("k", None, "an empty scene of grass", 0, progress=None)
    assert tab.paint_preset("k", DRAW_IT)[1] is not None  # nothing to paint: the editor is left alone
    editor, message = tab.paint_preset("k", "bottom right")
    assert "bottom right" in message
    tab.add_layer("k", editor, "a blue square", 2, False, progress=None)
    mask = tab.store.get("k").layers[1].rough_mask
    y0, y1, x0, x1 = PRESET_MASKS["bottom right"]
    rows, cols = np.nonzero(mask)
    assert rows.min() >= int(y0 * SIZE) - 1 and cols.min() >= int(x0 * SIZE) - 1 and mask[-3, -3]


def test_an_upload_that_is_resized_or_not_a_picture_is_said(tab):
    big = np.zeros((100, 80, 3), np.uint8)
    message = _msg(tab.start_from_image("k", None, big, "forward noising (fast)", progress=None))
    assert f"Your 80×100 image was resized to {SIZE}×{SIZE}" in message
    from app.layered import NOT_A_PICTURE
    message = _msg(tab.start_from_image("k", None, NOT_A_PICTURE, "forward noising (fast)", progress=None))
    assert message.startswith("⚠️ image:") and "not a picture" in message


def test_a_session_in_steady_use_outlives_gradios_and_the_stores_clocks(live_app, tmp_path, monkeypatch):
    """Found: a session lost for good after ~32 min of steady use in one tab. Both clocks that can end
    a session (Gradio's state holder, which deletes expired gr.State values every second, and the
    store's idle expiry) jump 9 minutes between actions for 72 minutes: the session stays; idle past
    the store's limit, it is closed and the user is told so. (Not shown to be the cause: with the key's
    old time_to_live put back this still passes on Gradio 6.31, whose input-only States never expire.)"""
    import gradio.state_holder as holder
    demo, url, model = live_app
    store = demo.strata.store
    offset = [0.0]
    real = datetime.datetime

    class Shifted(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return real.now(tz) + datetime.timedelta(seconds=offset[0])
    monkeypatch.setattr(holder, "datetime", types.SimpleNamespace(datetime=Shifted, timedelta=datetime.timedelta))
    clock = store.clock
    monkeypatch.setattr(store, "clock", lambda: clock() + offset[0])
    client = Client(url, verbose=False)
    assert not client.predict(model, "an empty scene of grass", 0, api_name="/start_from_prompt")[3].startswith("⚠️")
    for k in range(8):
        offset[0] += 9 * 60
        if k % 2:
            message = client.predict(_client_editor(tmp_path, f"{k}.png"), "a red circle", k, False,
                                     api_name="/add_layer")[3]
        else:
            message = client.predict(api_name="/undo")[3]
        assert not message.startswith("⚠️") or "nothing to undo" in message, (k, message)
    offset[0] += store.idle_seconds + 60  # now idle longer than the store keeps a session: it says so
    message = client.predict(api_name="/undo")[3]
    assert "without use" in message
    assert not client.predict(model, "an empty scene of sand", 1, api_name="/start_from_prompt")[3].startswith("⚠️")
    offset[0] += 60
    assert "nothing to undo" in client.predict(api_name="/undo")[3]  # a new scene in the same page: kept


def test_a_session_zip_records_its_model_and_a_resume_on_another_says_so(two_models, tmp_path):
    """Guards: a zip that did not record the model that made it (a resume on another model was silent)."""
    tab = two_models
    a, b = tab.models.labels
    tab.start_from_prompt("k", a, "an empty scene of grass", 0, progress=None)
    archive, _ = tab.download_session("k")
    with zipfile.ZipFile(archive) as z:
        assert json.loads(z.read("session.json"))["model"] == a
    assert "made with the model" not in _msg(tab.upload_session("same", a, archive))
    message = _msg(tab.upload_session("other", b, archive))
    assert f"made with the model {a!r}; it goes on with {b!r}" in message


def test_hiding_a_layer_is_a_view_of_what_lies_below_and_showing_all_is_the_composite(tab, tmp_path):
    """Guards: layer visibility that changed the session (it is a view), or a "show all" that was not
    the composite pixel for pixel."""
    tab.start_from_prompt("k", None, "an empty scene of grass", 0, progress=None)
    tab.add_layer("k", _editor(tmp_path, (8, 40, 8, 40)), "a red circle", 1, False, progress=None)
    tab.add_layer("k", _editor(tmp_path, (80, 120, 80, 120), "t.png"), "a blue square", 2, False, progress=None)
    session = tab.store.get("k")
    editor, view, message = tab.show_layers("k", [1, 2])
    np.testing.assert_array_equal(view, session.composite)
    editor, view, message = tab.show_layers("k", [2])
    assert "without layer 1" in message and len(tab.store.get("k").layers) == 3
    first = (session.layers[1].image != session.layers[0].image).any(-1)
    second = (session.layers[2].image != session.layers[1].image).any(-1)
    np.testing.assert_array_equal(view[first & ~second], session.layers[0].image[first & ~second])
    np.testing.assert_array_equal(view[~first], session.composite[~first])
    assert tab.show_layers("k", "1")[-1].startswith("⚠️ visible layers:")


def test_a_resumed_session_keeps_its_undo_history_and_the_page_its_scene(tab, tmp_path):
    """Guards: a resumed session with no undo history, and a resume that silently replaced the scene on
    the page."""
    tab.start_from_prompt("k", None, "an empty scene of grass", 0, progress=None)
    tab.add_layer("k", _editor(tmp_path), "a red circle", 1, False, progress=None)
    archive, _ = tab.download_session("k")
    tab.start_from_prompt("page", None, "an empty scene of snow", 3, progress=None)
    snow = _composite(tab, "page").copy()
    assert "with its undo history" in _msg(tab.upload_session("page", None, archive))
    assert len(tab.store.get("page").layers) == 2
    assert _msg(tab.undo("page")) == "Undone."
    assert len(tab.store.get("page").layers) == 1
    assert "Brought back" in _msg(tab.undo("page"))
    np.testing.assert_array_equal(_composite(tab, "page"), snow)


def test_inversion_re_edit_and_a_removal_that_replays_report_their_steps(tab, tmp_path):
    """Guards: remove, re-edit and inversion showing only a timer (no steps reached the progress bar)."""
    seen = []

    def progress(fraction, desc=""):
        seen.append(desc)
    picture = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    tab.start_from_image("k", None, picture, "DDIM inversion", progress=progress)
    assert seen and seen[-1] == f"denoising {SETTINGS.steps}/{SETTINGS.steps}", seen
    tab.add_layer("k", _editor(tmp_path, (8, 40, 8, 40)), "a red circle", 1, False, progress=None)
    tab.add_layer("k", _editor(tmp_path, (20, 60, 20, 60), "t.png"), "a blue square", 2, False, progress=None)
    seen.clear()
    assert _msg(tab.edit_layer("k", 1, None, "a black circle", False, progress=progress)).startswith("Re-edited")
    assert len(seen) >= SETTINGS.steps  # the layer itself, then the overlapping square replayed
    seen.clear()
    assert _msg(tab.remove_layer("k", 1, "re-draw them from their seeds", progress=progress)).startswith("Removed")
    assert len(seen) == SETTINGS.steps  # the square, re-drawn from its seed
