"""The three worlds: determinism, ground truth, rendering speed, and clear errors on bad input."""

import json

import numpy as np
import pytest

from formats import StreetClip, read_transforms
from world.flat import FlatObject, FlatSpec, render_flat, sample_edit_scenario, sample_flat_spec
from world.orbit import (OrbitObject, OrbitSpec, control_map, move_object, recolour_object,
                         render_orbit, sample_orbit_spec, scale_object, write_nerfstudio_dataset)
from world.street import (neighbour_overlap_deg, render_street_clip, render_street_frame,
                          sample_street_clip)
from world.vocab import BACKGROUNDS, COLOURS, SHAPES


# ---- flat ----

def test_flat_is_deterministic_by_seed():
    a, b = render_flat(sample_flat_spec(7)), render_flat(sample_flat_spec(7))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.caption == b.caption
    assert sample_flat_spec(7) != sample_flat_spec(8)


def test_flat_vocabulary_is_large_enough():
    assert {"grass", "sand", "water", "road", "snow"} <= set(BACKGROUNDS)
    assert {"circle", "square", "triangle"} <= set(SHAPES) and len(COLOURS) >= 5


def test_flat_ground_truth_masks_and_boxes():
    spec = FlatSpec("sand", (FlatObject("red", "square", (0.5, 0.5), 0.5),))
    scene = render_flat(spec, 64)
    assert scene.caption == "a red square on sand"
    assert scene.boxes.tolist() == [[16, 16, 48, 48]]
    assert scene.masks[0].sum() == 32 * 32
    assert (scene.image[scene.masks[0]] == COLOURS["red"]).all()
    assert not (scene.image[~scene.masks[0]] == COLOURS["red"]).all(-1).any()


def test_flat_depth_order_decides_occlusion():
    back = FlatObject("red", "square", (0.4, 0.5), 0.4, depth=1)
    front = FlatObject("blue", "circle", (0.6, 0.5), 0.4, depth=2)
    for objects in ((back, front), (front, back)):
        scene = render_flat(FlatSpec("grass", objects), 64)
        i_front = objects.index(front)
        assert scene.visible_fraction()[i_front] == 1.0
        assert scene.visible_fraction()[1 - i_front] < 1.0
        assert not (scene.masks[0] & scene.masks[1]).any()


def test_flat_objects_per_scene_in_range():
    counts = {len(sample_flat_spec(s).objects) for s in range(60)}
    assert counts == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("kwargs, field", [
    (dict(colour="teal", shape="circle", center=(0.5, 0.5), size=0.2), "colour"),
    (dict(colour="red", shape="hexagon", center=(0.5, 0.5), size=0.2), "shape"),
    (dict(colour="red", shape="circle", center=(0.5, 0.5), size=0.0), "size"),
    (dict(colour="red", shape="circle", center=(0.5, 0.5), size=-0.1), "size"),
])
def test_flat_bad_object_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FlatObject(**kwargs)


def test_flat_bad_background_names_the_field():
    with pytest.raises(ValueError, match="background"):
        FlatSpec("lava")


def test_edit_scenario_masks_cover_targets_loosely():
    for seed in range(20):
        scenario = sample_edit_scenario(seed, resolution=64)
        assert 2 <= len(scenario.layers) <= 5
        final = render_flat(scenario.final_spec(), 64)
        for layer, full in zip(scenario.layers, final.full_masks):
            assert layer.rough_mask.shape == (64, 64)
            assert (layer.rough_mask | ~full).all(), "the rough mask covers its object"
            assert layer.rough_mask.sum() > 1.2 * full.sum(), "and loosely"
            assert layer.prompt == layer.target.prompt


# ---- orbit ----

def test_orbit_views_have_ground_truth(tmp_path):
    spec = sample_orbit_spec(3, n_cameras=6)
    views = render_orbit(spec)
    assert len(views) == 6
    for view in views:
        assert view.rgb.shape == (64, 64, 3) and view.rgb.dtype == np.uint8
        assert view.depth.shape == (64, 64)
        ids = set(np.unique(view.instance)) - {-1, 0}
        assert ids and ids <= set(range(1, len(spec.objects) + 1))
        obj = view.instance > 0
        assert np.isfinite(view.depth[obj]).all() and (view.depth[obj] > 0).all()
    folder = write_nerfstudio_dataset(spec, views, tmp_path / "scene")
    data = json.loads((folder / "transforms.json").read_text())
    assert len(data["frames"]) == 6 and data["camera_model"] == "OPENCV"
    cams = read_transforms(folder / "transforms.json").cameras
    np.testing.assert_allclose(cams[2].c2w, views[2].camera.c2w, atol=1e-9)


def test_orbit_edits_change_only_the_edited_object():
    spec = sample_orbit_spec(5, n_objects=3, n_cameras=4)
    before = render_orbit(spec)
    recoloured = render_orbit(recolour_object(spec, 0, "black" if spec.objects[0].colour != "black" else "red"))
    for a, b in zip(before, recoloured):
        np.testing.assert_array_equal(a.instance, b.instance)
        changed = (a.layout != b.layout).any(-1)
        assert changed.any() == (a.instance == 1).any()
        assert not changed[a.instance != 1].any()
    moved = render_orbit(move_object(spec, 1, (0.5, 0.0)))
    assert any((a.instance == 2).sum() != (b.instance == 2).sum() or ((a.instance == 2) != (b.instance == 2)).any()
               for a, b in zip(before, moved))
    bigger = render_orbit(scale_object(spec, 2, 1.3))
    assert sum((b.instance == 3).sum() for b in bigger) > sum((a.instance == 3).sum() for a in before)
    cmap = control_map(before[0])
    assert cmap.shape == (64, 64, 4) and 0 <= cmap.min() and cmap.max() <= 1


def test_orbit_bad_input_names_the_field():
    with pytest.raises(ValueError, match="n_cameras"):
        OrbitSpec((), n_cameras=0)
    with pytest.raises(ValueError, match="primitive"):
        OrbitObject("pyramid", "red", (0, 0), 0.5)
    with pytest.raises(ValueError, match="scale"):
        OrbitObject("box", "red", (0, 0), 0.0)
    with pytest.raises(IndexError, match="index"):
        move_object(sample_orbit_spec(0, n_objects=2), 5, (1, 0))


# ---- street ----

def test_street_rig_follows_nuscenes_order_with_small_overlaps():
    clip = sample_street_clip(0)
    names = [c.name for c in clip.rig]
    assert names == ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]
    assert all(7 <= o <= 10 for o in neighbour_overlap_deg(clip.rig))


def test_street_clip_renders_with_layout_maps():
    # Its speed (6 cameras × 8 frames at 64 px) is measured by benchmarks.oracle, not asserted here.
    views = render_street_clip(sample_street_clip(1, n_frames=8))
    assert len(views) == 8 and all(len(f) == 6 for f in views)
    layouts = np.stack([v.layout for f in views for v in f])
    assert (layouts.sum(-1) > 0).any(), "some box is visible"
    boxes = np.stack([v.instance > 0 for f in views for v in f])
    np.testing.assert_array_equal(layouts.sum(-1) > 0, boxes)


def test_street_ego_moves_and_layout_round_trips(tmp_path):
    clip = sample_street_clip(2, n_frames=3)
    xs = [f.ego_pose[0, 3] for f in clip.frames]
    assert xs[0] < xs[1] < xs[2]
    clip.save(tmp_path / "layout.json")
    again = StreetClip.load(tmp_path / "layout.json")
    for a, b in zip(render_street_frame(clip, 1), render_street_frame(again, 1)):
        np.testing.assert_array_equal(a.rgb, b.rgb)


def test_street_camera_count_zero_is_an_error():
    with pytest.raises(ValueError, match="n_cameras"):
        sample_street_clip(0, n_cameras=0)
