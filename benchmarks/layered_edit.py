"""Layered editing on world edit scenarios, scored by the oracle, against baselines on the same model.

    python -m benchmarks.layered_edit --scenes 20 --seed 0 --json out.json

Each scenario (world.flat.sample_edit_scenario) is a background and 2–5 object layers, each with a
prompt and a rough mask (loose box or blob). --seed S runs scenarios S·10⁴ … S·10⁴ + N − 1, so two
seeds share no scene (their spread is the seed-to-seed spread). Methods, all on the same model and seeds:
  Strata (full)            MQD + BCG + feathered pixel overlay
  Strata w/o MQD           cross-attention sees only the new layer's prompt everywhere
  Strata w/o BCG           no latent blending with the memory (overlay kept)
  blended latent diffusion diffusers' StableDiffusionInpaintPipeline with the same UNet (4-channel
                           latent blending), strength 1, on the previous composite
  regenerate               the whole scene from the combined caption, no masks
After each edit the oracle reads the composite: edit success (the asked colour and shape found
inside the edit's mask), retention (of the earlier objects that were found right after their own
edit and that no later mask covers — over half of the object's box —, the fraction still found),
background PSNR (pixels outside all dilated masks so far, against the scene before any edit;
capped at 100 dB for identical pixels), seam PSNR (the feathered ring just outside the edit's rough
mask, which the edit should leave as it was, against the composite before the edit: how well the
new layer meets the scene at its border — what BCG is for) and seconds per edit. Values are means over edits with
the standard error over scenes (±). The removal rows remove layer 1 of each Strata (full) scene,
once per replay mode of the later layers that see the change ("memory": their own object's latents
on the new scene, only the last harmonize steps re-run and used only near what changed — the default;
"seed": re-run in full from their seeds): removed object gone from its mask, of the other objects
present before the removal the fraction still found after it, and seconds per removal. A second table
gives Strata (full) minus each other method, paired by scene (same scenario, same seeds): the mean
difference and its standard error.
Time ratio: seconds per Strata edit / seconds per plain text-to-image generation (same model and
steps: the regenerate row, whose generations run interleaved with the edits, scene by scene).
--methods full,no-bcg (keys: full, no-mqd, no-bcg, blended, regenerate) runs a subset, for a paired
comparison over many scenes at a fraction of the cost; Strata (full) and its removal rows always run,
and the time ratio needs regenerate.

JSON keys: machine, scenes, seed, rows.<method>.{edit_success, edit_success_se, retention, retention_se,
background_psnr_db, seam_psnr_db, seconds_per_edit}, removal.<memory|seed>.{removed_gone, others_retained, seconds},
margins.<method>.{edit_success, retention} = [mean, standard error] of Strata (full) minus that method
paired by scene (null where no scene is scored on both sides), plain_seconds, time_ratio (null without
regenerate), per_edit.mask_area[scene][edit] (the rough mask's fraction of the image) and
per_edit.<method>[scene][edit].{success, kept, seam_psnr_db}, for pooling seeds or splitting by mask size.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from benchmarks.common import machine, print_table, write_json
from pipelines.layered_edit import REPLAY_MODES, EditSettings, LayeredEditPipeline, LayeredSession, overlay_alpha
from pipelines.loading import load_pipeline
from world.flat import box_of, caption_for, sample_edit_scenario
from world.oracle import object_inside_mask, read_image

PSNR_CAP = 100.0
METHODS = {"full": "Strata (full)", "no-mqd": "Strata w/o MQD", "no-bcg": "Strata w/o BCG",
           "blended": "blended latent diffusion", "regenerate": "regenerate"}  # --methods key: row name
STRATA_FLAGS = {"Strata (full)": {}, "Strata w/o MQD": {"mqd": False}, "Strata w/o BCG": {"bcg": False}}
SCENES_PER_SEED = 10_000  # --seed S runs scenarios S·10⁴, S·10⁴ + 1, …: different seeds never overlap


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return PSNR_CAP
    mse = ((a[where].astype(np.float64) - b[where].astype(np.float64)) ** 2).mean()
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255**2 / mse))


def found(reading, layer) -> bool:
    return object_inside_mask(reading, layer.target.colour, layer.target.shape, layer.rough_mask)


def covered_later(scenario, j: int, i: int) -> bool:
    """Does a mask of layers j+1..i cover most of object j's box (so it may rightly be gone)?"""
    target = scenario.layers[j].target
    x0, y0, x1, y1 = (int(round(v * scenario.resolution)) for v in box_of(target.center, target.size))
    return any(scenario.layers[k].rough_mask[max(0, y0):y1, max(0, x0):x1].mean() > 0.5 for k in range(j + 1, i + 1))


def score_edits(images, scenario, background, dilate_px) -> list[dict]:
    """Per edit: success; retention of every earlier object that was present right after its own
    edit and that no later mask covers; background PSNR outside all dilated masks so far; seam PSNR."""
    readings = [read_image(im) for im in images]
    present = [found(r, layer) for r, layer in zip(readings, scenario.layers)]
    previous = [background] + list(images[:-1])
    return [score_edit(images[i], readings[i], scenario, i, present, background, previous[i], dilate_px)
            for i in range(len(images))]


def score_edit(image, reading, scenario, i, present, background, previous, dilate_px) -> dict:
    success = present[i]
    kept = [found(reading, scenario.layers[j]) for j in range(i) if present[j] and not covered_later(scenario, j, i)]
    touched = np.zeros(image.shape[:2], dtype=bool)
    for l in scenario.layers[:i + 1]:
        touched |= overlay_alpha(l.rough_mask, dilate_px) > 0
    mask = scenario.layers[i].rough_mask
    band = (overlay_alpha(mask, dilate_px) > 0) & ~mask  # the feathered ring just outside the rough mask
    return {"success": success, "kept": kept, "psnr": psnr(image, background, ~touched),
            "seam": psnr(image, previous, band)}


def run_strata(pipe, scenario, seed, settings, **flags):
    session = LayeredSession(pipe, replace(settings, **flags))
    background = session.start_from_prompt(scenario.background_prompt, seed).copy()
    images, seconds = [], []
    for k, layer in enumerate(scenario.layers):
        start = time.perf_counter()
        images.append(session.add_layer(layer.prompt, layer.rough_mask, seed + k + 1).copy())
        seconds.append(time.perf_counter() - start)
    return background, images, seconds, session


def run_blended(inpaint, background, scenario, seed, settings):
    images, seconds, current = [], [], background
    for k, layer in enumerate(scenario.layers):
        start = time.perf_counter()
        out = inpaint(layer.prompt, image=Image.fromarray(current), mask_image=Image.fromarray(layer.rough_mask.astype(np.uint8) * 255),
                      height=settings.height, width=settings.width, strength=1.0, num_inference_steps=settings.steps,
                      guidance_scale=settings.guidance, generator=torch.Generator().manual_seed(seed + k + 1), output_type="np").images[0]
        current = (out * 255).round().astype(np.uint8)
        seconds.append(time.perf_counter() - start)
        images.append(current)
    return images, seconds


def run_regenerate(text2image, scenario, seed, settings):
    images, seconds = [], []
    for k in range(len(scenario.layers)):
        caption = caption_for(scenario.background, [l.prompt for l in scenario.layers[:k + 1]])
        start = time.perf_counter()
        out = text2image(caption, height=settings.height, width=settings.width, num_inference_steps=settings.steps,
                         guidance_scale=settings.guidance, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
        seconds.append(time.perf_counter() - start)
        images.append((out * 255).round().astype(np.uint8))
    return images, seconds


def scene_values(per_scene: list[list[dict]], key: str) -> np.ndarray:
    """One value per scene (NaN where a scene has nothing to score, e.g. no earlier object to retain)."""
    values = []
    for edits in per_scene:
        if key == "success":
            values.append(np.mean([e["success"] for e in edits]))
        elif key == "kept":
            kept = [k for e in edits for k in e["kept"]]
            values.append(np.mean(kept) if kept else np.nan)
        else:
            values.append(np.mean([e[key] for e in edits]))
    return np.array(values, dtype=np.float64)


def paired_margin(ours: list[list[dict]], theirs: list[list[dict]], key: str) -> tuple[float | None, float | None]:
    """Mean over scenes of (ours − theirs) on the same scenes and seeds, and its standard error:
    the scene-to-scene spread of the difference, not of each method alone."""
    diff = scene_values(ours, key) - scene_values(theirs, key)
    diff = diff[~np.isnan(diff)]
    if len(diff) < 2:  # nothing (or one scene) scored on both sides: no spread to give
        return (float(diff.mean()) if len(diff) else None), None
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def _margin_text(mean, se) -> str:
    return "-" if mean is None else f"{mean:+.3f}" + ("" if se is None else f" ± {se:.3f}")


def summarise(per_scene: list[list[dict]], seconds: list[float]) -> dict:
    out = {}
    for key, name in (("success", "edit_success"), ("kept", "retention"), ("psnr", "background_psnr_db"),
                      ("seam", "seam_psnr_db")):
        v = scene_values(per_scene, key)
        v = v[~np.isnan(v)]
        out[name] = float(v.mean())
        out[name + "_se"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    out["seconds_per_edit"] = float(np.mean(seconds))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="a comma-separated subset of " + ", ".join(METHODS) + " (default: all); "
                             "full is always run, the others are paired against it")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not 0 < args.scenes <= SCENES_PER_SEED:
        parser.error(f"--scenes: expected 1..{SCENES_PER_SEED}, got {args.scenes}")
    chosen = {m.strip() for m in args.methods.split(",") if m.strip()}
    if unknown := chosen - set(METHODS):
        parser.error(f"--methods: unknown {', '.join(sorted(unknown))}; expected a subset of {', '.join(METHODS)}")
    methods = [name for key, name in METHODS.items() if key == "full" or key in chosen]
    pipe = load_pipeline(args.model, LayeredEditPipeline)
    pipe.set_progress_bar_config(disable=True)
    parts = dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                 scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    inpaint, text2image = StableDiffusionInpaintPipeline(**parts), StableDiffusionPipeline(**parts)
    for p in (inpaint, text2image):
        p.set_progress_bar_config(disable=True)
    settings = EditSettings(steps=args.steps).sized_for(pipe)
    scores = {m: [] for m in methods}
    seconds = {m: [] for m in methods}
    removal = {mode: {"gone": [], "kept": [], "seconds": []} for mode in REPLAY_MODES}
    mask_area: list[list[float]] = []  # per scene, per edit: the rough mask's fraction of the image
    for s in tqdm(range(args.scenes), desc="scenes"):
        index = SCENES_PER_SEED * args.seed + s  # seeds S and S + 1 share no scene (seed 0: scenes 0, 1, …)
        scenario = sample_edit_scenario(index, resolution=settings.height)
        seed = 1000 * index
        for method, flags in STRATA_FLAGS.items():
            if method not in methods:
                continue
            background, images, secs, session = run_strata(pipe, scenario, seed, settings, **flags)
            scores[method].append(score_edits(images, scenario, background, settings.dilate_px))
            seconds[method] += secs
            if method == "Strata (full)":
                full_background = background
                before = read_image(images[-1])
                others = [l for l in scenario.layers[1:] if found(before, l)]  # present before the removal
                for mode, r in removal.items():
                    session.settings = replace(session.settings, replay=mode)
                    start = time.perf_counter()
                    after = read_image(session.remove_layer(1))
                    r["seconds"].append(time.perf_counter() - start)
                    session.undo()
                    r["gone"].append(not found(after, scenario.layers[0]))
                    r["kept"] += [found(after, l) for l in others]
        if "blended latent diffusion" in methods:
            images, secs = run_blended(inpaint, full_background, scenario, seed, settings)
            scores["blended latent diffusion"].append(score_edits(images, scenario, full_background, settings.dilate_px))
            seconds["blended latent diffusion"] += secs
        if "regenerate" in methods:
            images, secs = run_regenerate(text2image, scenario, seed, settings)
            scores["regenerate"].append(score_edits(images, scenario, full_background, settings.dilate_px))
            seconds["regenerate"] += secs
        mask_area.append([float(layer.rough_mask.mean()) for layer in scenario.layers])
    rows = {m: summarise(scores[m], seconds[m]) for m in methods}
    # plain generations, interleaved with the edits (only when the regenerate row ran)
    plain_seconds = rows["regenerate"]["seconds_per_edit"] if "regenerate" in rows else None
    removal = {mode: {"removed_gone": float(np.mean(r["gone"])),
                      "others_retained": float(np.mean(r["kept"])) if r["kept"] else 1.0,
                      "seconds": float(np.mean(r["seconds"]))} for mode, r in removal.items()}
    table = [[m, f"{r['edit_success']:.3f} ± {r['edit_success_se']:.3f}", f"{r['retention']:.3f} ± {r['retention_se']:.3f}",
              f"{r['background_psnr_db']:.1f} ± {r['background_psnr_db_se']:.1f}",
              f"{r['seam_psnr_db']:.1f} ± {r['seam_psnr_db_se']:.1f}", r["seconds_per_edit"]] for m, r in rows.items()]
    for mode, r in removal.items():
        table.append([f"removal of layer 1, replay {mode}", f"gone {r['removed_gone']:.3f}", f"{r['others_retained']:.3f}",
                      "-", "-", r["seconds"]])
    print_table(f"Layered editing, {args.scenes} scenes, seed {args.seed}, {args.model}, {machine()}",
                ["method", "edit success", "retention", "background PSNR dB", "seam PSNR dB", "s / edit"], table)
    margins = {m: {key: paired_margin(scores["Strata (full)"], scores[m], key) for key in ("success", "kept")}
               for m in methods[1:]}
    print_table("Strata (full) minus each method, paired by scene (mean ± standard error of the difference)",
                ["method", "edit success", "retention"],
                [[m, *(_margin_text(*d[key]) for key in ("success", "kept"))] for m, d in margins.items()])
    ratio = None
    if plain_seconds is not None:
        ratio = rows["Strata (full)"]["seconds_per_edit"] / plain_seconds
        print(f"time per Strata edit / plain generation: {ratio:.2f} (plain {plain_seconds:.3f} s)")
    result = {"machine": machine(), "scenes": args.scenes, "seed": args.seed, "rows": rows, "removal": removal,
              "margins": {m: {"edit_success": d["success"], "retention": d["kept"]} for m, d in margins.items()},
              "plain_seconds": plain_seconds, "time_ratio": ratio,
              "per_edit": {"mask_area": mask_area,
                           **{m: [[{"success": bool(e["success"]), "kept": [bool(k) for k in e["kept"]],
                                    "seam_psnr_db": float(e["seam"])} for e in edits] for edits in scores[m]]
                              for m in methods}}}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
