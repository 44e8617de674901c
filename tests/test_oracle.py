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
def test_oracle_reads_each_shape_at_several_resolutions(shape):
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
    left[:32, :32] = True  # a mask about the object's size (it covers 0.16 of it)
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


def _scene_with(pixels: np.ndarray, colour=(214, 36, 36), background="grass", size=64) -> np.ndarray:
    """A flat background with `colour` painted where pixels is True."""
    image = render_flat(FlatSpec(background, ()), size).image.copy()
    image[pixels] = colour
    return image


def _mask(y0, y1, x0, x1, size=64):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("probe, shape", [
    ("speckle", "triangle"),  # found: a 50 % random speckle read as a triangle (fill 0.5)
    ("speck", "square"),      # found: a 4×4 speck read as a square
    ("ellipse", "circle"),    # found: a 2:1 ellipse read as a circle
    ("bar", "square"),        # found: a 30×6 bar read as a square
])
def test_the_probes_that_fooled_the_oracle_are_not_edits(probe, shape):
    mask = _mask(10, 50, 10, 50)
    rng = np.random.default_rng(0)
    painted = np.zeros((64, 64), bool)
    if probe == "speckle":
        painted[14:46, 14:46] = rng.random((32, 32)) < 0.5
    elif probe == "speck":
        painted[28:32, 28:32] = True
    elif probe == "ellipse":
        yy, xx = np.mgrid[:64, :64]
        painted = ((xx - 30) / 16) ** 2 + ((yy - 30) / 8) ** 2 <= 1
    else:
        painted[27:33, 15:45] = True
    reading = read_image(_scene_with(painted))
    assert not object_inside_mask(reading, "red", shape, mask), [(o.shape, o.area, o.solidity, o.aspect)
                                                                 for o in reading.objects]


def _turned(points, degrees, centre=(32, 32), size=64) -> np.ndarray:
    """The pixels (sampled at their centres) inside the convex polygon `points` (x, y, about the origin),
    turned by `degrees` and moved to `centre`."""
    a = np.deg2rad(degrees)
    corners = np.asarray(points, float) @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + centre
    yy, xx = np.mgrid[:size, :size] + 0.5
    inside = np.ones((size, size), bool)
    for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0)):
        cross = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
        inside &= cross >= 0 if _clockwise(corners) else cross <= 0
    return inside


def _clockwise(corners) -> bool:
    x, y = corners[:, 0], corners[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) > 0


def _ellipse(a, b, degrees, centre=(32, 32), size=64) -> np.ndarray:
    t = np.deg2rad(degrees)
    yy, xx = np.mgrid[:size, :size] + 0.5
    u = (xx - centre[0]) * np.cos(t) + (yy - centre[1]) * np.sin(t)
    v = -(xx - centre[0]) * np.sin(t) + (yy - centre[1]) * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


@pytest.mark.parametrize("degrees", [20, 45, 70])
@pytest.mark.parametrize("probe, shape", [("ellipse", "circle"), ("ellipse", "triangle"), ("bar", "square"),
                                          ("bar", "triangle")])
def test_turned_probes_are_not_edits(probe, shape, degrees):
    """Guards against a shape read from the bounding box's fill: a 2:1 ellipse or a 30×6 bar turned by 45°
    fills its box like a circle or a triangle (what the box-fill oracle read them as)."""
    painted = _ellipse(16, 8, degrees) if probe == "ellipse" else _turned([(-15, -3), (15, -3), (15, 3), (-15, 3)],
                                                                          degrees)
    reading = read_image(_scene_with(painted))
    assert not object_inside_mask(reading, "red", shape, _mask(4, 60, 4, 60)), [
        (o.shape, o.roundness, o.aspect) for o in reading.objects]
    assert [o.shape for o in reading.objects] == ["irregular"]


@pytest.mark.parametrize("degrees", [0, 15, 30, 45, 60])
@pytest.mark.parametrize("painted, shape", [("square", "square"), ("rectangle", "square"), ("triangle", "triangle"),
                                            ("circle", "circle"), ("oval", "circle")])
def test_turned_shapes_read_as_themselves(painted, shape, degrees):
    """The shape comes from the outline at any angle: a square turned 45° (a diamond) is a square, not the
    triangle its box fill says; a turned triangle is a triangle; a slightly stretched shape (1.25:1) keeps
    its name (an oval is a circle, not the square the plain roundness of an oval suggests)."""
    outline = {"square": [(-10, -10), (10, -10), (10, 10), (-10, 10)], "rectangle": [(-11, -9), (11, -9), (11, 9), (-11, 9)],
               "triangle": [(-10, 10), (10, 10), (0, -10)]}  # the world's triangle: base = height
    pixels = (_ellipse(10, 10, degrees) if painted == "circle" else _ellipse(11, 9, degrees) if painted == "oval"
              else _turned(outline[painted], degrees))
    reading = read_image(_scene_with(pixels))
    assert [o.shape for o in reading.objects] == [shape], [(o.shape, o.roundness, o.aspect) for o in reading.objects]


def test_success_needs_the_object_in_the_mask_at_a_plausible_size():
    """Guards against success that ignores the mask (and retention counted by colour alone)."""
    scene = render_flat(FlatSpec("sand", (FlatObject("red", "circle", (0.3, 0.3), 0.3),)), 64)
    reading = read_image(scene.image)
    around = _mask(6, 34, 6, 34)
    assert object_inside_mask(reading, "red", "circle", around)
    assert not object_inside_mask(reading, "red", "circle", _mask(36, 64, 36, 64))  # elsewhere
    assert not object_inside_mask(reading, "red", "square", around)  # another shape
    assert not object_inside_mask(reading, "blue", "circle", around)  # another colour
    assert not object_inside_mask(reading, "red", "circle", _mask(0, 64, 0, 64))  # a speck of the mask's area
    half = _mask(6, 34, 6, 19)  # covers the circle's left half only: its centroid is outside
    assert not object_inside_mask(reading, "red", "circle", half)


def test_ground_truth_accuracy_with_occluded_objects_included():
    """Every visible object counts, occluded ones too: a partly hidden object may read as another shape
    (its outline is not the shape's), but its colour and box are still found."""
    colour = shape = total = 0
    for seed in range(80):
        scene = render_flat(sample_flat_spec(2000 + seed, max_overlap=0.2))
        reading = read_image(scene.image)
        visible = scene.visible_fraction()
        for i, (obj, box) in enumerate(zip(scene.spec.objects, scene.boxes)):
            if scene.masks[i].sum() < 16:
                continue
            total += 1
            match = best_match(reading, obj.colour, box)
            colour += match is not None
            shape += bool(match and match.shape == obj.shape) or visible[i] < 0.99
    assert total > 200 and colour / total >= 0.99 and shape / total >= 0.99
