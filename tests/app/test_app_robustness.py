"""The app as the fuzzing run attacked it: no client reaches the server's files or models, uploads
are checked before they are unpacked and deleted after, concurrent edits of one session all land,
a full disk or a bad value is a message (never a bare "Error" or a server path), and a page load
does not copy the sessions and models. Each test names the finding it reproduces."""

import copy
import errno
import threading
import zipfile

import numpy as np
import pytest
from gradio_client import Client

from app.files import WorkFolder, unpack_session_zip
from app.layered import LayeredTab
from app.models import ModelCache
from app.sessions import SessionStore
from pipelines.layered_edit import LayeredSession
from tests.app.conftest import SETTINGS, stroke_png


@pytest.fixture
def tab(tiny_model_dir):
    return LayeredTab(ModelCache([str(tiny_model_dir)]), WorkFolder(), SessionStore(max_sessions=4), SETTINGS)


def _editor(tmp_path, name="s.png", box=(8, 40, 8, 40)):
    return {"background": None, "layers": [np.asarray(_png(stroke_png(tmp_path / name, *box)))], "composite": None}


def _png(path):
    from PIL import Image
    return Image.open(path)


def _message(result):
    """The status line of a view (editor, composite, layers, message, selected, preview), or of a file's."""
    return result[3] if len(result) > 3 else result[-1]


def _started(tab, key="k"):
    message = _message(tab.start_from_prompt(key, None, "an empty scene of grass", 0, progress=None))
    assert not message.startswith("⚠️"), message
    return key


def test_clients_choose_models_by_label_only(tab, tiny_model_dir, tmp_path):
    """Found: the model field was free API input, and any existing folder (one a client had uploaded)
    was loaded and cached for ever."""
    assert tab.models.labels == [tiny_model_dir.name]
    for attempt in (str(tiny_model_dir), str(tmp_path), "org/some-model", "../../weights/world-sd"):
        message = _message(tab.start_from_prompt("k", attempt, "an empty scene of grass", 0, progress=None))
        assert message.startswith("⚠️ model: choose one of") and str(tmp_path) not in message
    assert len(tab.models._pipelines) == 1  # the default only (loaded for the app's size)


def _zip(entries: dict[str, bytes], path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("entries, message", [
    ({"session.json": b"{}", "memory.safetensors": b"\0" * (40 << 20)}, "unpacked, more than this server takes"),
    ({"session.json": b"{}"}, "expected exactly session.json and memory.safetensors"),
    ({"session.json": b"{}", "memory.safetensors": b"", "model_index.json": b"{}"}, "expected exactly"),
    ({"../session.json": b"{}", "memory.safetensors": b""}, "expected exactly"),
    ({"session.json": b"{oops", "memory.safetensors": b"x"}, "session"),
])
def test_uploads_are_checked_before_unpacking_and_leave_nothing_behind(tab, tmp_path, entries, message):
    """Found: extractall with no size check (a 149 KB zip wrote 150 MB), uploads never deleted, and
    error messages that showed the server's work folder to the client."""
    _started(tab)
    archive = _zip(entries, tmp_path / "upload.zip")
    before = tab.work.size()
    result = _message(tab.upload_session("k", None, str(archive)))
    assert result.startswith("⚠️") and message in result
    assert str(tab.work.root) not in result and "/tmp" not in result
    assert tab.work.size() == before and not list(tab.work.root.iterdir())


def test_a_zip_that_lies_about_its_size_is_stopped_while_unpacking(tmp_path):
    archive = _zip({"session.json": b"{}", "memory.safetensors": b"\0" * 10_000}, tmp_path / "bomb.zip")
    raw = bytearray(archive.read_bytes())
    # declare 100 bytes for memory.safetensors in both its headers (a bomb's trick)
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("memory.safetensors")
    local = info.header_offset + 22
    raw[local:local + 4] = (100).to_bytes(4, "little")
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24:central + 28] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="session zip"):
        unpack_session_zip(archive, tmp_path / "out", max_bytes=1 << 20)
    assert sum(p.stat().st_size for p in (tmp_path / "out").iterdir()) <= 100 + (1 << 20)


def test_two_concurrent_edits_of_one_session_both_land(tab, tmp_path):
    """Found: the store was written after the generation lock was released, so of two edits on one
    session started together, one was lost."""
    _started(tab)
    results = []

    def add(box, seed):
        results.append(tab.add_layer("k", _editor(tmp_path, f"{seed}.png", box), "a red circle", seed, False,
                                     progress=None))
    threads = [threading.Thread(target=add, args=((8, 40, 8, 40), 1)),
               threading.Thread(target=add, args=((80, 120, 80, 120), 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(not _message(r).startswith("⚠️") for r in results)
    assert len(tab.store.get("k").layers) == 3


def test_a_full_disk_during_download_and_export_is_a_message(tab, monkeypatch):
    _started(tab)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tab.work.root / "x"))
    monkeypatch.setattr(LayeredSession, "save", full)
    file, message = tab.download_session("k")
    assert file is None and "could not read or write a file (No space left on device)" in message
    assert str(tab.work.root) not in message
    monkeypatch.setattr("app.layered.Image.Image.save", full)
    file, message = tab.export_png("k")
    assert file is None and "No space left" in message
    assert not list(tab.work.root.iterdir())  # what the failed requests wrote is gone
    monkeypatch.undo()
    file, message = tab.download_session("k")  # the next call works
    assert file and zipfile.ZipFile(file).namelist()


@pytest.mark.parametrize("call, message", [
    (lambda t, e: t.start_from_prompt("k", None, "an empty scene of grass", None, progress=None), "seed: enter"),
    (lambda t, e: t.add_layer("k", e, "a red circle", 2**64, False, progress=None), "seed: expected a whole number"),
    (lambda t, e: t.add_layer("k", e, "a red circle", 1.5, False, progress=None), "seed: expected a whole number"),
    (lambda t, e: t.add_layer("k", {"layers": "oops"}, "a red circle", 1, False, progress=None), "mask: expected"),
    (lambda t, e: t.add_layer("k", {"layers": [np.zeros((4, 4, 4)), np.ones((8, 8, 4))]}, "a red circle", 1, False,
                              progress=None), "mask: the editor's layers differ"),
    (lambda t, e: t.remove_layer("k", 1.7, None, progress=None), "layer: expected a layer number"),
    (lambda t, e: t.remove_layer("k", None, None, progress=None), "layer: select a layer"),
    (lambda t, e: t.remove_layer("k", 1, "sometimes", progress=None), "replay: choose one of"),
    (lambda t, e: t.start_from_image("k", None, np.zeros((8, 8, 3), np.uint8), None, progress=None), "method: choose"),
    (lambda t, e: t.start_from_image("k", None, np.zeros((8, 8, 3), np.float64), "DDIM inversion", progress=None),
     "image: expected a picture"),
])
def test_bad_values_from_the_ui_are_messages(tab, tmp_path, call, message):
    """Found: a bare "Error" for an emptied seed field, an unset radio, editor values of the wrong
    shape, a non-integer layer index (1.7 was truncated to layer 1)."""
    _started(tab)
    layers = len(tab.store.get("k").layers)
    result = _message(call(tab, _editor(tmp_path)))
    assert result.startswith("⚠️") and message in result, result
    assert len(tab.store.get("k").layers) == layers


def test_undo_stops_at_the_first_scene_and_its_download_resumes(tab):
    """Found: undo past the scene left 0 layers (a blank page, no message), and Download then wrote a
    zip that Upload refused."""
    _started(tab)
    assert "nothing to undo" in _message(tab.undo("k"))
    assert len(tab.store.get("k").layers) == 1
    file, message = tab.download_session("k")
    assert file and "saved" in message
    assert "resumed: 1 layers" in _message(tab.upload_session("other", None, file))


def test_a_page_load_does_not_copy_the_sessions_and_models(live_app):
    """Found (with SD-1.5): the State's delete_callback was a bound method of the store, so the Blocks
    config held the store, and every GET /config deep-copied every session and the model's weights."""
    demo, _, _ = live_app
    memo: dict = {}
    copy.deepcopy(demo.config, memo)
    copied = [type(v).__name__ for v in memo.values()]
    assert not {"SessionStore", "LayeredTab", "ModelCache", "LayeredEditPipeline"} & set(copied)


def test_a_client_that_disconnects_mid_generation_loses_nothing(live_app, tmp_path):
    """The job runs to its end (or its error) without the client; the generation lock is released and
    the next client's call works."""
    demo, url, model = live_app
    client = Client(url, verbose=False)
    job = client.submit(model, "an empty scene of sand", 5, api_name="/start_from_prompt")
    job.cancel()
    client.close()
    other = Client(url, verbose=False)
    message = other.predict(model, "an empty scene of snow", 6, api_name="/start_from_prompt")[3]
    assert not message.startswith("⚠️")
    assert demo.strata.models.generation.acquire(timeout=60)
    demo.strata.models.generation.release()


def test_the_work_folder_is_bounded_and_swept(tmp_path):
    work = WorkFolder(max_bytes=3000, keep_seconds=3600)
    folders = []
    for k in range(5):
        folder = work.keep()
        (folder / "f").write_bytes(b"x" * 1000)
        folders.append(folder)
    work.sweep()
    assert work.size() <= 3000 and folders[-1].exists() and not folders[0].exists()
    with work.scratch() as scratch:
        (scratch / "upload").write_bytes(b"y")
    assert not scratch.exists()


def test_the_load_benchmark_runs_and_loses_nothing(tiny_model_dir, tmp_path):
    from benchmarks import app_load
    result = app_load.main(["--clients", "2", "--edits", "1", "--model", str(tiny_model_dir),
                            "--json", str(tmp_path / "load.json")])
    assert result["errors"] == [] and result["lost_edits"] == 0
    assert result["latency"]["add layer"]["n"] == 2 and result["peak_rss_mib"] > 0
    assert result["work_folder_bytes"]["after"] >= result["work_folder_bytes"]["before"]
