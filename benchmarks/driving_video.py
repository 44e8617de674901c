"""Surround-view driving video on street clips of the toy world, scored with its ground truth.

    python -m benchmarks.driving_video --clips 3 --seed 0 --frames 4 --steps 10 --json out.json

Table 1, one row per method, all on the embedded model and ControlNet, the same clips, seeds and steps:
  Strata                        cross-camera + temporal attention + local prompts (one per box class),
                                parameter-free cross-view attention
  Strata trained projections    the same with the trained cross-view projections (--projections; the
                                embedded model's by default, when it ships them)
  Strata w/o overlap sync       no averaging of neighbouring cameras' clean-latent estimates where the
                                layout says they see the same surface (attention alone)
  Strata w/o cross-camera       temporal attention and local prompts only
  Strata w/o temporal           cross-camera attention and local prompts only
  Strata w/o local prompts      cross-camera + temporal, the scene prompt everywhere
  independent (ControlNet only) every camera and frame on its own
  ground-truth renders          the world's own renders (the ceiling)
Columns: layout adherence (of the boxes whose silhouette covers ≥ 40 pixels of a view, the fraction
where the oracle, shading-aware, reads object colours over at least half the silhouette); cross-camera
error (neighbouring cameras of one frame warped into each other with the true depth and cameras, mean
absolute error over co-visible pixels, grey levels); temporal error (frame f warped into f + 1 of the
same camera with the true depth and ego motion, static pixels only: ground, sky and boxes that did not
move); overlap seam (the overlap sync decides pixels inside the cells a neighbour also sees and
leaves the rest of the view to the model, so what a user would see of it is a step at that region's
border: the mean absolute colour difference of 4-neighbour pixel pairs straddling the border of the
cells the layout links to a neighbouring camera, the same pairs for every method; the ground truth
gives the scene's own step there); seconds per camera-frame; peak extra resident memory. The
cross-camera error of the rows with overlap sync is partly enforced by it (the estimates are averaged
in the overlaps during all steps but the last eighth): the row without it shows what attention alone
does. Means over clips ± standard error.
--seed S runs clips S·10⁴ … S·10⁴ + N − 1.

Table 2 (--long), long videos through the sliding window: peak extra resident memory and seconds per
frame at 8, 16, 32 and 64 frames (one clip, --long-cameras cameras, --long-steps steps), to show that
neither grows with the video's length.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.common import machine, mean_se, mean_se_text, print_table, write_json
from benchmarks.real_checkpoints import PeakMemory
from attention_processors.cross_view import ring_neighbours
from formats.projection import cast_layout, view_correspondences
from pipelines.driving_video import DrivingVideoPipeline
from pipelines.loading import load_controlnet, load_pipeline, load_view_projections
from world.geometry import SHADING
from world.oracle import read_image
from world.reproject import warp
from world.street import render_street_frame, sample_street_clip

CLIPS_PER_SEED = 10_000
LOCAL = {"car": "a car", "truck": "a truck", "pedestrian": "a pedestrian"}
METHODS = {"Strata": dict(local=True),
           "Strata trained projections": dict(local=True, projections=True),
           "Strata w/o overlap sync": dict(local=True, overlap_sync=0.0),
           "Strata w/o cross-camera": dict(cross_view=False, local=True),
           "Strata w/o temporal": dict(temporal=False, local=True),
           "Strata w/o local prompts": dict(),
           "independent (ControlNet only)": dict(cross_view=False, temporal=False, overlap_sync=0.0)}
MIN_SILHOUETTE = 40


def adherence(images: np.ndarray, clip) -> list[bool]:
    """Per visible box of every (frame, camera): object colours over at least half its silhouette."""
    hits = []
    for f, views in enumerate(images):
        boxes = clip.frames[f].boxes
        for camera, image in zip(clip.cameras(f), views):
            reading = read_image(image, shading=SHADING)
            objects = (reading.labels >= 0) & (reading.labels < 7)
            for box in boxes:
                silhouette = cast_layout(camera, [box])[0] >= 0
                if silhouette.sum() >= MIN_SILHOUETTE:
                    hits.append(bool(objects[silhouette].mean() >= 0.5))
    return hits


def cross_camera_error(images: np.ndarray, truth: list[list]) -> float:
    errors, weights = [], []
    for views, rendered in zip(images, truth):
        n = len(views)
        for a in range(n):
            b = (a + 1) % n
            warped, visible = warp(views[a], rendered[a].depth, rendered[a].camera, rendered[b].depth, rendered[b].camera)
            if visible.any():
                errors.append(np.abs(warped[visible] - views[b].astype(np.float64)[visible]).mean())
                weights.append(visible.sum())
    return float(np.average(errors, weights=weights)) if errors else float("nan")


def temporal_error(images: np.ndarray, truth: list[list], clip) -> float:
    errors, weights = [], []
    for f in range(len(images) - 1):
        moved = {k + 1 for k, (a, b) in enumerate(zip(clip.frames[f].boxes, clip.frames[f + 1].boxes))
                 if not np.allclose(a.position, b.position)}
        for v in range(len(images[f])):
            src, dst = truth[f][v], truth[f + 1][v]
            warped, visible = warp(images[f][v], src.depth, src.camera, dst.depth, dst.camera)
            static = visible & ~np.isin(dst.instance, list(moved))
            if static.any():
                errors.append(np.abs(warped[static] - images[f + 1][v].astype(np.float64)[static]).mean())
                weights.append(static.sum())
    return float(np.average(errors, weights=weights)) if errors else float("nan")


def bench_methods(pipe, args) -> dict:
    scores = {m: {"adherence": [], "cross": [], "temporal": [], "seam": [], "seconds": [], "memory": []}
              for m in [*METHODS, "ground-truth renders"]}
    methods = {name: options for name, options in METHODS.items()
               if (not options.get("projections") or pipe.view_projections is not None)
               and (not args.methods or name in args.methods)}
    scores = {name: scores[name] for name in [*methods, "ground-truth renders"]}
    for c in tqdm(range(args.clips), desc="clips"):
        clip = sample_street_clip(CLIPS_PER_SEED * args.seed + c, n_frames=args.frames)
        truth = [render_street_frame(clip, f) for f in range(args.frames)]
        for name, options in methods.items():
            with PeakMemory() as peak:
                start = time.perf_counter()
                frames = pipe(clip, "a street view", LOCAL if options.get("local") else None,
                              num_frames=args.frames, window=args.window, num_inference_steps=args.steps,
                              cross_view=options.get("cross_view", True), temporal=options.get("temporal", True),
                              use_view_projections=options.get("projections", False), reach=args.reach,
                              **_sync(options, args),
                              guidance_scale=args.guidance,
                              generator=torch.Generator().manual_seed(c)).frames
                seconds = time.perf_counter() - start
            scores[name]["seconds"].append(seconds / (args.frames * len(clip.rig)))
            scores[name]["memory"].append(peak.extra_mib)
            _score(scores[name], frames, truth, clip)
        _score(scores["ground-truth renders"], np.array([[v.rgb for v in views] for views in truth]), truth, clip)
    return {name: {"adherence": mean_se(s["adherence"]), "cross_camera_error": mean_se(s["cross"]),
                   "temporal_error": mean_se(s["temporal"]), "overlap_seam": mean_se(s["seam"]),
                   "seconds_per_camera_frame": float(np.mean(s["seconds"])) if s["seconds"] else None,
                   "peak_extra_mib": float(max(s["memory"])) if s["memory"] else None}
            for name, s in scores.items()}


def _sync(options: dict, args) -> dict:
    """overlap_sync for a row: its own (0 for the rows without it), else --sync, else the pipeline's default."""
    value = options.get("overlap_sync", args.sync)
    return {} if value is None else {"overlap_sync": value}


def linked_cells(clip, frame: int, scale: int = 4) -> np.ndarray:
    """(V, H, W) bool: the pixels of each camera's latent cells (scale × scale pixels) that the layout
    links to a ring neighbour (`formats.projection.view_correspondences`), as the overlap sync uses them."""
    width, height = clip.image_size
    links = view_correspondences(clip, frame, (width // scale, height // scale), ring_neighbours(len(clip.rig)))
    cells = np.stack([np.any([seen for _, seen, _ in view], axis=0) if view else np.zeros((height // scale, width // scale), bool)
                      for view in links])
    return cells.repeat(scale, 1).repeat(scale, 2)


def overlap_seam(images: np.ndarray, clip) -> float:
    """Mean |colour step| over 4-neighbour pixel pairs straddling the border of the linked cells."""
    steps = []
    for f, views in enumerate(images):
        for image, region in zip(views, linked_cells(clip, f)):
            img = image.astype(np.float64)
            for a, b, ra, rb in ((img[:, :-1], img[:, 1:], region[:, :-1], region[:, 1:]),
                                 (img[:-1], img[1:], region[:-1], region[1:])):
                steps.append(np.abs(a[ra != rb] - b[ra != rb]).mean(-1))
    steps = np.concatenate(steps)
    return float(steps.mean()) if len(steps) else float("nan")


def _score(row: dict, frames: np.ndarray, truth, clip) -> None:
    hits = adherence(frames, clip)
    row["adherence"].append(float(np.mean(hits)) if hits else np.nan)
    row["cross"].append(cross_camera_error(frames, truth))
    row["temporal"].append(temporal_error(frames, truth, clip))
    row["seam"].append(overlap_seam(frames, clip))


def bench_long(pipe, args) -> dict:
    rows = {}
    for n in (8, 16, 32, 64):
        clip = sample_street_clip(CLIPS_PER_SEED * args.seed, n_frames=n, n_cameras=args.long_cameras)
        with PeakMemory() as peak:
            start = time.perf_counter()
            pipe(clip, "a street view", LOCAL, num_frames=n, window=args.window, num_inference_steps=args.long_steps,
                 generator=torch.Generator().manual_seed(0), output_type="none")
            seconds = time.perf_counter() - start
        rows[n] = {"peak_extra_mib": peak.extra_mib, "seconds_per_frame": seconds / n}
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--long", action="store_true", help="also the long-video table")
    parser.add_argument("--long-steps", type=int, default=4)
    parser.add_argument("--long-cameras", type=int, default=3)
    parser.add_argument("--projections", default="embedded",
                        help="trained cross-view projections for their row: a folder, 'embedded' or 'none'")
    parser.add_argument("--reach", type=int, default=1, help="cameras on each side that cross-view attention reads")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--sync", type=float, default=None,
                        help="overlap_sync for the Strata rows (default: the pipeline's; 0: off)")
    parser.add_argument("--methods", default=None,
                        help="a comma-separated subset of the rows (names as printed; default: all)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.methods:
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if unknown := set(args.methods) - set(METHODS):
            parser.error(f"--methods: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(METHODS)}")
    pipe = load_pipeline("embedded", DrivingVideoPipeline, controlnet=load_controlnet("embedded"),
                         view_projections=load_view_projections(args.projections))
    pipe.set_progress_bar_config(disable=True)
    torch.set_grad_enabled(False)
    result = {"machine": machine(), "clips": args.clips, "seed": args.seed, "frames": args.frames,
              "steps": args.steps, "window": args.window, "projections": args.projections,
              "reach": args.reach, "guidance": args.guidance, "sync": args.sync}
    rows = result["methods"] = bench_methods(pipe, args)
    print_table(f"Driving video: {args.clips} clips × {args.frames} frames × 6 cameras, {args.steps} steps, seed "
                f"{args.seed}, {machine()}",
                ["method", "layout adherence", "cross-camera error", "temporal error", "overlap seam",
                 "s / camera-frame", "peak extra MiB"],
                [[name, mean_se_text(r["adherence"]), mean_se_text(r["cross_camera_error"], 1), mean_se_text(r["temporal_error"], 1),
                  mean_se_text(r["overlap_seam"], 1),
                  r["seconds_per_camera_frame"] or "-", r["peak_extra_mib"] if r["peak_extra_mib"] is not None else "-"]
                 for name, r in rows.items()])
    if args.long:
        long = result["long"] = bench_long(pipe, args)
        print_table(f"Long videos: {args.long_cameras} cameras, {args.long_steps} steps, window {args.window}",
                    ["frames", "peak extra MiB", "s / frame"],
                    [[n, r["peak_extra_mib"], r["seconds_per_frame"]] for n, r in long.items()])
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
