"""The scripted CLI: python -m pipelines.layered_edit --script edits.json --out DIR (format: `load_script`).

Every field of the script is checked before the model loads; a bad one is one line on stderr that
names it, and exit code 2. The output folder is written whole or not at all: a temporary folder
beside it becomes --out when every edit is done. An existing, non-empty --out is refused unless
--overwrite says to replace it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from formats.jsonfile import read_json
from pipelines.atomic import writing_folder
from pipelines.layered_edit.pipeline import LayeredEditPipeline
from pipelines.layered_edit.session import LayeredSession
from pipelines.layered_edit.settings import EditSettings, check_seed

MAX_SCRIPT_BYTES = 1 << 20
MAX_LAYERS = 64


@dataclass
class ScriptLayer:
    prompt: str
    mask: dict
    seed: int


@dataclass
class Script:
    model: str | None
    settings: EditSettings
    scene: dict
    layers: list[ScriptLayer]
    base: Path  # the script's folder: image and mask paths are relative to it


def load_script(path: str | Path, base: str | Path | None = None) -> Script:
    """An edit script (JSON), checked field by field (ValueError naming the first bad one):

        {"model": "embedded",                              optional: a diffusers folder or hub id
         "settings": {"height": 64, "width": 64, "steps": 20, "guidance": 4.0, "harmonize": 0.2},  optional
         "scene": {"prompt": "an empty scene of grass", "seed": 0}     or {"image": "photo.png",
                                                                          "method": "inversion"}
         "layers": [{"prompt": "a red circle", "seed": 1,
                     "mask": {"box": [x0, y0, x1, y1]}  or  {"png": "mask.png"}}, …]}

    A layer's seed defaults to its position (1, 2, …); image and mask paths are relative to the script
    (or to base, for a script written out of a batch job's line).
    """
    path = Path(path)
    data = read_json(path, "script", MAX_SCRIPT_BYTES)
    _object(data, "script", required=("scene",), allowed=("model", "settings", "scene", "layers"))
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"model: expected 'embedded', a diffusers folder or a hub id, got {model!r}")
    settings = data.get("settings", {})
    _object(settings, "settings", allowed=[f.name for f in fields(EditSettings)])
    try:
        settings = EditSettings(**settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"settings.{err}") from None
    base = path.parent if base is None else Path(base)
    scene = data["scene"]
    _object(scene, "scene", allowed=("prompt", "seed", "image", "method"))
    if "prompt" not in scene and "image" not in scene:
        raise ValueError("scene: expected a 'prompt' (to generate the scene) or an 'image' (to start from)")
    if "image" in scene:
        _file(scene["image"], base, "scene.image")
        if scene.get("method", "inversion") not in ("inversion", "noise"):
            raise ValueError(f"scene.method: expected 'inversion' or 'noise', got {scene['method']!r}")
    _text(scene.get("prompt", ""), "scene.prompt", empty="image" in scene)
    _seed(scene.get("seed", 0), "scene.seed")
    layers = data.get("layers", [])
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise ValueError(f"layers: expected a list of at most {MAX_LAYERS} layers, got "
                         f"{len(layers) if isinstance(layers, list) else type(layers).__name__}")
    parsed = []
    for i, layer in enumerate(layers):
        where = f"layers[{i}]"
        _object(layer, where, required=("prompt", "mask"), allowed=("prompt", "mask", "seed"))
        _text(layer["prompt"], f"{where}.prompt")
        mask = layer["mask"]
        _object(mask, f"{where}.mask", allowed=("box", "png"))
        if len(mask) != 1:
            raise ValueError(f"{where}.mask: expected {{'box': [x0, y0, x1, y1]}} or {{'png': 'file.png'}}")
        if "box" in mask:
            box = mask["box"]
            if not isinstance(box, list) or len(box) != 4 or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in box) or box[0] >= box[2] or box[1] >= box[3]:
                raise ValueError(f"{where}.mask.box: expected [x0, y0, x1, y1] whole pixels with x0 < x1 and y0 < y1, "
                                 f"got {box!r}")
        else:
            _file(mask["png"], base, f"{where}.mask.png")
        parsed.append(ScriptLayer(layer["prompt"], mask, _seed(layer.get("seed", i + 1), f"{where}.seed")))
    return Script(model, settings, scene, parsed, base)


def _object(value, where: str, required=(), allowed=()) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    for key in required:
        if key not in value:
            raise ValueError(f"{where}: missing field {key!r}")
    for key in value:
        if key not in allowed:
            raise ValueError(f"{where}: unknown field {key!r}; expected {', '.join(allowed)}")


def _text(value, where: str, empty: bool = False) -> None:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ValueError(f"{where}: expected text, e.g. 'a red circle', got {value!r}")


def _seed(value, where: str) -> int:
    try:
        return check_seed(value)
    except ValueError as err:
        raise ValueError(f"{where}{str(err)[4:]}") from None  # "seed: …" → "<where>: …"


def _file(value, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a file path relative to the script, got {value!r}")
    path = base / value
    if not path.is_file():
        raise ValueError(f"{where}: no such file {value!r} next to the script")
    return path


def script_mask(spec: dict, height: int, width: int, base: Path) -> np.ndarray:
    """(height, width) bool from a script layer's mask (a box, or a PNG whose bright pixels count)."""
    if "box" in spec:
        x0, y0, x1, y1 = spec["box"]
        mask = np.zeros((height, width), dtype=bool)
        mask[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
        return mask
    try:
        return np.asarray(Image.open(base / spec["png"]).convert("L")) > 127
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"mask.png: {spec['png']!r} is not an image") from None


def run(script: Script, out: Path, model: str | None = None, overwrite: bool = False, device: str | None = None,
        dtype: str | None = None) -> LayeredSession:
    """Run a checked script into out (all or nothing); device, dtype: as diffusers' `pipe.to(...)`."""
    from pipelines.loading import check_device, load_pipeline, parse_dtype

    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"out: {str(out)!r} exists and is not empty; choose a new folder, or pass --overwrite")
    options = {} if dtype is None else {"dtype": parse_dtype(dtype)}
    pipe = load_pipeline(model or script.model or "embedded", LayeredEditPipeline, device=check_device(device), **options)
    pipe.set_progress_bar_config(disable=True)
    with writing_folder(out) as partial:
        return run_script(script, pipe, partial, progress=True)


def run_script(script: Script, pipe: LayeredEditPipeline, folder: Path, seed_offset: int = 0,
               progress: bool = False) -> LayeredSession:
    """The edits of a checked script with a loaded pipeline, written into folder: step_NN.png after each,
    layers/layer_NN.png (each layer's own cut-out, `LayeredSession.layer_cutout`) and the saved session. seed_offset is added to every seed (a batch job's seed)."""
    try:
        session = LayeredSession(pipe, script.settings)
    except ValueError as err:  # a size the model's VAE cannot take
        raise ValueError(f"settings.{err}") from None
    s = session.settings
    with tqdm(total=1 + len(script.layers), desc="edits", disable=not progress) as bar:
        (folder / "layers").mkdir()
        scene = script.scene
        if "image" in scene:
            session.start_from_image(script.base / scene["image"], scene.get("prompt", ""),
                                     scene.get("method", "inversion"), scene.get("seed", 0) + seed_offset)
        else:
            session.start_from_prompt(scene["prompt"], scene.get("seed", 0) + seed_offset)
        Image.fromarray(session.composite).save(folder / "step_00.png")
        bar.update(1)
        for i, layer in enumerate(script.layers):
            try:
                session.add_layer(layer.prompt, script_mask(layer.mask, s.height, s.width, script.base),
                                  layer.seed + seed_offset)
            except ValueError as err:
                raise ValueError(f"layers[{i}].{err}") from None
            Image.fromarray(session.composite).save(folder / f"step_{i + 1:02d}.png")
            bar.update(1)
        for i in range(len(session.layers)):  # each layer's own cut-out (the step_NN.png are the composites)
            Image.fromarray(session.layer_cutout(i)).save(folder / "layers" / f"layer_{i:02d}.png")
        session.save(folder / "session")
    return session


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True, help="edit script JSON (see pipelines.layered_edit.load_script)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None, help="overrides the script's model")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default=None, help="float32 (default), float16 or bfloat16")
    args = parser.parse_args(argv)
    from pipelines.cli_errors import user_errors

    with user_errors():
        session = run(load_script(args.script), Path(args.out), args.model, args.overwrite, args.device, args.dtype)
    print(f"wrote {len(session.layers)} layers to {args.out}")
