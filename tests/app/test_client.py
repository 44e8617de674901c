"""The app's API through gradio_client: the same calls the UI makes, per-client state, bad input."""

import threading
import zipfile

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.layered_edit import overlay_alpha
from tests.app.conftest import SETTINGS, SIZE, stroke_png


def _image(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _editor(tmp_path, name="stroke.png", box=(8, 40, 8, 40)):
    return {"background": None, "layers": [handle_file(stroke_png(tmp_path / name, *box))], "composite": None, "id": None}


def test_scene_layer_remove_undo_save_resume(live_app, tmp_path):
    _, url, model = live_app
    client = Client(url, verbose=False)
    editor, composite, gallery, message, *_ = client.predict(model, "an empty scene of grass", 0, api_name="/start_from_prompt")
    before = _image(composite)
    assert before.shape == (SIZE, SIZE, 3) and len(gallery) == 1
    box = (8, 40, 8, 40)  # display pixels: image pixels 2..10
    _, composite, gallery, message, *_ = client.predict(_editor(tmp_path, box=box), "a red circle", 1, False, api_name="/add_layer")
    after = _image(composite)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[2:10, 2:10] = True
    outside = overlay_alpha(mask, SETTINGS.dilate_px) == 0
    np.testing.assert_array_equal(after[outside], before[outside])
    assert (after[mask] != before[mask]).any() and len(gallery) == 2
    _, composite, gallery, *_ = client.predict(1, api_name="/remove_layer")
    np.testing.assert_array_equal(_image(composite), before)
    _, composite, gallery, *_ = client.predict(api_name="/undo")
    np.testing.assert_array_equal(_image(composite), after)
    _, composite, *_ = client.predict(1, "re-draw them from their seeds", api_name="/remove_layer")
    np.testing.assert_array_equal(_image(composite), before)
    _, composite, gallery, *_ = client.predict(api_name="/undo")
    archive, message = client.predict(api_name="/download_session")
    assert zipfile.ZipFile(archive).namelist()
    other = Client(url, verbose=False)
    _, composite, gallery, *_ = other.predict(model, handle_file(archive), api_name="/upload_session")
    np.testing.assert_array_equal(_image(composite), after)
    assert len(gallery) == 2
    exported, _ = client.predict(api_name="/export_png")
    assert sorted(zipfile.ZipFile(exported).namelist()) == ["composite.png", "composite_large.png", "layer_00.png",
                                                            "layer_01.png", "mask_01.png"]


def test_two_clients_never_see_each_others_layers(live_app, tmp_path):
    _, url, model = live_app
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    results = {}

    def work(name, client, prompt, seed):
        client.predict(model, prompt, seed, api_name="/start_from_prompt")
        out = client.predict(_editor(tmp_path, f"{name}.png"), "a blue square", seed, False, api_name="/add_layer")
        results[name] = out
    threads = [threading.Thread(target=work, args=("a", a, "an empty scene of sand", 3)),
               threading.Thread(target=work, args=("b", b, "an empty scene of snow", 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results["a"][2]) == 2 and len(results["b"][2]) == 2
    assert "sand" in results["a"][2][0]["caption"] and "snow" in results["b"][2][0]["caption"]
    _, composite_b, gallery_b, *_ = b.predict(1, api_name="/remove_layer")
    _, composite_a, gallery_a, *_ = a.predict(api_name="/undo")  # a's own history, untouched by b
    assert len(gallery_b) == 1 and len(gallery_a) == 1


def test_bad_input_gives_a_message_not_a_traceback(live_app, tmp_path):
    _, url, model = live_app
    client = Client(url, verbose=False)
    message = client.predict(_editor(tmp_path), "a red circle", 1, False, api_name="/add_layer")[3]
    assert "no scene" in message
    client.predict(model, "an empty scene of road", 0, api_name="/start_from_prompt")
    empty = {"background": None, "layers": [], "composite": None, "id": None}
    message = client.predict(empty, "a red circle", 1, False, api_name="/add_layer")[3]
    assert "nothing drawn" in message
    message = client.predict(_editor(tmp_path), "   ", 1, False, api_name="/add_layer")[3]
    assert "prompt" in message
    message = client.predict(7, api_name="/remove_layer")[3]
    assert "no layer 7" in message
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"not a zip")
    message = client.predict(model, handle_file(bad_zip), api_name="/upload_session")[3]
    assert "⚠️" in message
    try:  # a client cannot name a folder of its own: only the operator's models are offered
        message = client.predict(str(tmp_path), api_name="/load_model")
    except Exception as err:  # Gradio refuses a value outside the dropdown's choices
        message = str(err)
    assert "not in the list of choices" in message or "choose one of" in message
    assert str(tmp_path) not in message or "not in the list" in message


def test_oversized_upload_is_refused_with_a_message(live_app, tmp_path):
    _, url, model = live_app
    big = tmp_path / "big.zip"
    big.write_bytes(b"\0" * (6 * 2**20))  # the app takes at most 5 MB
    client = Client(url, verbose=False)
    try:
        result = client.predict(model, handle_file(big), api_name="/upload_session")
    except Exception as err:  # gradio refuses the upload itself; the browser shows its message
        assert "size" in str(err).lower() or "large" in str(err).lower(), err
    else:
        assert "⚠️" in result[3]
