"""Multi-view consistent editing on orbit-world scenes, scored with the edited scene's ground truth.

    python -m benchmarks.multiview_edit --scenes 6 --seed 0 --steps 20 --json out.json

Scene k of seed S is `sample_orbit_spec(S·10⁴ + k)` seen by 16 cameras on its orbit: the 8 even ones
are edited, the 8 between them are held out. The edit cycles move (0.6 m), scale (×1.4) and recolour
(a colour not in the scene) of object 0. One row per method, all on the embedded model and ControlNet,
the same scenes, controls (the edited scene's control maps), seeds and step count:
  Strata, QNeRF guidance           the paper's soft injection (a gradient step toward the rendered queries)
  Strata, QNeRF blend              q' = (1 − w)·q + w·q̂ inside the recorded layers
  Strata, overlap sync (no QNeRF)  the views' clean-latent estimates averaged where the edited scene's
                                   depths link their latent cells, the first 90 % of the steps
  extended attention               each view also reads its two neighbours' keys and values, no QNeRF
  independent (ControlNet + KV)    every view on its own: ControlNet and source key/value injection
  ground-truth renders             the edited scene's own renders (the ceiling)
Columns (means over scenes ± standard error):
  edit success: of the edited views where the edited object shows ≥ 20 pixels, the fraction where the
    oracle (shading-aware) finds an object of its colour whose centroid lies in its projected box;
  reprojection error: neighbouring edited views warped into each other with the edited scene's true
    depth and cameras, mean absolute error over co-visible pixels, grey levels (world/reproject.py);
  held-out PSNR: an RGB field (the query field's nerfstudio components, one 3-channel head, the true
    depth for its depth loss, a fixed --rgb-iterations budget) fitted to the 8 edited views at 32 px,
    rendered at the 8 held-out cameras against the edited scene's renders there;
  s / view, s / QNeRF fit (record, fit and render), the query loss at the end of a fit (in units of the
  queries' variance: 1 is no better than their mean), peak extra resident memory.
A second table gives each method minus independent editing, paired by scene.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from benchmarks.common import machine, mean_se, mean_se_text, print_table, write_json
from benchmarks.real_checkpoints import PeakMemory
from pipelines.loading import load_controlnet, load_pipeline
from pipelines.multiview_edit import MultiViewEditPipeline
from pipelines.multiview_edit.cli import apply_orbit_edit, orbit_inputs
from qnerf import FieldConfig, FitSettings, fit_queries, render_queries
from world.geometry import SHADING
from world.oracle import read_image
from world.orbit import example_edit, render_orbit, sample_orbit_spec
from world.reproject import consistency

SCENES_PER_SEED = 10_000
NO_SYNC = dict(overlap_sync=0.0)
METHODS = {"Strata, QNeRF guidance": dict(injection="guidance"),
           "Strata, QNeRF blend": dict(injection="blend"),
           "Strata, overlap sync (no QNeRF)": dict(injection=None, overlap_sync=0.9, sync_space="latent"),
           "extended attention": dict(injection=None, extended_attention=True, **NO_SYNC),
           "independent (ControlNet + KV)": dict(injection=None, **NO_SYNC)}
STRATA = ("Strata, QNeRF guidance", "Strata, QNeRF blend", "Strata, overlap sync (no QNeRF)")
TRUTH = "ground-truth renders"
BASELINE = "independent (ControlNet + KV)"
MIN_PIXELS = 20
RGB_SIZE = 32
# the RGB field of the PSNR column: the query field's first defaults, kept so that PSNR columns stay comparable
RGB_FIELD = FieldConfig(num_levels=8, max_res=128, samples=24, pdf_samples=16)


def edit_success(images: np.ndarray, edited_views, colour: str) -> float:
    hits = []
    for image, view in zip(images, edited_views):
        ys, xs = np.nonzero(view.instance == 1)  # object 0
        if len(xs) < MIN_PIXELS:
            continue
        x0, x1, y0, y1 = xs.min() - 2, xs.max() + 3, ys.min() - 2, ys.max() + 3
        found = [o for o in read_image(image, shading=SHADING).find(colour)
                 if x0 <= o.centroid[0] < x1 and y0 <= o.centroid[1] < y1]
        hits.append(bool(found))
    return float(np.mean(hits)) if hits else float("nan")


def reprojection_error(images: np.ndarray, edited_views) -> float:
    errors, weights = [], []
    n = len(images)
    for a in range(n):
        for b in ((a + 1) % n, (a - 1) % n):
            score = consistency(images[a], edited_views[a].depth, edited_views[a].camera, images[b],
                                edited_views[b].depth, edited_views[b].camera)
            if score.n_pixels:
                errors.append(score.mae * 255)
                weights.append(score.n_pixels)
    return float(np.average(errors, weights=weights)) if errors else float("nan")


def _small(images: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).resize((RGB_SIZE, RGB_SIZE), Image.BILINEAR)) for im in images])


def held_out_psnr(images: np.ndarray, train_views, held_views, held_truth: np.ndarray, iterations: int) -> float:
    """Fit an RGB field to the edited views (32 px, true depth) and score its renders at the held-out cameras."""
    scale = RGB_SIZE / images.shape[1]

    def shrink(camera):
        return replace(camera, fx=camera.fx * scale, fy=camera.fy * scale, cx=camera.cx * scale, cy=camera.cy * scale,
                       width=RGB_SIZE, height=RGB_SIZE)
    small_depth = [np.asarray(Image.fromarray(np.where(np.isfinite(v.depth), v.depth, 0).astype(np.float32)).resize(
        (RGB_SIZE, RGB_SIZE), Image.NEAREST)) for v in train_views]
    depths = [np.where(d > 0, d, np.inf) for d in small_depth]
    rgb = {"rgb": torch.from_numpy(_small(images)).float() / 255}
    result = fit_queries(rgb, [shrink(v.camera) for v in train_views], depths,
                         settings=FitSettings(iterations=iterations, max_seconds=600, rays_per_step=1024),
                         config=RGB_FIELD)
    rendered = render_queries(result.field, [shrink(v.camera) for v in held_views], {"rgb": (RGB_SIZE, RGB_SIZE)})
    predicted = rendered.queries["rgb"].clamp(0, 1).numpy()
    mse = float(((predicted - _small(held_truth) / 255.0) ** 2).mean())
    return float(10 * np.log10(1 / max(mse, 1e-10)))


def fit_settings(args) -> FitSettings:
    """--fit-iterations N: exactly N steps per fit, no clock (the same fits on any machine or load);
    otherwise at most --fit-seconds (and FitSettings' step cap)."""
    if args.fit_iterations is None:
        return FitSettings(max_seconds=args.fit_seconds)
    return FitSettings(iterations=args.fit_iterations, max_seconds=math.inf)


def method_options(selected: set[str] | None, options: dict) -> dict[str, dict]:
    """The pipeline arguments of each row to run (selected: row names, None for all; independent editing
    always runs): options (--set) reach the Strata rows only, and never what a row is defined by (the
    sync row keeps its sync)."""
    return {name: dict(options if name in STRATA else {}, **own) for name, own in METHODS.items()
            if selected is None or name in selected or name == BASELINE}


def bench(pipe, args) -> dict:
    scores = {m: {"success": [], "reprojection": [], "psnr": [], "seconds_per_view": [], "fit_seconds": [],
                  "fit_loss": [], "memory": []} for m in [*METHODS, TRUTH]}
    methods = method_options(args.methods, args.options)
    names = [*methods, TRUTH]
    for k in tqdm(range(args.scenes), desc="scenes"):
        spec = replace(sample_orbit_spec(SCENES_PER_SEED * args.seed + k), n_cameras=16)
        edit = example_edit(spec, k)
        inputs = orbit_inputs(spec, edit)
        edited_all = render_orbit(apply_orbit_edit(spec, edit))
        train = list(range(0, 16, 2))
        held = list(range(1, 16, 2))
        inputs = {key: ([value[i] for i in train] if isinstance(value, list) else value[train]
                        if isinstance(value, np.ndarray) else value) for key, value in inputs.items()}
        edited_views = [edited_all[i] for i in train]
        held_views, held_truth = [edited_all[i] for i in held], np.stack([edited_all[i].rgb for i in held])
        colour = edit.get("colour", spec.objects[0].colour)
        outputs = {}
        for name, options in methods.items():
            with PeakMemory() as peak:
                start = time.perf_counter()
                out = pipe(**inputs, num_inference_steps=args.steps, interval=args.interval,
                           fit_settings=fit_settings(args),
                           generator=torch.Generator().manual_seed(k), **options)
                seconds = time.perf_counter() - start
            outputs[name] = out.images
            scores[name]["seconds_per_view"].append(seconds / len(train))
            scores[name]["fit_seconds"].extend(f["seconds"] for f in out.fits)
            scores[name]["fit_loss"].extend(f["loss"] for f in out.fits)
            scores[name]["memory"].append(peak.extra_mib)
        outputs[TRUTH] = np.stack([v.rgb for v in edited_views])
        for name, images in outputs.items():
            scores[name]["success"].append(edit_success(images, edited_views, colour))
            scores[name]["reprojection"].append(reprojection_error(images, edited_views))
            scores[name]["psnr"].append(held_out_psnr(images, edited_views, held_views, held_truth, args.rgb_iterations)
                                        if args.rgb_iterations else float("nan"))
        if args.keep:
            Image.fromarray(np.concatenate([np.concatenate(list(outputs[n]), 1) for n in names], 0)).save(
                f"{args.keep}_{k}.png")
    rows = {}
    for name in names:
        s = scores[name]
        rows[name] = {"edit_success": mean_se(s["success"]), "reprojection_error": mean_se(s["reprojection"]),
                      "held_out_psnr": mean_se(s["psnr"]),
                      "seconds_per_view": float(np.mean(s["seconds_per_view"])) if s["seconds_per_view"] else None,
                      "seconds_per_fit": float(np.mean(s["fit_seconds"])) if s["fit_seconds"] else None,
                      # the query loss at the end of each fit, in units of the queries' variance (1: their mean)
                      "fit_loss": float(np.mean(s["fit_loss"])) if s["fit_loss"] else None,
                      "peak_extra_mib": float(max(s["memory"])) if s["memory"] else None,
                      "per_scene": {"success": s["success"], "reprojection": s["reprojection"], "psnr": s["psnr"]}}
    for name in names:
        if name == BASELINE:
            continue
        rows[name]["minus_independent"] = {
            key: mean_se([a - b for a, b in zip(scores[name][key], scores[BASELINE][key])])
            for key in ("success", "reprojection", "psnr")}
    return rows


def _value(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--fit-seconds", type=float, default=4.0)
    parser.add_argument("--fit-iterations", type=int, default=None,
                        help="steps per QNeRF fit with no time budget: reproducible whatever the machine's load")
    parser.add_argument("--rgb-iterations", type=int, default=300, help="RGB field budget (0: skip the PSNR column)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--methods", default=None,
                        help="comma-separated: guidance, blend, sync, extended (independent always runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a pipeline argument for the Strata rows (development runs), e.g. blend_weight=0.8 or "
                             "sync_space=latent")
    parser.add_argument("--keep", default=None, help="write each scene's views (a row per method) to KEEP_k.png")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    args.methods = None if args.methods is None else {
        {"guidance": "Strata, QNeRF guidance", "blend": "Strata, QNeRF blend", "sync": "Strata, overlap sync (no QNeRF)",
         "extended": "extended attention"}[m]
        for m in args.methods.split(",")}
    args.options = {key: _value(value) for key, value in (item.split("=", 1) for item in args.set)}
    pipe = load_pipeline(args.model, MultiViewEditPipeline, controlnet=load_controlnet("embedded"))
    pipe.set_progress_bar_config(disable=True)
    torch.set_grad_enabled(False)
    result = {"machine": machine(), "scenes": args.scenes, "seed": args.seed, "steps": args.steps,
              "interval": args.interval, "fit_seconds": args.fit_seconds,
              "fit_iterations": args.fit_iterations, "options": args.options}
    rows = result["methods"] = bench(pipe, args)
    print_table(f"Multi-view editing: {args.scenes} orbit scenes × 8 views, {args.steps} steps, seed {args.seed}, "
                f"{machine()}",
                ["method", "edit success", "reprojection error", "held-out PSNR dB", "s / view", "s / QNeRF fit",
                 "fit loss", "peak extra MiB"],
                [[name, mean_se_text(r["edit_success"]), mean_se_text(r["reprojection_error"], 2), mean_se_text(r["held_out_psnr"], 2),
                  r["seconds_per_view"] or "-", r["seconds_per_fit"] or "-", r["fit_loss"] or "-",
                  r["peak_extra_mib"] if r["peak_extra_mib"] is not None else "-"] for name, r in rows.items()])
    print_table("Each method minus independent editing, paired by scene (mean ± standard error)",
                ["method", "edit success", "reprojection error", "held-out PSNR dB"],
                [[name, mean_se_text(r["minus_independent"]["success"]), mean_se_text(r["minus_independent"]["reprojection"], 2),
                  mean_se_text(r["minus_independent"]["psnr"], 2)] for name, r in rows.items() if "minus_independent" in r])
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
