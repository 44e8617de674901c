"""Layered editing on world edit scenarios, scored on the pictures, against fair baselines on the same model.

    python -m benchmarks.layered_edit --scenes 24 --seed 0 --json out.json

Each scenario (world.flat.sample_edit_scenario) is a background and 2–5 object layers, each with a
prompt and a rough mask (loose box or blob). --seed S runs scenarios S·10⁴ … S·10⁴ + N − 1, so two
seeds share no scene. Methods, all on the same model, seeds, steps, guidance and rough masks:
  Strata (full)             MQD + BCG + the feathered overlay, earlier objects a mask only clips kept
  Strata w/o MQD            cross-attention sees only the new layer's prompt everywhere
  Strata w/o BCG            no latent blending with the memory at all (not even the starting noise)
  Strata, mask overlay      the whole dilated rough mask laid over the scene, as before the object
                            overlay: the background it redrew inside the mask shows (a halo)
  blended latent diffusion  as its authors run it, on the same pipeline pieces: the previous composite
                            encoded (the posterior's mean), noised to every timestep with the edit's own
                            noise, and blended outside the mask after every step including the last;
                            the same max-pooled latent mask, the same protection of earlier objects and
                            the same feathered paste-back as Strata; one prompt (no MQD)
  regenerate (floor)        the whole scene from the combined caption: it never sees the masks, so it
                            cannot place an object in one; a labelled floor, not a rival
Scores (benchmarks.edit_scores; none uses a method's own masks): edit success (the asked object in the
rough mask at a plausible size, the harder oracle), retention (earlier objects still found, paired on
the same objects between two methods), the in-mask background change (grey levels, on pixels read as
background before and after), the border step across the rough mask (after; and before the edit), the
texture step, the halo score (no reference: in-mask background against its surroundings) and seam
PSNR. Each is a mean over a scene's edits, then over scenes (± standard error over scenes); a second
table gives Strata (full) minus each method, paired by scene. The removal rows remove layer 1 of each
Strata (full) scene in each replay mode: removed object gone (± standard error over scenes), and the
fraction of the others present before that are still found after (per scene, ± standard error). Time ratio: seconds per Strata edit /
seconds per plain text-to-image generation (the regenerate row, interleaved with the edits).
--methods full,no-bcg (keys: full, no-mqd, no-bcg, mask-overlay, blended, regenerate) runs a subset (full always runs; the time ratio needs regenerate).

JSON keys: machine, scenes, seed, rows.<method>.<score> = [mean, se] and seconds_per_edit,
margins.<method>.<score> = [mean, se] (Strata (full) minus the method, paired by scene; retention on the
objects both kept), removal.<memory|seed>.{removed_gone: [mean, se], others_retained: [mean, se], seconds},
plain_seconds, time_ratio, covered (per scene, per edit i, the earlier objects j a later mask covers),
per_edit.mask_area and per_edit.<method>[scene][edit] = the edit's scores (edit_scores.score_edit).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from types import SimpleNamespace

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from tqdm.auto import tqdm

from benchmarks.common import machine, print_table, write_json
from benchmarks.edit_scores import retention_pairs, score_edit
from pipelines.layered_edit import (REPLAY_MODES, EditSettings, LayeredEditPipeline, LayeredSession, composite,
                                    object_pixels, overlay_alpha, protected_pixels)
from pipelines.loading import load_pipeline
from world.flat import box_of, caption_for, sample_edit_scenario
from world.oracle import object_inside_mask, read_image

METHODS = {"full": "Strata (full)", "no-mqd": "Strata w/o MQD", "no-bcg": "Strata w/o BCG",
           "mask-overlay": "Strata, mask overlay", "tight-0.5": "Strata, tighten 0.5", "tight-1": "Strata, tighten 1.0",
           "blended": "blended latent diffusion",
           "regenerate": "regenerate (floor)"}  # --methods key: row name
STRATA_FLAGS = {"Strata (full)": {}, "Strata w/o MQD": {"mqd": False}, "Strata w/o BCG": {"bcg": False},
                "Strata, mask overlay": {"overlay": "mask"}, "Strata, tighten 0.5": {"tighten": 0.5},
                "Strata, tighten 1.0": {"tighten": 1.0}}
SCENES_PER_SEED = 10_000  # --seed S runs scenarios S·10⁴, S·10⁴ + 1, …: different seeds never overlap
SCORES = ("success", "retention", "bg_change", "border_step", "border_step_before", "texture_step", "halo",
          "seam_psnr_db")
MARGINS = ("success", "retention", "bg_change", "border_step", "halo", "texture_step")


def covered_later(scenario, j: int, i: int) -> bool:
    """Does a mask of layers j+1..i cover most of object j's box (so it may rightly be gone)?"""
    target = scenario.layers[j].target
    x0, y0, x1, y1 = (int(round(v * scenario.resolution)) for v in box_of(target.center, target.size))
    return any(scenario.layers[k].rough_mask[max(0, y0):y1, max(0, x0):x1].mean() > 0.5 for k in range(j + 1, i + 1))


def score_run(background: np.ndarray, images: list[np.ndarray], scenario) -> list[dict]:
    """Every edit of one scene, scored on the composites (edit_scores.score_edit)."""
    frames = [background] + list(images)
    readings = [read_image(im) for im in frames]
    return [score_edit(frames[i], frames[i + 1], readings[i], readings[i + 1], layer, scenario.layers[:i])
            for i, layer in enumerate(scenario.layers)]


def run_strata(pipe, scenario, seed, settings, **flags):
    session = LayeredSession(pipe, replace(settings, **flags))
    background = session.start_from_prompt(scenario.background_prompt, seed)
    images, seconds = [], []
    for k, layer in enumerate(scenario.layers):
        start = time.perf_counter()
        images.append(session.add_layer(layer.prompt, layer.rough_mask, seed + k + 1))
        seconds.append(time.perf_counter() - start)
    return background, images, seconds, session


def run_blended(pipe, background, scenario, seed, settings):
    """Blended latent diffusion (Avrahami et al.), as a careful user runs it on this pipeline: see the
    module docstring. The background trajectory is the previous composite's latents (posterior mean)
    noised with the edit's own noise at every timestep (`forward_noise`), blended after every step."""
    images, seconds, current = [], [], background
    objects = [SimpleNamespace(object_mask=np.zeros(background.shape[:2], bool))]  # what protected_pixels reads
    call = dict(height=settings.height, width=settings.width, num_inference_steps=settings.steps,
                guidance_scale=settings.guidance, negative_prompt=settings.negative_prompt)
    for k, layer in enumerate(scenario.layers):
        start = time.perf_counter()
        protected = protected_pixels(objects, layer.rough_mask, settings.protect)
        edit = layer.rough_mask & ~protected
        if not edit.any():
            edit, protected = layer.rough_mask, np.zeros_like(protected)
        seed_k = seed + k + 1
        noised = pipe.forward_noise(current, settings.steps, torch.Generator().manual_seed(seed_k))
        out = pipe(layer.prompt, mask=edit, background=noised, harmonize=0.0,
                   generator=torch.Generator().manual_seed(seed_k), **call)
        alpha = overlay_alpha(edit, settings.dilate_px)
        alpha[protected] = 0
        image = composite(current, out.images[0], alpha)
        objects.append(SimpleNamespace(object_mask=object_pixels(current, image, settings.overlay_threshold)))
        current = image
        seconds.append(time.perf_counter() - start)
        images.append(image)
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


def _eligible(covered: list[list[list[int]]], scene: int):
    return lambda j, i: j not in covered[scene][i]


def scene_values(per_scene: list[list[dict]], key: str, covered=None) -> np.ndarray:
    """One value per scene (NaN where a scene has nothing to score): the mean of an edit score, or for
    "retention" the fraction of earlier objects still found (those the method made, not covered later)."""
    values = []
    for s, edits in enumerate(per_scene):
        if key == "retention":
            pairs = retention_pairs(edits, edits, _eligible(covered, s))
            values.append(np.mean([a for a, _ in pairs]) if pairs else np.nan)
        else:
            v = [float(e[key]) for e in edits if e[key] is not None]
            values.append(np.mean(v) if v else np.nan)
    return np.array(values, dtype=np.float64)


def mean_se(values) -> tuple[float | None, float | None]:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def paired_margin(ours: list[list[dict]], theirs: list[list[dict]], key: str, covered=None):
    """Mean over scenes of (ours − theirs) on the same scenes and seeds, and its standard error (the
    scene-to-scene spread of the difference). Retention is compared on the objects both methods made."""
    if key == "retention":
        diff = []
        for s, (a, b) in enumerate(zip(ours, theirs)):
            pairs = retention_pairs(a, b, _eligible(covered, s))
            diff.append(np.mean([float(x) - float(y) for x, y in pairs]) if pairs else np.nan)
        return mean_se(diff)
    return mean_se(scene_values(ours, key) - scene_values(theirs, key))


def _text(pair, digits=3, sign=False) -> str:
    mean, se = pair
    if mean is None:
        return "-"
    number = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return number + ("" if se is None else f" ± {se:.{digits}f}")


def _settings_overrides(pairs: list[str]) -> dict:
    """{field: value} from FIELD=VALUE strings, each value parsed as its EditSettings field's type."""
    defaults = {f.name: f.default for f in fields(EditSettings)}
    out = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in defaults or not text:
            raise ValueError(f"expected FIELD=VALUE with FIELD one of {', '.join(defaults)}, got {pair!r}")
        default = defaults[name]
        out[name] = (None if text == "None" else text.lower() in ("1", "true", "yes") if isinstance(default, bool)
                     else type(default)(text) if default is not None else float(text))
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
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="an EditSettings field for every Strata row, e.g. strength=0.9 (tuning on development seeds)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not 0 < args.scenes <= SCENES_PER_SEED:
        parser.error(f"--scenes: expected 1..{SCENES_PER_SEED}, got {args.scenes}")
    chosen = {m.strip() for m in args.methods.split(",") if m.strip()}
    if unknown := chosen - set(METHODS):
        parser.error(f"--methods: unknown {', '.join(sorted(unknown))}; expected a subset of {', '.join(METHODS)}")
    methods = [name for key, name in METHODS.items() if key == "full" or key in chosen]
    try:
        base_settings = replace(EditSettings(steps=args.steps), **_settings_overrides(args.set))
    except (TypeError, ValueError) as err:
        parser.error(f"--set: {err}")
    pipe = load_pipeline(args.model, LayeredEditPipeline)
    pipe.set_progress_bar_config(disable=True)
    text2image = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                         unet=pipe.unet, scheduler=pipe.scheduler, safety_checker=None,
                                         feature_extractor=None, requires_safety_checker=False)
    text2image.set_progress_bar_config(disable=True)
    settings = base_settings.sized_for(pipe)
    scores = {m: [] for m in methods}
    seconds = {m: [] for m in methods}
    removal = {mode: {"gone": [], "kept": [], "seconds": []} for mode in REPLAY_MODES}
    mask_area, covered = [], []
    for s in tqdm(range(args.scenes), desc="scenes"):
        index = SCENES_PER_SEED * args.seed + s  # seeds S and S + 1 share no scene (seed 0: scenes 0, 1, …)
        scenario = sample_edit_scenario(index, resolution=settings.height)
        seed = 1000 * index
        n = len(scenario.layers)
        covered.append([[j for j in range(i) if covered_later(scenario, j, i)] for i in range(n)])
        mask_area.append([float(layer.rough_mask.mean()) for layer in scenario.layers])
        for method, flags in STRATA_FLAGS.items():
            if method not in methods:
                continue
            background, images, secs, session = run_strata(pipe, scenario, seed, settings, **flags)
            scores[method].append(score_run(background, images, scenario))
            seconds[method] += secs
            if method == "Strata (full)":
                full_background = background
                before = read_image(images[-1])
                others = [l for l in scenario.layers[1:]
                          if object_inside_mask(before, l.target.colour, l.target.shape, l.rough_mask)]
                for mode, r in removal.items():
                    session.settings = replace(session.settings, replay=mode)
                    start = time.perf_counter()
                    after = read_image(session.remove_layer(1))
                    r["seconds"].append(time.perf_counter() - start)
                    session.undo()
                    first = scenario.layers[0]
                    r["gone"].append(not object_inside_mask(after, first.target.colour, first.target.shape,
                                                            first.rough_mask))
                    r["kept"].append(np.mean([object_inside_mask(after, l.target.colour, l.target.shape, l.rough_mask)
                                              for l in others]) if others else np.nan)
        if "blended latent diffusion" in methods:
            images, secs = run_blended(pipe, full_background, scenario, seed, settings)
            scores["blended latent diffusion"].append(score_run(full_background, images, scenario))
            seconds["blended latent diffusion"] += secs
        if "regenerate (floor)" in methods:
            images, secs = run_regenerate(text2image, scenario, seed, settings)
            scores["regenerate (floor)"].append(score_run(full_background, images, scenario))
            seconds["regenerate (floor)"] += secs

    rows = {m: {**{key: mean_se(scene_values(scores[m], key, covered)) for key in SCORES},
                "seconds_per_edit": float(np.mean(seconds[m]))} for m in methods}
    plain_seconds = rows["regenerate (floor)"]["seconds_per_edit"] if "regenerate (floor)" in rows else None
    removal = {mode: {"removed_gone": mean_se(np.asarray(r["gone"], float)), "others_retained": mean_se(r["kept"]),
                      "seconds": float(np.mean(r["seconds"]))} for mode, r in removal.items()}
    table = [[m, _text(r["success"]), _text(r["retention"]), _text(r["bg_change"], 1),
              f"{_text(r['border_step'], 1)} ({_text(r['border_step_before'], 1)})", _text(r["halo"], 1),
              _text(r["texture_step"], 1), _text(r["seam_psnr_db"], 1), r["seconds_per_edit"]] for m, r in rows.items()]
    for mode, r in removal.items():
        table.append([f"removal of layer 1, replay {mode}", f"gone {_text(r['removed_gone'])}",
                      _text(r["others_retained"]), "-", "-", "-", "-", "-", r["seconds"]])
    print_table(f"Layered editing, {args.scenes} scenes, seed {args.seed}, {args.model}, {machine()}",
                ["method", "edit success", "retention", "in-mask bg change", "border step (before)", "halo",
                 "texture step", "seam PSNR dB", "s / edit"], table)
    margins = {m: {key: paired_margin(scores["Strata (full)"], scores[m], key, covered) for key in MARGINS}
               for m in methods[1:]}
    print_table("Strata (full) minus each method, paired by scene (mean ± standard error of the difference; "
                "retention on the objects both made; lower is better for the last four)",
                ["method", "edit success", "retention", "in-mask bg change", "border step", "halo", "texture step"],
                [[m, *(_text(d[key], 3 if key in ("success", "retention") else 1, sign=True) for key in MARGINS)]
                 for m, d in margins.items()])
    ratio = None
    if plain_seconds is not None:
        ratio = rows["Strata (full)"]["seconds_per_edit"] / plain_seconds
        print(f"time per Strata edit / plain generation: {ratio:.2f} (plain {plain_seconds:.3f} s)")
    result = {"settings": args.set, "machine": machine(), "scenes": args.scenes, "seed": args.seed, "rows": rows, "removal": removal,
              "margins": margins, "plain_seconds": plain_seconds, "time_ratio": ratio, "covered": covered,
              "per_edit": {"mask_area": mask_area, **{m: scores[m] for m in methods}}}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
