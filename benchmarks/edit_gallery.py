"""A picture of what the layered-editing benchmark scores: a few edits side by side.

    python -m benchmarks.edit_gallery --scenes 4 --seed 0 --out docs/edits.png

One row per scenario (the same scenarios, seeds and rough masks as `benchmarks.layered_edit --seed`):
the scene before its last edit with that edit's rough mask outlined, then the composite after it from
Strata (object overlay, the default), Strata with the whole-mask overlay (what it did before: the
halo), and blended latent diffusion run as in the benchmark. Images are enlarged 4× with hard pixel
edges; the outline is drawn only on the first column.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from benchmarks.layered_edit import SCENES_PER_SEED, run_blended, run_strata
from pipelines.layered_edit import EditSettings, LayeredEditPipeline
from pipelines.loading import load_pipeline
from world.flat import sample_edit_scenario

SCALE = 4
COLUMNS = ("before the edit (its rough mask)", "Strata", "Strata, whole-mask overlay", "blended latent diffusion")


def outlined(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    border = mask & ~ndimage.binary_erosion(mask)
    out = image.copy()
    out[border] = (255, 255, 255)
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--out", default="docs/edits.png")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model, LayeredEditPipeline)
    pipe.set_progress_bar_config(disable=True)
    settings = EditSettings().sized_for(pipe)
    rows = []
    for s in range(args.scenes):
        index = SCENES_PER_SEED * args.seed + s
        scenario = sample_edit_scenario(index, resolution=settings.height)
        seed = 1000 * index
        background, strata, _, _ = run_strata(pipe, scenario, seed, settings)
        _, halo, _, _ = run_strata(pipe, scenario, seed, settings, overlay="mask")
        blended, _ = run_blended(pipe, background, scenario, seed, settings)
        before = strata[-2] if len(strata) > 1 else background
        rows.append([outlined(before, scenario.layers[-1].rough_mask), strata[-1], halo[-1], blended[-1]])
    size = settings.height * SCALE
    pad, title = 8, 28
    sheet = Image.new("RGB", (len(COLUMNS) * (size + pad) + pad, title + len(rows) * (size + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(COLUMNS):
        draw.text((pad + c * (size + pad), 8), name, fill="black")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            tile = Image.fromarray(image).resize((size, size), Image.NEAREST)
            sheet.paste(tile, (pad + c * (size + pad), title + r * (size + pad)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
