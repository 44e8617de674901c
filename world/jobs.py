"""Batch jobs from world scenes: what `python -m pipelines.batch --from-seeds A:B --kind K` runs.

layered_edit: one job per edit scenario (world.flat.sample_edit_scenario(seed)), its edit script inline
in the job's line and its rough masks as PNGs beside the jobs file. multiview_edit: the orbit scene's
seed and an edit of its object 0 (move, scale and recolour in turn, as benchmarks.multiview_edit does).
driving_video: the street clip's seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from world.flat import sample_edit_scenario


def edit_script(seed: int, masks: Path, prefix: str) -> dict:
    """The edit script of scenario `seed`, its masks written as masks/<prefix>_<k>.png."""
    scenario = sample_edit_scenario(seed)
    layers = []
    for k, layer in enumerate(scenario.layers):
        name = f"{prefix}_{k}.png"
        Image.fromarray(layer.rough_mask.astype(np.uint8) * 255).save(masks / name)
        layers.append({"prompt": layer.prompt, "seed": 1000 * seed + k + 1, "mask": {"png": f"{masks.name}/{name}"}})
    return {"scene": {"prompt": scenario.background_prompt, "seed": 1000 * seed}, "layers": layers}


def orbit_edit(seed: int) -> dict:
    """Move, scale or recolour (to a colour not in the scene) object 0 of orbit scene `seed`."""
    from world.orbit import example_edit, sample_orbit_spec

    return example_edit(sample_orbit_spec(seed), seed)


def write_jobs(seeds, kind: str, folder: Path) -> Path:
    """folder/jobs.jsonl (and folder/masks/) for these seeds; returns the jobs file."""
    folder = Path(folder)
    masks = folder / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    lines = []
    for seed in seeds:
        job = {"id": f"scene-{seed:06d}", "kind": kind, "seed": 0}
        if kind == "layered_edit":
            job["script"] = edit_script(seed, masks, job["id"])
        else:
            job["scene_seed"] = seed
            if kind == "multiview_edit":
                job["edit"] = orbit_edit(seed)
        lines.append(json.dumps(job))
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
