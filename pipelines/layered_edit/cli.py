"""The scripted CLI: python -m pipelines.layered_edit --script edits.json --out DIR (format: `load_script`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pipelines.layered_edit.pipeline import LayeredEditPipeline
from pipelines.layered_edit.session import LayeredSession
from pipelines.layered_edit.settings import EditSettings


def load_script(path: str | Path) -> dict:
    """An edit script (JSON):

        {"model": "embedded",                              optional: a diffusers folder or hub id
         "settings": {"height": 64, "width": 64, "steps": 20, "guidance": 4.0, "harmonize": 0.2},  optional
         "scene": {"prompt": "an empty scene of grass", "seed": 0}     or {"image": "photo.png",
                                                                          "method": "inversion"}
         "layers": [{"prompt": "a red circle", "seed": 1,
                     "mask": {"box": [x0, y0, x1, y1]}  or  {"png": "mask.png"}}, …]}
    """
    path = Path(path)
    try:
        script = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if "scene" not in script or not isinstance(script.get("layers", []), list):
        raise ValueError(f"{path}: expected a 'scene' object and a 'layers' list")
    return script


def script_mask(spec: dict, height: int, width: int, base: Path) -> np.ndarray:
    if "box" in spec:
        x0, y0, x1, y1 = (int(v) for v in spec["box"])
        mask = np.zeros((height, width), dtype=bool)
        mask[max(0, y0):y1, max(0, x0):x1] = True
        return mask
    if "png" in spec:
        return np.asarray(Image.open(base / spec["png"]).convert("L")) > 127
    raise ValueError("layers[].mask: expected {'box': [x0, y0, x1, y1]} or {'png': 'file.png'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True, help="edit script JSON (see pipelines.layered_edit.load_script)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None, help="overrides the script's model")
    args = parser.parse_args(argv)
    from pipelines.loading import load_pipeline
    script = load_script(args.script)
    base = Path(args.script).parent
    pipe = load_pipeline(args.model or script.get("model", "embedded"), LayeredEditPipeline)
    pipe.set_progress_bar_config(disable=True)
    session = LayeredSession(pipe, EditSettings(**script.get("settings", {})))
    out = Path(args.out)
    (out / "layers").mkdir(parents=True, exist_ok=True)
    scene = script["scene"]
    steps = tqdm(total=1 + len(script["layers"]), desc="edits")
    if "image" in scene:
        session.start_from_image(base / scene["image"], scene.get("prompt", ""), scene.get("method", "inversion"),
                                 scene.get("seed", 0))
    else:
        session.start_from_prompt(scene["prompt"], scene.get("seed", 0))
    Image.fromarray(session.composite).save(out / "step_00.png")
    steps.update(1)
    s = session.settings
    for i, layer in enumerate(script["layers"], start=1):
        session.add_layer(layer["prompt"], script_mask(layer["mask"], s.height, s.width, base), layer.get("seed", i))
        Image.fromarray(session.composite).save(out / f"step_{i:02d}.png")
        steps.update(1)
    steps.close()
    for i, image in enumerate(session.layer_images()):
        Image.fromarray(image).save(out / "layers" / f"layer_{i:02d}.png")
    session.save(out / "session")
    print(f"wrote {len(session.layers)} layers to {out}")


if __name__ == "__main__":
    main()
