"""The oracle reads world images back; reprojection tells consistent views from inconsistent ones."""

import numpy as np
import pytest

from world.flat import FlatObject, FlatSpec, render_flat, sample_flat_spec
from world.oracle import best_match, box_iou, object_inside_mask, read_image
from world.orbit import render_orbit, sample_orbit_spec
from world.reproject import consistency, warp
from world.street import render_street_frame, sample_street_clip


def test_oracle_reads_ground_truth_scenes():
    found = total = 0
    for seed in range(60):
        scene = render_flat(sample_flat_spec(1000 + seed))
        reading = read_image(scene.image)
        assert reading.background == scene.spec.background
        for obj, box in zip(scene.spec.objects, scene.boxes):
            match = best_match(reading, obj.colour, box)
            total += 1
            found += bool(match and match.shape == obj.shape and box_iou(match.box, box) >= 0.5)
    assert found / total >= 0.99


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_oracle_shape_by_fill_ratio_at_several_resolutions(shape):
    for resolution in (32, 64, 128):
        spec = FlatSpec("water", (FlatObject("yellow", shape, (0.5, 0.5), 0.4),))
        reading = read_image(render_flat(spec, resolution).image)
        assert [o.shape for o in reading.objects] == [shape]


def test_oracle_tolerates_noise_and_blur():
    rng = np.random.default_rng(0)
    scene = render_flat(FlatSpec("snow", (FlatObject("purple", "circle", (0.3, 0.3), 0.35),
                                          FlatObject("orange", "square", (0.7, 0.7), 0.3))), 64)
    noisy = np.clip(scene.image + rng.normal(0, 12, scene.image.shape), 0, 255).astype(np.uint8)
    reading = read_image(noisy)
    assert reading.background == "snow"
    assert sorted((o.colour, o.shape) for o in reading.objects) == [("orange", "square"), ("purple", "circle")]


def test_shading_aware_reading_finds_every_object_of_orbit_renders():
    from world.geometry import SHADING
    found = {None: 0, SHADING: 0}
    total = 0
    for seed in range(12):
        spec = sample_orbit_spec(seed, (1, 3), n_cameras=8)
        view = render_orbit(spec, [seed % 8])[0]
        for k, obj in enumerate(spec.objects, start=1):
            ys, xs = np.nonzero(view.instance == k)
            if len(ys) < 30:
                continue
            total += 1
            box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            for shading in found:
                found[shading] += any(box_iou(o.box, box) >= 0.5 for o in read_image(view.rgb, shading=shading).find(obj.colour))
    assert total >= 15 and found[SHADING] == total, "with the shading range every visible object is read whole"
    assert found[None] < total, "flat palette distances split shaded objects (why the option exists)"


def test_object_inside_mask():
    scene = render_flat(FlatSpec("grass", (FlatObject("red", "square", (0.3, 0.3), 0.2),)), 64)
    reading = read_image(scene.image)
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    assert object_inside_mask(reading, "red", "square", left)
    assert not object_inside_mask(reading, "red", "square", ~left)
    assert not object_inside_mask(reading, "red", "circle", left)


def test_oracle_rejects_bad_images():
    with pytest.raises(ValueError, match="image"):
        read_image(np.zeros((8, 8)))


def test_reprojection_of_ground_truth_orbit_views_agrees():
    views = render_orbit(sample_orbit_spec(4, n_cameras=8))
    for i in range(8):
        a, b = views[i], views[(i + 1) % 8]
        good = consistency(a.rgb, a.depth, a.camera, b.rgb, b.depth, b.camera)
        assert good.covisible_fraction > 0.2
        assert good.mae <= 2 / 255
        wrong = consistency(views[(i + 3) % 8].rgb, views[(i + 3) % 8].depth, a.camera, b.rgb, b.depth, b.camera)
        assert wrong.mae > 4 * good.mae


def test_reprojection_of_ground_truth_street_neighbours_agrees():
    views = render_street_frame(sample_street_clip(3), 0)
    errors, pixels = [], 0
    for i in range(6):
        a, b = views[i], views[(i + 1) % 6]
        score = consistency(a.rgb, a.depth, a.camera, b.rgb, b.depth, b.camera)
        if score.n_pixels:
            errors.append(score.mae * score.n_pixels)
            pixels += score.n_pixels
    assert pixels > 300
    assert sum(errors) / pixels <= 2 / 255


def test_warp_identity_is_exact():
    view = render_orbit(sample_orbit_spec(1, n_cameras=2))[0]
    warped, visible = warp(view.rgb, view.depth, view.camera, view.depth, view.camera)
    assert visible.mean() > 0.7  # all but depth edges and the image border
    np.testing.assert_allclose(warped[visible], view.rgb[visible], atol=1e-6)
