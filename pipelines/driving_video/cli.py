"""python -m pipelines.driving_video --layout clip.json --out DIR [--frames N --window W --overlap O]
or --seed S (a sampled street clip of the toy world) instead of --layout.

Writes DIR all or nothing (`write_video`): CAM_*.mp4, surround.mp4, CAM_*/ PNG folders, layout.json.
A bad argument or layout is one line naming the field and exit code 2; tqdm shows the frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from formats.layout import CLASSES, StreetClip
from pipelines.driving_video.pipeline import DrivingVideoPipeline
from pipelines.driving_video.video import write_video


def _local_prompts(pairs: list[str]) -> dict[str, str]:
    prompts = {}
    for pair in pairs:
        cls, _, prompt = pair.partition("=")
        if cls not in CLASSES or not prompt.strip():
            raise ValueError(f"--local: expected CLASS=PROMPT with CLASS one of {CLASSES}, got {pair!r}")
        prompts[cls] = prompt.strip()
    return prompts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--layout", help="a street layout JSON (formats.layout, version 1)")
    source.add_argument("--seed", type=int, help="sample a street clip of the toy world")
    parser.add_argument("--out", required=True)
    parser.add_argument("--frames", type=int, default=None, help="default: every frame of the layout (8 for --seed)")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--overlap", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompt", default="a street view")
    parser.add_argument("--local", action="append", default=[], help="CLASS=PROMPT, e.g. car='a blue car' (repeat)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--controlnet", default="embedded")
    parser.add_argument("--projections", default=None,
                        help="trained cross-view projections: a folder saved by CrossViewProjections.save_pretrained, "
                             "'embedded' or 'none' (default: the embedded model's, when --model is embedded and it "
                             "ships them; else none)")
    parser.add_argument("--overlap-sync", type=float, default=0.875,
                        help="fraction of the steps during which neighbouring cameras' overlaps are synchronised (0: off)")
    parser.add_argument("--fps", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    from pipelines.cli_errors import user_errors
    from pipelines.loading import check_device, load_controlnet, load_pipeline, load_view_projections

    out = Path(args.out)
    with user_errors():
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            raise ValueError(f"out: {str(out)!r} exists and is not empty; choose a new folder, or pass --overwrite")
        if args.layout:
            layout = StreetClip.load(args.layout)
        else:
            from world.street import sample_street_clip  # --seed: the toy world's clips
            layout = sample_street_clip(args.seed, n_frames=args.frames or 8)
        local = _local_prompts(args.local)
        projections = args.projections or ("embedded" if args.model == "embedded" else "none")
        pipe = load_pipeline(args.model, DrivingVideoPipeline, device=check_device(args.device),
                             controlnet=load_controlnet(args.controlnet), view_projections=load_view_projections(projections))
        result = pipe(layout, args.prompt, local or None, num_frames=args.frames, window=args.window,
                      overlap=args.overlap, num_inference_steps=args.steps, overlap_sync=args.overlap_sync,
                      generator=torch.Generator().manual_seed(args.seed or 0))
        write_video(result.frames, result.camera_names, layout, out, fps=args.fps)
    print(f"wrote {len(result.frames)} frames × {len(result.camera_names)} cameras to {out}")
