"""The day's main job until the app lands: render the three worlds and generate with the embedded model.

    python -m app.demo --out out/demo

Writes flat.png (scenes with captions' ground truth), orbit.png (RGB and layout rows), street.png
(6 cameras × frames) and, when the embedded model is present, generated.png (captions → images).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from world.flat import render_flat, sample_flat_spec
from world.orbit import render_orbit, sample_orbit_spec
from world.street import render_street_clip, sample_street_clip

CAPTIONS = ["a red circle on grass", "a blue square on sand", "a yellow triangle on water",
            "an orange circle and a black square on snow"]


def _rows(rows: list[list[np.ndarray]], scale: int = 2) -> Image.Image:
    image = np.concatenate([np.concatenate(row, 1) for row in rows], 0)
    return Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="embedded", help="'embedded', a diffusers folder or a hub id")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = [render_flat(sample_flat_spec(args.seed + i)) for i in range(8)]
    _rows([[s.image for s in scenes]]).save(out / "flat.png")
    (out / "flat_captions.txt").write_text("\n".join(s.caption for s in scenes) + "\n")
    views = render_orbit(sample_orbit_spec(args.seed, n_cameras=8))
    _rows([[v.rgb for v in views], [v.layout for v in views]]).save(out / "orbit.png")
    clip = render_street_clip(sample_street_clip(args.seed, n_frames=4))
    _rows([[v.rgb for v in frame] for frame in clip]).save(out / "street.png")
    print(f"rendered the worlds into {out}/ (flat.png, orbit.png, street.png)")

    import torch

    from pipelines.loading import ModelLoadError, load_pipeline
    try:
        pipe = load_pipeline(args.model)
    except ModelLoadError as err:
        print(f"no generation: {err}")
        return
    images = pipe(CAPTIONS, num_inference_steps=20, guidance_scale=4.0, height=64, width=64,
                  generator=torch.Generator().manual_seed(args.seed), output_type="np").images
    _rows([list((images * 255).round().astype(np.uint8))]).save(out / "generated.png")
    print(f"generated {len(CAPTIONS)} images with {args.model} into {out}/generated.png:")
    for caption in CAPTIONS:
        print(f"  {caption}")


if __name__ == "__main__":
    main()
