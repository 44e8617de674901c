"""The driving-video tab: a sampled clip or an uploaded layout in, a mosaic video and a zip out; bad
values are messages, and a failed request leaves nothing in the work folder."""

import json
import zipfile
from types import SimpleNamespace

import pytest
from diffusers import StableDiffusionControlNetPipeline

from app.driving import DrivingTab
from app.files import WorkFolder
from app.models import ModelCache
from tests.tiny_models import sd1_components, tiny_controlnet
from world.street import sample_street_clip


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drive") / "tiny-drive"
    components = sd1_components()
    StableDiffusionControlNetPipeline(**components, controlnet=tiny_controlnet(components["unet"])).save_pretrained(folder)
    return DrivingTab(ModelCache([str(folder)]), WorkFolder())


def test_a_sampled_clip_gives_a_mosaic_video_and_a_zip(tab):
    video, archive, message = tab.generate(None, 3, None, 2, "a street view", "a car", "", "", 1, progress=None)
    assert video.endswith("surround.mp4") and not message.startswith("⚠️")
    names = zipfile.ZipFile(archive).namelist()
    assert "CAM_FRONT.mp4" in names and "layout.json" in names and "CAM_BACK/000001.png" in names


def test_an_uploaded_layout_is_used(tab, tmp_path):
    clip = sample_street_clip(5, n_frames=2, image_size=(32, 32), n_cameras=3)
    path = tmp_path / "clip.json"
    path.write_text(json.dumps(clip.to_json()))
    video, archive, message = tab.generate(None, 0, str(path), 2, "a street view", "", "", "", 1, progress=None)
    assert video and "3 cameras" in message


@pytest.mark.parametrize("args, message", [
    (dict(frames=0), "frames: expected a whole number"),
    (dict(frames=1.5), "frames: expected a whole number"),
    (dict(seed=-1), "seed: expected"),
    (dict(model_name="../secret"), "model: choose one of"),
])
def test_bad_values_are_messages_and_leave_nothing(tab, args, message):
    values = dict(model_name=None, seed=0, layout_file=None, frames=1, prompt="a street view", car="", truck="",
                  pedestrian="", steps=1) | args
    before = tab.work.size()
    video, archive, text = tab.generate(progress=None, **values)
    assert video is None and archive is None and message in text
    assert tab.work.size() == before


def test_a_bad_layout_file_is_named(tab, tmp_path):
    data = sample_street_clip(1, n_frames=2).to_json()
    data["rig"] = data["rig"][:1]
    path = tmp_path / "one-camera.json"
    path.write_text(json.dumps(data))
    _, _, text = tab.generate(None, 0, str(path), 1, "a street view", "", "", "", 1, progress=None)
    assert "layout.rig" in text and str(tmp_path) not in text


def test_stop_ends_the_generation_after_its_frame_and_leaves_nothing(tab):
    """Guards: a long driving video with no way to stop it (the layered tab's Stop, same pattern)."""
    page = SimpleNamespace(session_hash="page-1")
    calls = []

    def progress(fraction, desc=""):
        calls.append(desc)
        tab.stop(page)
    before = tab.work.size()
    video, archive, message = tab.generate(None, 3, None, 2, "a street view", "", "", "", 1, progress=progress,
                                           request=page)
    assert message.startswith("Stopped") and video is None and archive is None
    assert tab.work.size() == before
