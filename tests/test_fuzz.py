"""Property-based fuzzing of every input Strata takes from outside: masks, seeds, edit settings,
saved-session manifests, session zips, edit scripts, street layouts, nerfstudio transforms.json and
the app's callbacks. The property is always the same: a value is accepted, or refused with one
ValueError whose message starts with the name of the field — never another exception, a hang, or a
partial write. (The fuzzing run behind issue 21 found 126 of 272 such inputs mishandled.)"""

import copy
import json
import math
import string
import zipfile

import gradio as gr
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from formats import StreetClip, read_transforms
from pipelines.layered_edit import EditSettings, LayeredEditPipeline, LayeredSession, SessionError, prepare_mask
from pipelines.layered_edit.cli import load_script
from pipelines.layered_edit.settings import check_seed

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
# JSON values of every kind, nested a little: what a hand-edited or hostile file can hold
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                    | st.text(max_size=12), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
NUMBERS = st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)


def _refused_by_name(err: Exception, *names: str) -> bool:
    return isinstance(err, ValueError) and any(str(err).startswith(n) for n in names)


MASK_SHAPES = [(32, 32), (1, 32, 32), (32, 32, 1), (32, 32, 3), (32, 32, 4), (16, 48), (0, 5), (2, 32, 32), (32,),
               (4, 4, 4, 4)]


@FUZZ
@given(st.tuples(hnp.arrays(np.float64, st.sampled_from(MASK_SHAPES),
                            elements=st.floats(-3, 3) | st.just(0.0) | st.just(float("nan"))),
                 st.sampled_from([np.bool_, np.uint8, np.int16, np.float32, np.float64]))
       .map(lambda pair: pair[0] if pair[1] == np.float64 else np.nan_to_num(pair[0]).astype(pair[1])))
def test_any_mask_array_gives_a_mask_or_names_the_field(mask):
    try:
        out = prepare_mask(mask, 32, 32)
    except Exception as err:  # noqa: BLE001 — the property: only the named ValueError
        assert _refused_by_name(err, "rough_mask:"), repr(err)
    else:
        assert out.shape == (32, 32) and out.dtype == bool and out.any()


@FUZZ
@given(JSON | NUMBERS | st.sampled_from([np.int64(5), np.uint64(2**64 - 1), np.float32(3)]))
def test_any_seed_is_an_integer_or_names_the_field(seed):
    try:
        value = check_seed(seed)
    except Exception as err:  # noqa: BLE001
        assert _refused_by_name(err, "seed:"), repr(err)
    else:
        assert type(value) is int and 0 <= value < 2**63


@FUZZ
@given(st.dictionaries(st.sampled_from(["height", "width", "steps", "guidance", "harmonize", "dilate_px",
                                        "protect", "replay", "mqd", "bcg"]), JSON | NUMBERS, max_size=4))
def test_any_edit_settings_are_valid_or_name_the_field(values):
    try:
        EditSettings(**values)
    except (ValueError, TypeError) as err:
        field = str(err).split(":")[0]
        assert field in values or isinstance(err, TypeError), repr(err)


@pytest.fixture(scope="module")
def pipe():
    from tests.tiny_models import sd1_components
    p = LayeredEditPipeline(**sd1_components())
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    session = LayeredSession(pipe, EditSettings(height=32, width=32, steps=2))
    session.start_from_prompt("an empty scene of grass", seed=0)
    mask = np.zeros((32, 32), bool)
    mask[4:12, 4:12] = True
    session.add_layer("a red circle", mask, seed=1)
    folder = session.save(tmp_path_factory.mktemp("fuzz") / "session")
    return folder, json.loads((folder / "session.json").read_text())


def _paths(value, prefix=()):
    """Every (path, value) in a nested JSON value."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _mutated(document, data):
    """document with one field (any depth) replaced by a fuzzed value, or deleted."""
    document = copy.deepcopy(document)
    paths = [p for p, _ in _paths(document) if p]
    path = data.draw(st.sampled_from(paths))
    target = document
    for key in path[:-1]:
        target = target[key]
    if isinstance(target, dict) and data.draw(st.booleans()):
        del target[path[-1]]
    else:
        target[path[-1]] = data.draw(JSON | NUMBERS)
    return document


@FUZZ
@given(data=st.data())
def test_any_change_to_a_session_manifest_loads_or_is_a_session_error(pipe, saved, tmp_path, data):
    folder, manifest = saved
    target = tmp_path / f"s{len(list(tmp_path.iterdir()))}"  # a fresh folder for every example
    target.mkdir()
    (target / "memory.safetensors").write_bytes((folder / "memory.safetensors").read_bytes())
    (target / "session.json").write_text(json.dumps(_mutated(manifest, data)))
    try:
        session = LayeredSession.load(pipe, target)
    except SessionError:
        pass
    else:  # a change the format allows (a prompt's words, a seed): a working session
        assert session.layers and session.composite.shape == (32, 32, 3)


@FUZZ
@given(entries=st.dictionaries(st.sampled_from(["session.json", "memory.safetensors", "model_index.json",
                                                "../escape", "/abs", "dir/session.json"]),
                               st.binary(max_size=2048), max_size=4), limit=st.integers(0, 4096))
def test_any_zip_unpacks_within_its_limit_or_is_refused(tmp_path, entries, limit):
    from app.files import unpack_session_zip
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    try:
        unpack_session_zip(archive, out, limit)
    except Exception as err:  # noqa: BLE001
        assert _refused_by_name(err, "session zip:"), repr(err)
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert written <= limit + (1 << 20) and all(p.parent == out for p in out.rglob("*"))


SCRIPT = {"settings": {"height": 32, "width": 32, "steps": 2}, "scene": {"prompt": "an empty scene of snow", "seed": 0},
          "layers": [{"prompt": "a red circle", "seed": 1, "mask": {"box": [2, 2, 14, 14]}}]}


@FUZZ
@given(data=st.data())
def test_any_edit_script_is_checked_or_names_the_field(tmp_path, data):
    path = tmp_path / "edits.json"
    path.write_text(json.dumps(_mutated(SCRIPT, data)))
    try:
        load_script(path)
    except Exception as err:  # noqa: BLE001
        assert _refused_by_name(err, "script", "model", "settings", "scene", "layers"), repr(err)


@pytest.fixture(scope="module")
def layout():
    from world.street import sample_street_clip
    return sample_street_clip(0, n_frames=2, n_cameras=3).to_json()


@FUZZ
@given(data=st.data())
def test_any_street_layout_validates_or_names_the_field(layout, data):
    try:
        clip = StreetClip.from_json(_mutated(layout, data))
    except Exception as err:  # noqa: BLE001
        assert _refused_by_name(err, "layout"), repr(err)
    else:
        for frame in clip.frames:
            assert all(math.isfinite(v) for box in frame.boxes for v in (*box.size, box.yaw, *box.position))


@pytest.fixture(scope="module")
def transforms(tmp_path_factory):
    from world.orbit import render_orbit, sample_orbit_spec, write_nerfstudio_dataset
    spec = sample_orbit_spec(1, n_cameras=3)
    folder = write_nerfstudio_dataset(spec, render_orbit(spec), tmp_path_factory.mktemp("ns") / "scene")
    return folder, json.loads((folder / "transforms.json").read_text())


@FUZZ
@given(data=st.data())
def test_any_transforms_json_reads_or_names_the_field(transforms, data):
    folder, document = transforms
    (folder / "transforms.json").write_text(json.dumps(_mutated(document, data)))
    try:
        scene = read_transforms(folder)
    except Exception as err:  # noqa: BLE001
        assert _refused_by_name(err, "transforms.json"), repr(err)
    else:
        assert len(scene.cameras) == len(scene.images) and all(p.is_file() for p in scene.images)


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from app.files import WorkFolder
    from app.layered import LayeredTab
    from app.models import ModelCache
    from app.sessions import SessionStore
    from tests.tiny_models import sd1_components
    folder = tmp_path_factory.mktemp("app") / "tiny"
    StableDiffusionPipeline(**sd1_components()).save_pretrained(folder)
    t = LayeredTab(ModelCache([str(folder)]), WorkFolder(), SessionStore(), EditSettings(height=32, width=32, steps=2))
    t.start_from_prompt("fuzz", None, "an empty scene of grass", 0, progress=None)
    return t


UI_VALUES = JSON | NUMBERS | st.sampled_from(["", " ", "1", "embedded", "../../etc", "a red circle"])


@settings(max_examples=40, deadline=None)
@given(call=st.sampled_from(["add_layer", "remove_layer", "edit_layer", "undo", "redo", "start_from_prompt",
                             "download_session", "export_png", "new_session", "paint_preset", "show_layers"]),
       data=st.data())
def test_no_ui_value_raises_in_a_callback(tab, call, data):
    """Whatever a client sends, a callback answers with a view or a message: never an exception (which
    Gradio would show as a bare "Error"). The Advanced accordion's values are fuzzed with the rest."""
    args = {"add_layer": 4 + 4, "remove_layer": 2 + 4, "edit_layer": 5 + 4, "undo": 0, "redo": 0,
            "start_from_prompt": 3 + 5, "download_session": 0, "export_png": 0, "new_session": 0, "paint_preset": 1,
            "show_layers": 1}[call]
    values = [data.draw(UI_VALUES) for _ in range(args)]
    key = data.draw(st.sampled_from(["fuzz", "other", None]))
    method = getattr(tab, call)
    extra = {"progress": None} if call in ("add_layer", "remove_layer", "edit_layer", "start_from_prompt") else {}
    result = method(key, *values, **extra)
    message = result[3] if len(result) > 3 else result[-1]  # a view's status line, or a file's (or a message)
    skipped = call == "paint_preset" and result == (gr.skip(), gr.skip())  # "(paint it…)": nothing to do
    assert isinstance(result, tuple) and (isinstance(message, str) or skipped), result
    if call in ("download_session", "export_png") and result[0] is None:
        assert result[1].startswith("⚠️")
    if not skipped:
        assert all(c in string.printable or ord(c) > 127 for c in message)


@FUZZ
@given(lines=st.lists(JSON.map(json.dumps) | st.text(max_size=30), min_size=1, max_size=6))
def test_any_jobs_file_gives_jobs_or_failures_by_line(tmp_path, lines):
    from pipelines.batch import parse_jobs
    path = tmp_path / f"jobs{len(list(tmp_path.iterdir()))}.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines))
    jobs, failures = parse_jobs(path)
    assert len(jobs) + len(failures) == sum(1 for line in lines if line.replace("\n", " ").strip())  # one per line
    assert all(f["error"].startswith(f"line {f['line']}") for f in failures)
    assert len({j.id for j in jobs}) == len(jobs) and all("/" not in j.id for j in jobs)
