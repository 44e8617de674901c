"""The layered-edit CLI: a bad script is one line naming the field and exit code 2, before the model
loads; the output folder is complete or absent. Found: 35 of 39 bad scripts printed a traceback, and
a failed run left a folder that described two scenes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline

from pipelines.layered_edit import main as layered_cli
from pipelines.layered_edit.cli import load_script
from tests.tiny_models import sd1_components

GOOD = {"settings": {"height": 32, "width": 32, "steps": 2}, "scene": {"prompt": "an empty scene of snow", "seed": 0},
        "layers": [{"prompt": "a red circle", "seed": 1, "mask": {"box": [2, 2, 14, 14]}},
                   {"prompt": "a blue square", "seed": 2, "mask": {"box": [16, 16, 30, 30]}}]}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "model"
    StableDiffusionPipeline(**sd1_components()).save_pretrained(folder)
    return folder


def _script(tmp_path, data) -> Path:
    path = tmp_path / "edits.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_good_script_writes_a_whole_folder(model, tmp_path):
    out = tmp_path / "out"
    layered_cli(["--script", str(_script(tmp_path, GOOD)), "--out", str(out), "--model", str(model)])
    for name in ("step_00.png", "step_02.png", "layers/layer_02.png", "session/session.json"):
        assert (out / name).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _with(**changes):
    data = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        target = data
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is KeyError:
            del target[keys[-1]]
        else:
            target[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return data


@pytest.mark.parametrize("data, message", [
    ("{oops", "script: not valid JSON"),
    ("[]", "script: expected an object"),
    (_with(scene=KeyError), "script: missing field 'scene'"),
    (_with(scene={}), "scene: expected a 'prompt'"),
    (_with(scene__prompt=""), "scene.prompt: expected text"),
    (_with(scene__seed=-1), "scene.seed: expected an integer"),
    (_with(scene={"image": "missing.png"}), "scene.image: no such file"),
    (_with(settings__steps=0), "settings.steps: expected a positive integer"),
    (_with(settings__steps=-3), "settings.steps"),
    (_with(settings__guidance="x"), "settings.guidance"),
    (_with(settings__colour="red"), "settings: unknown field 'colour'"),
    (_with(layers={"prompt": "x"}), "layers: expected a list"),
    (_with(layers__0__mask=KeyError), r"layers[0]: missing field 'mask'"),
    (_with(layers__0__mask={"box": [2, 2, 1, 14]}), "layers[0].mask.box: expected [x0, y0, x1, y1]"),
    (_with(layers__0__mask={"box": [2, 2, 14]}), "layers[0].mask.box"),
    (_with(layers__0__mask={"png": "nope.png"}), "layers[0].mask.png: no such file"),
    (_with(layers__0__mask={"circle": 3}), "layers[0].mask: unknown field 'circle'"),
    (_with(layers__1__seed=1.5), "layers[1].seed: expected an integer"),
    (_with(layers__1__prompt=7), "layers[1].prompt: expected text"),
    (_with(model=3), "model: expected"),
])
def test_bad_scripts_are_refused_by_field_before_anything_runs(tmp_path, data, message):
    with pytest.raises(ValueError) as err:
        load_script(_script(tmp_path, data))
    assert message in str(err.value)


@pytest.mark.parametrize("data, message", [
    (_with(settings__height=63), "settings.height: expected a positive multiple of 2"),  # the tiny VAE's factor
    (_with(layers__0__mask={"box": [40, 40, 50, 50]}), "layers[0].rough_mask: the mask is empty"),
])
def test_errors_found_while_running_leave_no_folder_and_exit_2(model, tmp_path, data, message):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "pipelines.layered_edit", "--script", str(_script(tmp_path, data)),
                           "--out", str(out), "--model", str(model)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["edits.json"]


def test_an_existing_out_is_refused_unless_overwrite(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    script = _script(tmp_path, GOOD)
    with pytest.raises(SystemExit) as exit_code:
        layered_cli(["--script", str(script), "--out", str(out), "--model", str(model)])
    assert exit_code.value.code == 2 and (out / "mine.txt").read_text() == "keep"
    layered_cli(["--script", str(script), "--out", str(out), "--model", str(model), "--overwrite"])
    assert not (out / "mine.txt").exists() and (out / "session" / "session.json").exists()
