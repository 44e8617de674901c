"""Nothing lost, nothing corrupt: saves are all or nothing, a bad session file never becomes a
session, the caller's arrays and the session's memory stay apart, and every bad argument is one
clear error that names it. Each test names the fault it reproduces."""

import errno
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.atomic import sha256_file
from pipelines.conditioning import UnknownWordsWarning
from pipelines.layered_edit import EditSettings, LayeredEditPipeline, LayeredSession, SessionError, prepare_mask
from pipelines.layered_edit import session_format

SETTINGS = EditSettings(height=32, width=32, steps=2)


def _box(y0, y1, x0, x1, size=32):
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="module")
def pipe():
    from tests.tiny_models import sd1_components
    p = LayeredEditPipeline(**sd1_components())
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def session(pipe):
    s = LayeredSession(pipe, SETTINGS)
    s.start_from_prompt("an empty scene of grass", seed=0)
    s.add_layer("a red circle", _box(2, 12, 2, 12), seed=1)
    return s


def _layers_equal(a, b):
    return len(a) == len(b) and all(torch.equal(x.trajectory, y.trajectory) and np.array_equal(x.image, y.image)
                                    and (x.prompt, x.seed) == (y.prompt, y.seed) for x, y in zip(a, b))


@pytest.mark.parametrize("fault", ["manifest", "memory"])
def test_a_save_that_fails_half_way_leaves_the_previous_session(session, tmp_path, monkeypatch, fault):
    """Found: memory.safetensors was replaced before session.json, so a failed manifest write left
    the new tensors beside the old manifest and load() returned a mix of two sessions."""
    folder = session.save(tmp_path / "s")
    before = LayeredSession.load(session.pipe, folder).layers
    session.add_layer("a blue square", _box(18, 30, 18, 30), seed=2)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    if fault == "manifest":
        real = Path.write_text
        monkeypatch.setattr(Path, "write_text",
                            lambda self, *a, **k: disk_full() if self.name == "session.json" else real(self, *a, **k))
    else:
        monkeypatch.setattr(session_format, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        session.save(folder)
    monkeypatch.undo()
    assert _layers_equal(LayeredSession.load(session.pipe, folder).layers, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no partial folder left behind
    session.save(folder)  # the next save works and replaces it whole
    assert _layers_equal(LayeredSession.load(session.pipe, folder).layers, session.layers)


def test_mixed_files_from_two_saves_are_refused(session, tmp_path):
    a = session.save(tmp_path / "a")
    session.add_layer("a blue square", _box(18, 30, 18, 30), seed=2)
    b = session.save(tmp_path / "b")
    (a / "memory.safetensors").write_bytes((b / "memory.safetensors").read_bytes())
    with pytest.raises(SessionError, match="hash does not match"):
        LayeredSession.load(session.pipe, a)


def test_save_refuses_a_folder_that_is_not_a_session_and_an_empty_session(session, pipe, tmp_path):
    """A save replaces the target folder: it must never be a user's unrelated folder."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(SessionError, match="not a Strata session"):
        session.save(tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"
    with pytest.raises(SessionError, match="nothing to save"):
        LayeredSession(pipe, SETTINGS).save(tmp_path / "empty")


def _edit_manifest(folder, change):
    manifest = json.loads((folder / "session.json").read_text())
    change(manifest)
    (folder / "session.json").write_text(json.dumps(manifest))


def _edit_memory(folder, change):
    tensors = load_file(folder / "memory.safetensors")
    change(tensors)
    save_file(tensors, folder / "memory.safetensors")
    _edit_manifest(folder, lambda m: m.update(memory_sha256=sha256_file(folder / "memory.safetensors")))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["settings"].update(guidance=float("nan")), "settings.guidance"),
    (lambda m: m["settings"].update(steps=0), "settings.steps"),
    (lambda m: m["settings"].update(steps=-3), "settings.steps"),
    (lambda m: m["settings"].update(height=31), "settings.height"),
    (lambda m: m["settings"].update(colour="red"), "settings: expected an object of edit settings"),
    (lambda m: m.update(latent_channels=9), "latent_channels"),
    (lambda m: m["layers"][1].update(kind="wizard"), r"layers\[1\].kind"),
    (lambda m: m["layers"][0].update(kind="object"), "state: expected a background layer first"),
    (lambda m: m.update(state=[0, 7]), r"state: expected 1 to \d+ layer numbers in 0..1"),
    (lambda m: m.update(state=[1, 0]), "state: expected a background layer first"),
    (lambda m: m.update(undo=[[1]]), r"undo\[0\]: expected a background layer first"),
    (lambda m: m.update(undo=[[0, True]]), r"undo\[0\]: expected 1 to"),
    (lambda m: m.update(redo=[[0]] * (session_format.MAX_HISTORY + 1)), "redo: expected a list"),
    (lambda m: m.update(undo="all"), "undo: expected a list"),
    (lambda m: m["layers"][1].update(seed=-1), r"layers\[1\].seed"),
    (lambda m: m["layers"][1].update(seed=2**64), r"layers\[1\].seed"),
    (lambda m: m["layers"][1].update(prompt=7), r"layers\[1\].prompt"),
    (lambda m: m.update(layers=[m["layers"][0]] * (session_format.MAX_LAYERS + 1)), "expected 1 to"),
    (lambda m: m.update(layers=[]), "expected 1 to"),
    (lambda m: m.update(version=99), "version"),
])
def test_bad_manifests_are_refused_before_anything_is_read(session, tmp_path, change, message):
    """Found: unchecked settings (NaN guidance, steps ≤ 0) loaded and broke the next edit; the channel
    count was compared with the manifest's own claim; unknown kinds were accepted."""
    folder = session.save(tmp_path / "s")
    _edit_manifest(folder, change)
    with pytest.raises(SessionError, match=message):
        LayeredSession.load(session.pipe, folder)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"layer1.trajectory": t["layer1.trajectory"].to(torch.int32)}), "finite floating-point"),
    (lambda t: t["layer1.trajectory"].view(-1).__setitem__(0, float("nan")), "finite floating-point"),
    (lambda t: t["layer0.trajectory"].view(-1).__setitem__(3, float("inf")), "finite floating-point"),
    (lambda t: t.update({"layer1.trajectory": t["layer1.trajectory"][:, :3].contiguous()}), "not of shape"),
    (lambda t: t.update({"layer1.mask": t["layer1.mask"][:-1].contiguous()}), "layer1.mask is missing or not of shape"),
    (lambda t: t.update({"layer1.image": t["layer1.image"].float()}), "layer1.image must be uint8"),
    (lambda t: t.pop("layer0.image"), "layer0.image is missing"),
])
def test_bad_tensors_are_refused(session, tmp_path, change, message):
    folder = session.save(tmp_path / "s")
    _edit_memory(folder, change)
    with pytest.raises(SessionError, match=message):
        LayeredSession.load(session.pipe, folder)


def test_a_huge_manifest_is_refused_by_size_before_parsing(session, tmp_path):
    folder = session.save(tmp_path / "s")
    (folder / "session.json").write_text(" " * (session_format.MAX_MANIFEST_BYTES + 1) + "{}")
    with pytest.raises(SessionError, match="larger than"):
        LayeredSession.load(session.pipe, folder)


def test_messages_never_show_the_server_path(session, tmp_path):
    folder = session.save(tmp_path / "secret-server-folder")
    (folder / "session.json").write_text("{oops")
    with pytest.raises(SessionError) as err:
        LayeredSession.load(session.pipe, folder)
    assert "secret-server-folder" not in str(err.value) and str(tmp_path) not in str(err.value)


def test_the_callers_arrays_are_not_the_sessions_memory(pipe):
    """Found: the composite and layers returned were the session's own arrays, and an image passed in
    was stored as layer 0, so writing to either changed the session and its undo history."""
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    session = LayeredSession(pipe, SETTINGS)
    composite = session.start_from_image(image, "", "noise", seed=3)
    image[:] = 0  # the caller reuses its buffer
    assert session.layers[0].image.any()
    with pytest.raises(ValueError, match="read-only"):
        composite[0, 0] = 0
    with pytest.raises(ValueError, match="read-only"):
        session.layer_images()[0][0, 0] = 0
    assert image.flags.writeable  # the caller's array is still its own


@pytest.mark.parametrize("seed", [2**64, -1, None, float("inf"), 1.5, "7", True])
def test_bad_seeds_name_the_field(session, seed):
    with pytest.raises(ValueError, match="seed: expected an integer"):
        session.add_layer("a blue square", _box(18, 30, 18, 30), seed=seed)


def test_numpy_seeds_are_integers(session, tmp_path):
    session.add_layer("a blue square", _box(18, 30, 18, 30), seed=np.int64(7))
    assert type(session.layers[-1].seed) is int
    session.save(tmp_path / "s")  # a numpy seed used to make the manifest unwritable


@pytest.mark.parametrize("prompt", [7, b"a red circle", ["a red circle"], None])
def test_prompts_that_are_not_text_say_so(session, prompt):
    with pytest.raises(ValueError, match="prompt: expected text"):
        session.add_layer(prompt, _box(2, 9, 2, 9))


def test_words_the_model_does_not_know_are_named(session):
    with pytest.warns(UnknownWordsWarning, match="'teal'.*'dodecahedron'"):
        session.add_layer("a teal dodecahedron", _box(18, 30, 18, 30), seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownWordsWarning)
        session.add_layer("a red circle", _box(18, 30, 2, 12), seed=3)


def test_masks_in_every_layout_people_pass():
    """Found: a channel-first (1, H, W) mask was reduced over the wrong axis; an RGBA array counted
    colour instead of alpha; negative values did not count though any non-zero pixel should."""
    box = _box(4, 10, 4, 10)
    np.testing.assert_array_equal(prepare_mask(box[None].astype(np.uint8), 32, 32), box)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, painted (alpha) only in the box
    rgba[box, 3] = 255
    np.testing.assert_array_equal(prepare_mask(rgba, 32, 32), box)
    np.testing.assert_array_equal(prepare_mask(np.where(box, -1.0, 0.0), 32, 32), box)
    np.testing.assert_array_equal(prepare_mask(box[..., None], 32, 32), box)
    with pytest.raises(ValueError, match="NaN"):
        prepare_mask(np.where(box, np.nan, 0.0), 32, 32)
    with pytest.raises(ValueError, match="expected numbers"):
        prepare_mask(np.array([["a"]]), 32, 32)
    with pytest.raises(ValueError, match="empty"):
        prepare_mask(np.zeros((32, 32)), 32, 32)


def test_the_history_is_saved_and_a_resumed_session_undoes_and_redoes_as_before(session, tmp_path):
    """Found: a resumed session had no undo history. Every layer any state uses is stored once."""
    session.add_layer("a blue square", _box(18, 30, 18, 30), seed=2)
    session.remove_layer(1)
    session.undo()  # one state to redo
    folder = session.save(tmp_path / "s")
    manifest = json.loads((folder / "session.json").read_text())
    assert manifest["version"] == 5 and len(manifest["undo"]) == 2 and len(manifest["redo"]) == 1
    unique = {id(l) for state in [session.layers, *session._undo, *session._redo] for l in state}
    assert len(manifest["layers"]) == len(unique) < sum(map(len, [session.layers, *session._undo, *session._redo]))
    again = LayeredSession.load(session.pipe, folder)
    assert _layers_equal(again.layers, session.layers)
    for action in ("redo", "undo", "undo", "undo"):
        getattr(session, action)()
        getattr(again, action)()
        assert _layers_equal(again.layers, session.layers), action
    with pytest.raises(ValueError, match="nothing to undo"):
        again.undo()


def test_a_long_history_keeps_its_newest_states_within_the_layer_limit(session, tmp_path):
    for k in range(3):
        session.add_layer("a blue square", _box(18, 30, 4 + 8 * k, 12 + 8 * k), seed=2 + k)
    assert len(session._undo) == 4  # states of 1, 2, 3 and 4 layers; 5 layers now, 5 unique in all
    folder = session.save(tmp_path / "s", max_layers=5)
    again = LayeredSession.load(session.pipe, folder)
    assert _layers_equal(again.layers, session.layers) and len(again._undo) == 4
    with pytest.raises(SessionError, match="more than a session file holds"):
        session.save(tmp_path / "t", max_layers=4)
    session.remove_layer(1)  # the later layers are carried over as new layers: 4 in this state, 3 of them new
    for limit, kept in ((7, 0), (8, len(session._undo))):  # the newest undo state brings 4 more (8 in all)
        again = LayeredSession.load(session.pipe, session.save(tmp_path / f"s{limit}", max_layers=limit))
        assert _layers_equal(again.layers, session.layers) and len(again._undo) == kept, limit
    again.undo()
    session.undo()
    assert _layers_equal(again.layers, session.layers)
