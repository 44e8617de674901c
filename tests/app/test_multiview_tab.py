"""The multi-view tab: a sampled orbit scene or an uploaded zipped dataset in; a grid, a turntable and
the edited dataset as a zip out; bad values and bad zips are messages that leave nothing behind."""

import shutil
import zipfile
from types import SimpleNamespace
from dataclasses import replace

import imageio.v2 as imageio
import numpy as np
import pytest
from diffusers import StableDiffusionControlNetPipeline
from PIL import Image

from app.files import WorkFolder
from app.multiview import MultiViewTab
from app.models import ModelCache
from tests.test_multiview_edit import BAD_DATASETS, _without_scene, snapshot
from tests.tiny_models import sd1_components, tiny_controlnet
from world.orbit import render_orbit, sample_orbit_spec, write_nerfstudio_dataset

VALUES = dict(model_name=None, seed=2, dataset_zip=None, object_index=0, move_x=0.5, move_y=0.0, scale=1.0,
              colour="", method="QNeRF blend (faster)", steps=1, fit_seconds=1)


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mv") / "tiny-mv"
    components = sd1_components()
    StableDiffusionControlNetPipeline(**components, controlnet=tiny_controlnet(components["unet"])).save_pretrained(folder)
    return MultiViewTab(ModelCache([str(folder)]), WorkFolder())


def test_a_sampled_scene_gives_a_grid_a_turntable_and_a_dataset_zip(tab):
    """Guards: a turntable of the edited views alone (each frame must show the source view beside its
    edit, as the grid's columns do), or frames out of the views' order."""
    grid, turntable, archive, message = tab.generate(progress=None, **VALUES)
    assert grid.endswith("grid.png") and turntable.endswith(".mp4") and not message.startswith("⚠️"), message
    names = zipfile.ZipFile(archive).namelist()
    assert "transforms.json" in names and "images/frame_00007.png" in names
    rows = np.asarray(Image.open(grid).convert("RGB")).astype(np.float64)
    size = rows.shape[0] // 2
    pairs = [np.concatenate([rows[:size, k * size:(k + 1) * size], rows[size:, k * size:(k + 1) * size]], 1)
             for k in range(8)]  # per view: source | edited, from the grid
    with imageio.get_reader(turntable) as reader:
        frames = [np.asarray(f).astype(np.float64) for f in reader]
    assert len(frames) == 3 * 8
    scale = frames[0].shape[0] // size
    assert frames[0].shape[:2] == (size * scale, 2 * size * scale)
    for k, frame in enumerate(frames[:8]):  # each frame, shrunk back, is its view's pair (up to the video codec)
        shrunk = frame.reshape(size, scale, 2 * size, scale, 3).mean((1, 3))
        errors = [np.abs(shrunk - pair).mean() for pair in pairs]
        assert int(np.argmin(errors)) == k and errors[k] < 8, (k, errors)


def test_an_uploaded_strata_dataset_is_edited(tab, tmp_path):
    spec = replace(sample_orbit_spec(4), n_cameras=4, resolution=32)
    write_nerfstudio_dataset(spec, render_orbit(spec), tmp_path / "scene")
    archive = shutil.make_archive(str(tmp_path / "scene"), "zip", tmp_path, "scene")  # a zip of one folder
    grid, _, result, message = tab.generate(progress=None, **(VALUES | dict(dataset_zip=archive, colour="red",
                                                                            move_x=0.0)))
    assert grid and "4 views edited" in message, message


@pytest.mark.parametrize("args, message", [
    (dict(steps=0), "steps: expected a whole number"),
    (dict(object_index=9), "object 9 does not exist"),
    (dict(move_x=0.0, scale=1.0, colour=""), "choose a move"),
    (dict(scale=9.0), "scale: expected"),
    (dict(method="paste"), "method: expected"),
    (dict(model_name="../secret"), "model: choose one of"),
])
def test_bad_values_are_messages_and_leave_nothing(tab, args, message):
    before = tab.work.size()
    grid, turntable, archive, text = tab.generate(progress=None, **(VALUES | args))
    assert grid is None and archive is None and message in text, text
    assert tab.work.size() == before


def test_bad_zips_are_named_without_server_paths(tab, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../escape.json", "{}")
    not_zip = tmp_path / "not.zip"
    not_zip.write_text("hello")
    empty_scene = tmp_path / "noscene.zip"
    with zipfile.ZipFile(empty_scene, "w") as z:
        z.writestr("images/a.png", b"x")
    for path, message in ((bad, "is not a dataset file"), (not_zip, "not a zip file"),
                          (empty_scene, "one transforms.json")):
        _, _, _, text = tab.generate(progress=None, **(VALUES | dict(dataset_zip=str(path))))
        assert message in text and str(tmp_path) not in text, text


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_a_bad_uploaded_dataset_is_named_and_leaves_the_work_folder_as_it_was(tab, tmp_path, case):
    """Guards: an upload that passes the zip checks but not the dataset's (malformed transforms.json,
    missing frames, views of different sizes, one view) ending as a traceback or a server path, or
    leaving its unpacked scratch files or a half-written output in the work folder."""
    spec = replace(sample_orbit_spec(4), n_cameras=3, resolution=16)
    write_nerfstudio_dataset(spec, render_orbit(spec), tmp_path / "scene")
    break_it, message = BAD_DATASETS[case]
    break_it(tmp_path / "scene")
    archive = shutil.make_archive(str(tmp_path / "scene"), "zip", tmp_path, "scene")
    before = snapshot(tab.work.root)
    grid, turntable, result, text = tab.generate(progress=None, **(VALUES | dict(dataset_zip=archive)))
    assert grid is None and turntable is None and result is None, text
    assert text.startswith(f"⚠️ {message}") and str(tmp_path) not in text, text
    assert snapshot(tab.work.root) == before


def test_stop_ends_the_edit_at_its_next_step_and_leaves_nothing(tab):
    """Guards: a long multi-view edit with no way to stop it (the layered tab's Stop, same pattern)."""
    page = SimpleNamespace(session_hash="page-1")
    calls = []

    def progress(fraction, desc=""):
        calls.append(desc)
        tab.stop(page)  # pressed during the first step
    before = tab.work.size()
    grid, turntable, archive, message = tab.generate(progress=progress, request=page, **VALUES)
    assert message.startswith("Stopped") and grid is None and archive is None and len(calls) == 1
    assert tab.work.size() == before
    grid, *_ = tab.generate(progress=None, request=page, **VALUES)  # the next edit is not stopped
    assert grid is not None


def test_an_uploaded_folder_with_control_maps_is_edited_with_the_prompt_given(tab, tmp_path):
    """Guards: a plain nerfstudio folder with a controls/ folder (no Strata scene) that the app could not
    edit, for want of a prompt field (the CLI has --prompt); without one, the message says what is
    missing and nothing is left behind."""
    spec = replace(sample_orbit_spec(4), n_cameras=3, resolution=16)
    folder = tmp_path / "scene"
    write_nerfstudio_dataset(spec, render_orbit(spec), folder)
    _without_scene(folder)
    (folder / "controls").mkdir()
    for k in range(3):
        Image.new("RGBA", (16, 16), (200, 30, 30, 128)).save(folder / "controls" / f"frame_{k:05d}.png")
    archive = shutil.make_archive(str(folder), "zip", tmp_path, "scene")
    before = snapshot(tab.work.root)
    grid, _, result, text = tab.generate(progress=None, **(VALUES | dict(dataset_zip=archive)))
    assert grid is None and text.startswith("⚠️ prompt: the scene after the edit is needed"), text
    assert snapshot(tab.work.root) == before
    grid, _, result, text = tab.generate(progress=None, **(VALUES | dict(dataset_zip=archive, prompt="a red ball")))
    assert grid and "3 views edited" in text, text
    _, _, _, text = tab.generate(progress=None, **(VALUES | dict(prompt="x" * 301)))
    assert "prompt: expected text of at most 300 characters" in text, text
