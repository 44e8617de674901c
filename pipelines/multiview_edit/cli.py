"""Edit many posed views of one scene consistently (QNeRF) and write a nerfstudio dataset folder.

    python -m pipelines.multiview_edit --dataset DIR --edit edit.json --out DIR
    python -m pipelines.multiview_edit --scene-seed 3 --edit edit.json --out DIR      # a sampled orbit scene

The edit JSON names one object of the scene and what happens to it (at least one of move, scale,
colour), and optionally the scene's prompt after the edit:

    {"object": 0, "move": [0.6, 0.0], "scale": 1.3, "colour": "red", "prompt": "…"}

object: its index in the scene; move: [dx, dy] on the ground in metres; scale: a factor; colour: a
world colour. A dataset folder written by Strata's orbit world (`world.orbit.write_nerfstudio_dataset`,
or this command's output) carries its scene in transforms.json, so the edit re-renders every view's
control map and depth. Any other nerfstudio folder needs `--controls DIR`: one control map per view
after the edit (frame_00000.png …, layout colours in RGB and near-is-bright depth in alpha) and
`--prompt`. The output folder has images/, a transforms.json with the same cameras (nerfstudio's
parser reads it), and grid.png (source views above, edited views below). Every field is checked
before the model loads (exit 2, one line naming it); the folder is written all or nothing. At the end
each QNeRF interval gets one line on stderr: its steps, the seconds of recording, fitting and rendering
the queries, and the seconds of its denoising steps.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.cli_errors import user_errors
from pipelines.loading import check_device, load_controlnet, load_pipeline
from pipelines.multiview_edit.dataset import parse_edit, read_control_maps, read_views, write_views
from pipelines.multiview_edit.pipeline import MultiViewEditPipeline
from qnerf import FitSettings

METHODS = {"guidance": dict(injection="guidance"), "blend": dict(injection="blend"),
           "independent": dict(injection=None), "extended": dict(injection=None, extended_attention=True)}


def apply_orbit_edit(spec, edit: dict):
    """The orbit spec after the edit (world.orbit's move/scale/recolour); a missing object is named."""
    from world.orbit import move_object, recolour_object, scale_object

    index = edit["object"]
    if not 0 <= index < len(spec.objects):
        raise ValueError(f"edit.object: object {index} does not exist; the scene has {len(spec.objects)} "
                         f"({', '.join(o.prompt for o in spec.objects)})")
    if "move" in edit:
        spec = move_object(spec, index, tuple(edit["move"]))
    if "scale" in edit:
        spec = scale_object(spec, index, float(edit["scale"]))
    if "colour" in edit:
        spec = recolour_object(spec, index, edit["colour"])
    return spec


def orbit_inputs(spec, edit: dict) -> dict:
    """Source views, cameras, control maps before and after, depths after and the prompts of an orbit scene."""
    from world.orbit import control_map, render_orbit

    source = render_orbit(spec)
    edited_spec = apply_orbit_edit(spec, edit)
    edited = render_orbit(edited_spec)
    return dict(images=np.stack([v.rgb for v in source]), cameras=[v.camera for v in source],
                control_image=np.stack([control_map(v) for v in edited]),
                source_control_image=np.stack([control_map(v) for v in source]),
                depths=[v.depth for v in edited], prompt=edit.get("prompt", edited_spec.caption),
                source_prompt=spec.caption)


def grid_png(source: np.ndarray, edited: np.ndarray) -> bytes:
    grid = np.concatenate([np.concatenate(list(source), 1), np.concatenate(list(edited), 1)], 0)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return buffer.getvalue()


def report(fits: list[dict]) -> list[str]:
    """One line per QNeRF interval (the output's `fits`): its steps, the seconds of recording the queries,
    fitting the field and rendering it, and the seconds of the interval's denoising steps."""
    return [f"steps {f['step']}–{f['last_step']}: record+fit+render {f['record_seconds'] + f['seconds']:.1f} s "
            f"(fit {f['fit_seconds']:.1f} s, {f['iterations']} iterations, loss {f['loss']:.3f}), "
            f"generation {f['generation_seconds']:.1f} s" for f in fits]


def prepare(args, channels: int) -> tuple[dict, dict]:
    """Everything the call needs, checked before any model loads: (pipeline inputs, transforms extra)."""
    try:
        edit = parse_edit(Path(args.edit).read_bytes())
    except OSError as err:
        raise ValueError(f"--edit: cannot read {args.edit} ({err.strerror})") from None
    if args.scene_seed is not None:
        from world.orbit import sample_orbit_spec, spec_to_dict

        spec = replace(sample_orbit_spec(args.scene_seed), n_cameras=args.views)
        inputs = orbit_inputs(spec, edit)
        extra = {"strata_scene": {"caption": inputs["prompt"], "orbit": spec_to_dict(apply_orbit_edit(spec, edit))}}
        return inputs, extra
    views = read_views(args.dataset)
    orbit = views.extra.get("strata_scene", {}).get("orbit") if isinstance(views.extra.get("strata_scene"), dict) else None
    if orbit is not None and args.controls is None:
        from world.orbit import spec_from_dict, spec_to_dict

        spec = spec_from_dict(orbit)
        inputs = orbit_inputs(spec, edit)
        if inputs["images"].shape != views.images.shape:
            raise ValueError("dataset: its images do not match the scene its transforms.json describes")
        inputs.update(images=views.images, cameras=views.cameras)
        extra = {"strata_scene": {"caption": inputs["prompt"], "orbit": spec_to_dict(apply_orbit_edit(spec, edit))}}
        return inputs, extra
    if args.controls is None:
        raise ValueError("--controls: this dataset does not carry a Strata scene; give one control map per view")
    if not args.prompt and "prompt" not in edit:
        raise ValueError("prompt: the scene after the edit is needed with control maps (--prompt, or \"prompt\" "
                         "in the edit)")
    controls = read_control_maps(args.controls, len(views.images), views.images.shape[1:3], channels)
    return dict(images=views.images, cameras=views.cameras, control_image=controls, source_control_image=None,
                depths=None, prompt=args.prompt or edit["prompt"], source_prompt=args.source_prompt), {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.multiview_edit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", help="a nerfstudio dataset folder (transforms.json + images)")
    where.add_argument("--scene-seed", type=int, help="a sampled orbit-world scene instead of a folder")
    parser.add_argument("--views", type=int, default=8, help="views of a sampled scene (default 8)")
    parser.add_argument("--edit", required=True, help="the edit JSON (see above)")
    parser.add_argument("--out", required=True, help="the output dataset folder")
    parser.add_argument("--controls", help="control maps after the edit, for a dataset without a Strata scene")
    parser.add_argument("--prompt", help="the scene after the edit (default: the edit's prompt or the scene's caption)")
    parser.add_argument("--source-prompt", help="the scene before the edit (default: --prompt)")
    parser.add_argument("--method", choices=sorted(METHODS), default="blend")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--interval", type=int, default=5, help="steps between QNeRF fits (τ)")
    parser.add_argument("--fit-seconds", type=float, default=4.0, help="time budget of one QNeRF fit")
    parser.add_argument("--overlap-sync", type=float, default=0.0, metavar="FRACTION",
                        help="average the views' clean-latent estimates where the scene's depths link them, the "
                             "first FRACTION of the steps (0: off; needs a Strata scene, which has depths)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--controlnet", default="embedded")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    with user_errors():
        if args.steps < 1 or args.interval < 1 or args.fit_seconds <= 0 or not 2 <= args.views <= 64:
            raise ValueError("--steps/--interval/--fit-seconds/--views: expected positive numbers (2..64 views)")
        if not 0 <= args.overlap_sync <= 1:
            raise ValueError(f"--overlap-sync: expected a fraction of the steps in [0, 1], got {args.overlap_sync}")
        device = check_device(args.device)
        inputs, extra = prepare(args, channels=4)  # every field checked before the model loads
        pipe = load_pipeline(args.model, MultiViewEditPipeline, device=device,
                             controlnet=load_controlnet(args.controlnet))
        start = time.perf_counter()
        out = pipe(**inputs, num_inference_steps=args.steps, interval=args.interval,
                   fit_settings=FitSettings(max_seconds=args.fit_seconds, progress=True),
                   generator=torch.Generator().manual_seed(args.seed), overlap_sync=args.overlap_sync,
                   **METHODS[args.method])
        for line in report(out.fits):
            print(line, file=sys.stderr)
        write_views(args.out, out.images, inputs["cameras"], extra=extra,
                    files={"grid.png": grid_png(inputs["images"], out.images)})
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in out.seconds.items())
    print(f"wrote {args.out} ({len(out.images)} views, {time.perf_counter() - start:.1f} s: {stages})")
    return 0
