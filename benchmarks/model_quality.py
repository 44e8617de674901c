"""How good the embedded default model is, scored by the oracle, beside a random-weight model.

    python -m benchmarks.model_quality --n 200 --seed 0 --json out.json

Text to image: n held-out captions (1–2 objects; the first object's colour, shape and background
form one of the combinations `world.flat.held_out_triples()` that training never shows), one image
each (20 DDIM steps, guidance 4). The oracle reads it: background right; for each asked object, an
object of that colour (colour), of that colour and shape (shape); as many objects as asked (count).

ControlNet: n/4 held-out orbit layouts (one view each); the oracle reads the generated image and
each visible object (≥ 30 layout pixels) scores: an object of its colour whose box has IoU ≥ 0.5
with the layout silhouette's box (inside box), or any object of its colour overlapping it (colour).
The same is measured on the ground-truth render as the ceiling the oracle allows (the oracle reads
these with the renderer's shading range, so a shaded face is still its palette colour).

VAE: PSNR of reconstructions of held-out flat, orbit and street images.
Speed: seconds per 64 × 64 image, 20 steps with guidance, batch 1, on this machine.

Seeds draw disjoint sets: --seed S samples caption specs from S·10⁶ on, layouts from 10⁹ + S·10⁴ on and
VAE images from 2·10⁹ + S·10⁴ on, so the seed-to-seed spread is over different captions and layouts
(before, consecutive seeds walked the same spec seeds: seeds 0, 1, 2 scored the same 200 specs).
Every rate has its 95 % Wilson interval beside it (the ground-truth row's too), the PSNR a 95 % interval
over images; s / image is the mean of 3 timed calls after a warm-up (a time, not a rate: compare it
only within one run).

The random-weight model has the same architecture (`world.models.build_components`, seed 0).
JSON keys: machine, n, seed, rows.<model>.{t2i_background, t2i_colour, t2i_shape, t2i_count,
controlnet_inside_box, controlnet_colour, vae_psnr_db, seconds_per_image} and <key>_ci = [low, high]
for each rate and the PSNR, ground_truth.{controlnet_inside_box, controlnet_colour}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline, StableDiffusionPipeline
from tqdm.auto import tqdm

from benchmarks.common import machine, print_table, write_json
from pipelines.loading import EMBEDDED, ModelLoadError, load_controlnet, load_pipeline
from world.flat import held_out_triples, render_flat, sample_flat_spec
from world.geometry import SHADING
from world.models import build_components, build_controlnet, scheduler_config
from world.oracle import box_iou, read_image
from world.orbit import control_map, render_orbit, sample_orbit_spec
from world.street import render_street_frame, sample_street_clip
from pipelines.conditioning import images_to_tensor

STEPS, GUIDANCE = 20, 4.0
CAPTIONS_PER_SEED = 10**6  # spec seeds S·10⁶, S·10⁶ + 1, …: each seed its own captions
CASES_PER_SEED = 10**4


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a rate."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(centre - half), float(centre + half)]


def held_out_captions(n: int, seed: int) -> list:
    held = held_out_triples()
    specs, s = [], CAPTIONS_PER_SEED * seed
    while len(specs) < n:
        spec = sample_flat_spec(s, (1, 2))
        s += 1
        first = spec.objects[0]
        if (first.colour, first.shape, spec.background) in held:
            specs.append(spec)
    return specs


def generate(pipe, prompts, seed, **kwargs) -> np.ndarray:
    images = pipe(prompts, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=64, width=64,
                  generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images
    return (images * 255).round().astype(np.uint8)


def score_t2i(pipe, specs, seed, batch: int = 16) -> dict:
    totals = dict(background=0, colour=0, shape=0, count=0, objects=0)
    for start in tqdm(range(0, len(specs), batch), desc="text to image", leave=False):
        chunk = specs[start:start + batch]
        for spec, image in zip(chunk, generate(pipe, [s.caption for s in chunk], seed + start)):
            reading = read_image(image)
            totals["background"] += reading.background == spec.background
            totals["count"] += len(reading.objects) == len(spec.objects)
            for obj in spec.objects:
                totals["objects"] += 1
                totals["colour"] += bool(reading.find(obj.colour))
                totals["shape"] += bool(reading.find(obj.colour, obj.shape))
    n, objects = len(specs), totals["objects"]
    out = {}
    for key, total in (("background", n), ("colour", objects), ("shape", objects), ("count", n)):
        out[f"t2i_{key}"] = totals[key] / total
        out[f"t2i_{key}_ci"] = wilson(totals[key], total)
    return out


def controlnet_cases(n: int, seed: int) -> list:
    cases = []
    for s in range(n):
        spec = sample_orbit_spec(10**9 + CASES_PER_SEED * seed + s, (1, 3), n_cameras=8)
        view = render_orbit(spec, [s % 8])[0]
        objects = []
        for k, obj in enumerate(spec.objects, start=1):
            ys, xs = np.nonzero(view.instance == k)
            if len(ys) >= 30:
                objects.append((obj.colour, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
        cases.append((spec.caption, view, objects))
    return cases


def score_layout(images, cases) -> dict:
    inside = colour = total = 0
    for image, (_, _, objects) in zip(images, cases):
        reading = read_image(image, shading=SHADING)  # orbit renders are Lambertian-shaded
        for obj_colour, box in objects:
            total += 1
            matches = reading.find(obj_colour)
            inside += any(box_iou(m.box, box) >= 0.5 for m in matches)
            colour += any(box_iou(m.box, box) > 0 for m in matches)
    return {"controlnet_inside_box": inside / max(total, 1), "controlnet_inside_box_ci": wilson(inside, total),
            "controlnet_colour": colour / max(total, 1), "controlnet_colour_ci": wilson(colour, total)}


def score_controlnet(pipe, cases, seed, batch: int = 8) -> dict:
    images = []
    for start in tqdm(range(0, len(cases), batch), desc="controlnet", leave=False):
        chunk = cases[start:start + batch]
        control = torch.from_numpy(np.stack([control_map(view) for _, view, _ in chunk])).permute(0, 3, 1, 2)
        images.extend(generate(pipe, [c for c, _, _ in chunk], seed + start, image=control))
    return score_layout(images, cases)


@torch.no_grad()
def vae_psnr(vae, n: int, seed: int) -> tuple[float, list[float]]:
    """Mean PSNR of reconstructions and its 95 % interval over images."""
    first = 2 * 10**9 + CASES_PER_SEED * seed
    images = [render_flat(sample_flat_spec(first + s, (0, 5))).image for s in range(n // 2)]
    images += [v.rgb for s in range(n // 4) for v in render_orbit(sample_orbit_spec(first + s), [s % 8])]
    images += [v.rgb for s in range(n // 4) for v in render_street_frame(sample_street_clip(first + s, n_frames=1), 0, [s % 6])]
    x = images_to_tensor(images)
    recon = torch.cat([vae(x[i:i + 16], sample_posterior=False).sample for i in range(0, len(x), 16)]).clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).mean((1, 2, 3))
    psnr = (10 * torch.log10(1 / mse)).double().numpy()
    half = 1.96 * psnr.std(ddof=1) / np.sqrt(len(psnr))
    return float(psnr.mean()), [float(psnr.mean() - half), float(psnr.mean() + half)]


def seconds_per_image(pipe, repeats: int = 3) -> float:
    generate(pipe, ["a red circle on grass"], 0)
    start = time.perf_counter()
    for i in range(repeats):
        generate(pipe, ["a red circle on grass"], i)
    return (time.perf_counter() - start) / repeats


def evaluate(pipe, controlnet, specs, cases, args) -> dict:
    pipe.set_progress_bar_config(disable=True)
    row = score_t2i(pipe, specs, args.seed)
    if controlnet is not None:
        cn_pipe = StableDiffusionControlNetPipeline(**{k: getattr(pipe, k) for k in
                                                       ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                                    controlnet=controlnet, safety_checker=None, feature_extractor=None,
                                                    requires_safety_checker=False)
        cn_pipe.set_progress_bar_config(disable=True)
        row.update(score_controlnet(cn_pipe, cases, args.seed))
    row["vae_psnr_db"], row["vae_psnr_db_ci"] = vae_psnr(pipe.vae, 64, args.seed)
    row["seconds_per_image"] = seconds_per_image(pipe)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--controlnet", default=EMBEDDED, help="'embedded', a ControlNet folder, or 'none'")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    specs = held_out_captions(args.n, args.seed)
    cases = controlnet_cases(max(4, args.n // 4), args.seed)
    rows = {}
    try:
        pipe = load_pipeline(args.model)  # fp16 files load as float32
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        controlnet = None
        if args.controlnet != "none":
            try:
                controlnet = load_controlnet(args.controlnet)
            except ModelLoadError as err:
                print(f"no ControlNet: {err}")
        rows[str(args.model)] = evaluate(pipe, controlnet, specs, cases, args)
    except ModelLoadError as err:
        print(f"skipping the trained model: {err}")
    random = StableDiffusionPipeline(**build_components(seed=0))
    random.scheduler = DDIMScheduler(**scheduler_config())
    rows["random weights"] = evaluate(random, build_controlnet(random.unet), specs, cases, args)
    ground_truth = score_layout([view.rgb for _, view, _ in cases], cases)
    keys = ["t2i_background", "t2i_colour", "t2i_shape", "t2i_count", "controlnet_inside_box", "controlnet_colour",
            "vae_psnr_db", "seconds_per_image"]
    def cell(row, key):
        if key not in row:
            return "-"
        if f"{key}_ci" not in row:
            return row[key]
        low, high = row[f"{key}_ci"]
        digits = 1 if key == "vae_psnr_db" else 3
        return f"{row[key]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    table = [[name] + [cell(row, k) for k in keys] for name, row in rows.items()]
    table.append(["ground-truth render"] + ["-"] * 4 + [cell(ground_truth, "controlnet_inside_box"),
                                                       cell(ground_truth, "controlnet_colour"), "-", "-"])
    print_table(f"Model quality on held-out captions (n={args.n}) and layouts (n={len(cases)}), seed {args.seed}, "
                f"{machine()}", ["model", "background", "colour", "shape", "count", "CN in box", "CN colour",
                                 "VAE PSNR dB", "s / image"], table)
    result = {"machine": machine(), "n": args.n, "seed": args.seed, "rows": rows, "ground_truth": ground_truth}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
