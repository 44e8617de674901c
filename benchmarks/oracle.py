"""Oracle accuracy on ground-truth flat scenes, and reprojection scores of orbit and street renders.

    python -m benchmarks.oracle --n 500 --seed 0 --json out.json

Flat: for n scenes rendered from seeds seed..seed+n-1, the oracle reads each image. An object is
scored when its box side is at least --min-size pixels and it is not occluded (visible fraction
≥ 0.99); count accuracy is over scenes whose objects all qualify. A second row scores every visible
object, occluded ones included (at least 16 visible pixels): colour and box found, and how often the
shape still reads right (an occluded outline need not be its shape's; the harder oracle then says
"irregular" or another shape). The last columns are the fraction of unoccluded objects read as
"irregular" (the solidity and aspect checks: should be 0) and the smallest solidity, the largest aspect
(extents along the principal axes) and the largest elongation (of the second moments) among them.

Reprojection: each view is warped into its ring neighbour with ground-truth depth and cameras
(orbit: neighbouring orbit cameras; street: neighbouring rig cameras in the same frame), and the
mean absolute colour error over co-visible pixels is reported in grey levels (0..255). The wrong
pair warps a view three cameras away with the neighbour's camera: it must score far worse.

JSON keys (stable):
  flat.n_scenes, flat.n_objects_scored, flat.background_acc, flat.colour_acc, flat.shape_acc,
  flat.count_acc, flat.box_iou50_acc, flat.min_size_px, flat.irregular_rate, flat.min_solidity, flat.max_aspect, flat.max_elongation,
  flat.occluded.{n_objects, colour_acc, box_iou50_acc, shape_acc}
  reprojection.orbit_mae_255, reprojection.orbit_wrong_mae_255, reprojection.orbit_covisible_fraction,
  reprojection.street_mae_255, reprojection.street_wrong_mae_255, reprojection.street_covisible_pixels
  render.street_clip_seconds (median of 5: one 6-camera × 8-frame clip at 64 px), render.flat_scene_ms
  machine, seconds
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm.auto import tqdm

from benchmarks.common import machine, print_table, write_json
from world.flat import render_flat, sample_flat_spec
from world.oracle import best_match, box_iou, read_image
from world.orbit import render_orbit, sample_orbit_spec
from world.reproject import consistency
from world.street import render_street_clip, render_street_frame, sample_street_clip


def flat_accuracy(n: int, seed: int, resolution: int, min_size: int) -> dict:
    bg = colour = shape = iou = scored = count_ok = count_scenes = irregular = 0
    occ = {"n": 0, "colour": 0, "iou": 0, "shape": 0}
    solidity, aspect, stretch = [], [], []
    for s in tqdm(range(seed, seed + n), desc="flat scenes", leave=False):
        scene = render_flat(sample_flat_spec(s, max_overlap=0.2), resolution)
        reading = read_image(scene.image)
        bg += reading.background == scene.spec.background
        visible = scene.visible_fraction()
        qualifies = [(b[2] - b[0]) >= min_size and (b[3] - b[1]) >= min_size and v >= 0.99
                     for b, v in zip(scene.boxes, visible)]
        for i, (obj, box, ok) in enumerate(zip(scene.spec.objects, scene.boxes, qualifies)):
            match = best_match(reading, obj.colour, box)
            if visible[i] < 0.99 and scene.masks[i].sum() >= 16:  # occluded, still visible
                occ["n"] += 1
                occ["colour"] += match is not None
                occ["iou"] += bool(match and box_iou(match.box, box) >= 0.5)
                occ["shape"] += bool(match and match.shape == obj.shape)
            if not ok:
                continue
            scored += 1
            colour += match is not None
            shape += bool(match and match.shape == obj.shape)
            iou += bool(match and box_iou(match.box, box) >= 0.5)
            if match is not None:
                irregular += match.shape == "irregular"
                solidity.append(match.solidity)
                aspect.append(match.aspect)
                stretch.append(match.elongation)
        if all(qualifies):
            count_scenes += 1
            count_ok += len(reading.objects) == len(scene.spec.objects)
    return {"n_scenes": n, "n_objects_scored": scored, "background_acc": bg / n, "colour_acc": colour / scored,
            "shape_acc": shape / scored, "count_acc": count_ok / max(count_scenes, 1), "box_iou50_acc": iou / scored,
            "min_size_px": min_size, "irregular_rate": irregular / scored, "min_solidity": float(min(solidity)),
            "max_aspect": float(max(aspect)), "max_elongation": float(max(stretch)),
            "occluded": {"n_objects": occ["n"], "colour_acc": occ["colour"] / max(occ["n"], 1),
                         "box_iou50_acc": occ["iou"] / max(occ["n"], 1), "shape_acc": occ["shape"] / max(occ["n"], 1)}}


def _ring_scores(views, skip: int = 3):
    good, wrong = [], []
    k = len(views)
    for i in range(k):
        a, b, far = views[i], views[(i + 1) % k], views[(i + skip) % k]
        g = consistency(a.rgb, a.depth, a.camera, b.rgb, b.depth, b.camera)
        w = consistency(far.rgb, far.depth, a.camera, b.rgb, b.depth, b.camera)
        if g.n_pixels:
            good.append((g.mae * 255, g.n_pixels, g.covisible_fraction))
        if w.n_pixels:
            wrong.append((w.mae * 255, w.n_pixels))
    return good, wrong


def _weighted(rows) -> float:
    rows = np.array(rows)
    return float((rows[:, 0] * rows[:, 1]).sum() / rows[:, 1].sum())


def reprojection_scores(n: int, seed: int) -> dict:
    orbit_good, orbit_wrong, street_good, street_wrong = [], [], [], []
    for s in tqdm(range(seed, seed + n), desc="orbit/street scenes", leave=False):
        g, w = _ring_scores(render_orbit(sample_orbit_spec(s, n_cameras=8)))
        orbit_good += g
        orbit_wrong += w
        clip = sample_street_clip(s, n_frames=2)
        for frame in range(len(clip.frames)):
            g, w = _ring_scores(render_street_frame(clip, frame))
            street_good += g
            street_wrong += w
    return {"orbit_mae_255": _weighted(orbit_good), "orbit_wrong_mae_255": _weighted(orbit_wrong),
            "orbit_covisible_fraction": float(np.mean([r[2] for r in orbit_good])),
            "street_mae_255": _weighted(street_good), "street_wrong_mae_255": _weighted(street_wrong),
            "street_covisible_pixels": int(sum(r[1] for r in street_good))}


def render_speed() -> dict:
    clip = sample_street_clip(0, n_frames=8)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        render_street_clip(clip)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for s in range(100):
        render_flat(sample_flat_spec(s))
    return {"street_clip_seconds": float(np.median(times)), "flat_scene_ms": (time.perf_counter() - start) * 10}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="flat scenes")
    parser.add_argument("--n-3d", type=int, default=10, help="orbit scenes and street clips for reprojection")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--min-size", type=int, default=8, help="smallest box side (pixels) an object must have to be scored")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    flat = flat_accuracy(args.n, args.seed, args.resolution, args.min_size)
    reproj = reprojection_scores(args.n_3d, args.seed)
    render = render_speed()
    result = {"flat": flat, "reprojection": reproj, "render": render, "machine": machine(),
              "seconds": time.perf_counter() - start}
    occ = flat["occluded"]
    print_table(f"Oracle on ground truth: {args.n} flat scenes at {args.resolution}px, seed {args.seed}",
                ["objects", "n", "background", "colour", "shape", "count", "box IoU≥0.5", "read irregular",
                 "min solidity", "max aspect", "max elongation"],
                [[f"≥ {args.min_size}px, unoccluded", flat["n_objects_scored"], flat["background_acc"], flat["colour_acc"],
                  flat["shape_acc"], flat["count_acc"], flat["box_iou50_acc"], flat["irregular_rate"],
                  flat["min_solidity"], flat["max_aspect"], flat["max_elongation"]],
                 ["occluded (≥ 16 px visible)", occ["n_objects"], "-", occ["colour_acc"], occ["shape_acc"], "-",
                  occ["box_iou50_acc"], "-", "-", "-", "-"]])
    print_table(f"Reprojection MAE over co-visible pixels (grey levels, goal ≤ 2), {args.n_3d} scenes",
                ["world", "ground truth", "wrong pair", "ratio"],
                [["orbit", reproj["orbit_mae_255"], reproj["orbit_wrong_mae_255"], reproj["orbit_wrong_mae_255"] / reproj["orbit_mae_255"]],
                 ["street", reproj["street_mae_255"], reproj["street_wrong_mae_255"], reproj["street_wrong_mae_255"] / reproj["street_mae_255"]]])
    print(f"\nrendering: a 6-camera × 8-frame street clip at 64 px in {render['street_clip_seconds']:.2f} s (goal < 5); "
          f"a flat scene in {render['flat_scene_ms']:.2f} ms")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
