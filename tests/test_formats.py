"""The product's file formats: nerfstudio transforms.json (read back by nerfstudio's own parser) and
the street layout JSON, round trips and every malformed field named."""

import json
import math
import sys
import types

import numpy as np
import pytest
from PIL import Image

from formats import Camera, StreetClip, read_transforms, write_transforms
from formats.layout import CLASSES, MAX_BOXES
from world.geometry import look_at
from world.street import sample_street_clip
from world.vocab import STREET_CLASSES


def _cameras(n=4, width=32, height=24, fov=60.0):
    cams = []
    for k in range(n):
        angle = 2 * math.pi * k / n
        eye = (3 * math.cos(angle), 3 * math.sin(angle), 1.5)
        cams.append(Camera.from_fov(look_at(eye, (0, 0, 0.5)), fov, width, height))
    return cams


def _dataset(folder, cameras, per_frame=False):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, cam in enumerate(cameras):
        name = f"images/frame_{k:05d}.png"
        (folder / "images").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((cam.height, cam.width, 3), np.uint8)).save(folder / name)
        names.append(name)
    return write_transforms(folder, cameras, names)


@pytest.mark.parametrize("shared", [True, False])
def test_transforms_round_trip(tmp_path, shared):
    cameras = _cameras()
    if not shared:  # per-frame intrinsics, as nerfstudio allows
        cameras[1] = Camera(cameras[1].c2w, 30.0, 31.0, 15.5, 12.5, 32, 24)
    path = _dataset(tmp_path / "scene", cameras)
    data = json.loads(path.read_text())
    assert ("fl_x" in data) == shared and ("fl_x" in data["frames"][0]) == (not shared)
    scene = read_transforms(tmp_path / "scene")
    for a, b in zip(scene.cameras, cameras):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)
        assert (a.fx, a.fy, a.cx, a.cy, a.width, a.height) == (b.fx, b.fy, b.cx, b.cy, b.width, b.height)
    assert scene.images[2] == (tmp_path / "scene" / "images" / "frame_00002.png").resolve()
    assert not list((tmp_path / "scene").glob(".*partial"))  # written through a temporary file


def test_nerfstudios_own_parser_reads_what_we_write(tmp_path, monkeypatch):
    """nerfstudio's dataparser imports torch.utils.tensorboard (for its writer only); tensorboard is not
    installed here, so a stand-in takes its place for the import."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=object))
    try:
        from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    except ImportError as err:
        pytest.skip(f"nerfstudio's dataparser does not import here: {err}")
    cameras = _cameras(6)
    _dataset(tmp_path / "scene", cameras)
    config = NerfstudioDataParserConfig(data=tmp_path / "scene", orientation_method="none", center_method="none",
                                        auto_scale_poses=False, scale_factor=1.0, eval_mode="all")
    outputs = config.setup().get_dataparser_outputs("train")
    parsed = outputs.cameras
    assert len(parsed) == 6
    for k, cam in enumerate(cameras):
        np.testing.assert_allclose(parsed.camera_to_worlds[k].numpy(), cam.c2w_opengl()[:3], atol=1e-5)
        assert float(parsed.fx[k]) == pytest.approx(cam.fx) and int(parsed.width[k]) == cam.width


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("frames"), "frames: expected a non-empty list"),
    (lambda d: d.update(frames=[]), "frames: expected a non-empty list"),
    (lambda d: d.pop("fl_x"), r"frames\[0\].fl_x: missing"),
    (lambda d: d.update(fl_x=0), r"frames\[0\].fl_x: expected a finite positive number"),
    (lambda d: d.update(w=float("nan")), r"frames\[0\].w: expected a finite positive number"),
    (lambda d: d.update(k1=0.1), r"frames\[0\].k1: lens distortion"),
    (lambda d: d.update(camera_model="OPENCV_FISHEYE"), "camera_model"),
    (lambda d: d["frames"][1].pop("transform_matrix"), r"frames\[1\].transform_matrix: missing"),
    (lambda d: d["frames"][1].update(transform_matrix=[[0] * 4] * 4), r"frames\[1\].transform_matrix: expected a finite, invertible"),
    (lambda d: d["frames"][2].update(file_path="images/missing.png"), r"frames\[2\].file_path: 'images/missing.png' does not exist"),
    (lambda d: d["frames"][2].update(file_path="../../etc/passwd"), "outside the dataset folder"),
    (lambda d: d["frames"][0].pop("file_path"), r"frames\[0\].file_path: missing"),
])
def test_malformed_transforms_name_the_field(tmp_path, mutate, message):
    path = _dataset(tmp_path / "scene", _cameras())
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_transforms(path)


def test_missing_and_corrupt_transforms_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_transforms(tmp_path)
    (tmp_path / "transforms.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_transforms(tmp_path)
    (tmp_path / "transforms.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected an object"):
        read_transforms(tmp_path)


# ---- the street layout

def test_layout_round_trips_and_classes_agree_with_the_world(tmp_path):
    clip = sample_street_clip(2, n_frames=3)
    clip.save(tmp_path / "layout.json")
    again = StreetClip.load(tmp_path / "layout.json")
    assert again.to_json() == clip.to_json()
    assert set(STREET_CLASSES) == set(CLASSES)  # the world renders every class the format accepts
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("rig"), "layout: missing field 'rig'"),
    (lambda d: d["rig"].clear(), r"layout.rig: expected 1 to"),
    (lambda d: d["frames"][0].pop("ego_pose"), r"frames\[0\]: missing field 'ego_pose'"),
    (lambda d: d["frames"][0]["boxes"][0].pop("size"), r"boxes\[0\]: missing field 'size'"),
    (lambda d: d["frames"][0]["boxes"][0].update({"class": "bus"}), r"boxes\[0\].class"),
    (lambda d: d["frames"][0]["boxes"][0].update({"size": [4, 0, 1]}), r"boxes\[0\].size: expected three positive"),
    (lambda d: d["frames"][0]["boxes"][0].update({"size": [4, float("nan"), 1]}), r"boxes\[0\].size\[1\]: expected a finite"),
    (lambda d: d["frames"][0]["boxes"][0].update({"yaw": float("inf")}), r"boxes\[0\].yaw: expected a finite"),
    (lambda d: d["frames"][0]["boxes"][0].update({"id": True}), r"boxes\[0\].id: expected an integer"),
    (lambda d: d["frames"][0]["boxes"][0].update({"position": [0, 0]}), r"boxes\[0\].position: expected a list of 3"),
    (lambda d: d["frames"][0]["boxes"][0].update({"colour": 3}), r"boxes\[0\].colour: expected a word"),
    (lambda d: d["rig"][0].update({"intrinsics": [[1, 2], [3, 4]]}), r"rig\[0\].intrinsics"),
    (lambda d: d["rig"][0]["intrinsics"][0].__setitem__(0, 0.0), r"rig\[0\].intrinsics: expected .* fx, fy > 0"),
    (lambda d: d["rig"][1].update({"extrinsics": np.zeros((4, 4)).tolist()}), r"rig\[1\].extrinsics: expected a rigid"),
    (lambda d: d["rig"][1].update({"fov_deg": -10}), r"rig\[1\].fov_deg: expected a field of view"),
    (lambda d: d.update(image_size=[64, 100_000]), "image_size"),
    (lambda d: d.update(image_size=[64.0, 64]), "image_size"),
    (lambda d: d["frames"][0].update(boxes=[d["frames"][0]["boxes"][0]] * (MAX_BOXES + 1)), r"boxes: expected 0 to"),
    (lambda d: d.update(version=2), "layout.version"),
])
def test_layout_errors_name_the_field(mutate, field):
    data = sample_street_clip(0, n_frames=1).to_json()
    mutate(data)
    with pytest.raises(ValueError, match=field):
        StreetClip.from_json(data)


def test_layout_files_that_are_missing_corrupt_or_not_objects(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        StreetClip.load(tmp_path / "nope.json")
    path = tmp_path / "layout.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        StreetClip.load(path)
    path.write_text("[]")
    with pytest.raises(ValueError, match="layout: expected an object"):
        StreetClip.load(path)
