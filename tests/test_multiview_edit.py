"""MultiViewEditPipeline on the tiny SD-1-like model + ControlNet: every method runs, the mechanisms
change what they should, the model is left as it was, nerfstudio folders round-trip, and bad input is
refused with one message before anything is written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline
from PIL import Image

from attention_processors.install import is_cross_attention
from attention_processors.multiview import MultiViewProcessor
from attention_processors.source_kv import SourceKV
from pipelines.multiview_edit import MultiViewEditPipeline, parse_edit, read_views, write_views
from pipelines.multiview_edit.cli import apply_orbit_edit, main, orbit_inputs
from pipelines.multiview_edit.dataset import read_control_maps
from qnerf import FieldConfig, FitSettings
from tests.tiny_models import sd1_components, tiny_controlnet
from world.orbit import sample_orbit_spec, write_nerfstudio_dataset, render_orbit

ROOT = Path(__file__).resolve().parent.parent
FAST_FIT = dict(fit_settings=FitSettings(iterations=3, rays_per_step=64),
                field_config=FieldConfig(num_levels=4, max_res=32, log2_hashmap_size=10, samples=8, pdf_samples=4))


@pytest.fixture(scope="module")
def pipe():
    components = {k: v for k, v in sd1_components().items()
                  if k not in ("safety_checker", "feature_extractor", "requires_safety_checker")}
    pipe = MultiViewEditPipeline(**components, controlnet=tiny_controlnet(components["unet"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def scene():
    spec = replace(sample_orbit_spec(1), n_cameras=4, resolution=16)
    return spec, orbit_inputs(spec, {"object": 0, "colour": "red", "move": [0.4, 0.0]})


def _run(pipe, inputs, **kwargs):
    return pipe(**inputs, generator=torch.Generator().manual_seed(0),
                **{"num_inference_steps": 4, "interval": 2, **FAST_FIT, **kwargs})


@pytest.mark.parametrize("method", [dict(injection="guidance"), dict(injection="blend"), dict(injection=None),
                                    dict(injection=None, extended_attention=True)])
def test_every_method_edits_every_view_and_restores_the_model(pipe, scene, method):
    before = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    out = _run(pipe, scene[1], qnerf_until=1.0, **method)
    assert out.images.shape == (4, 16, 16, 3) and out.images.dtype == np.uint8
    intervals = [(0, 1), (2, 3)] if method["injection"] else []  # a fit every 2 of 4 steps
    assert [(f["step"], f["last_step"]) for f in out.fits] == intervals
    assert all(f["record_seconds"] > 0 and f["generation_seconds"] > 0 for f in out.fits)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == before


def test_each_mechanism_changes_the_result(pipe, scene):
    """Guards: an injection mode, the key/value injection or the extended attention silently not applied."""
    _, inputs = scene
    plain = _run(pipe, inputs, injection=None, source_kv=False).latents
    for kwargs in (dict(injection=None), dict(injection="guidance", source_kv=False),
                   dict(injection="blend", source_kv=False, blend_weight=1.0),
                   dict(injection=None, source_kv=False, extended_attention=True)):
        assert not torch.allclose(_run(pipe, inputs, **kwargs).latents, plain, atol=1e-4), kwargs


def test_only_the_chosen_kv_layers_read_the_source_keys_and_values(pipe, scene, monkeypatch):
    """Guards: kv_layers ignored (every up-block self-attention injecting anyway), a chosen layer outside
    the up blocks left out, or a choice that does not reach the result."""
    _, inputs = scene
    injected = set()
    exchange = SourceKV.exchange

    def spy(kv, name, step, key, value):
        out = exchange(kv, name, step, key, value)
        if out[0] is not key:
            injected.add(name)
        return out
    monkeypatch.setattr(SourceKV, "exchange", spy)
    self_attention = [n for n in pipe.unet.attn_processors if not is_cross_attention(n)]
    up = [n for n in self_attention if n.startswith("up_blocks.")]
    default = _run(pipe, inputs, injection=None).latents
    assert injected == set(up) and len(up) == 2
    for chosen in ([up[-1]], [n for n in self_attention if n.startswith("down_blocks.")]):
        injected.clear()
        latents = _run(pipe, inputs, injection=None, kv_layers=chosen).latents
        assert injected == set(chosen), chosen
        assert not torch.allclose(latents, default, atol=1e-4), chosen


@pytest.mark.parametrize("kv_layers, message", [
    (["up_blocks.9.attentions.0.transformer_blocks.0.attn1.processor"], "kv_layers: expected self-attention"),
    (["up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"], "kv_layers: expected self-attention"),
    ([], "kv_layers: expected a non-empty list"),
    ("up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor", "kv_layers: expected a non-empty list"),
])
def test_bad_kv_layers_are_named(pipe, scene, kv_layers, message):
    """Guards: an unknown or a cross-attention layer (its keys are the prompt's, not a view's) accepted and
    silently never injected, or a single name taken letter by letter."""
    with pytest.raises(ValueError, match=re.escape(message)):
        _run(pipe, scene[1], kv_layers=kv_layers)


@pytest.mark.parametrize("inputs, kwargs", [
    (dict(), dict(kv_layers=["nope"])), (dict(), dict(interval=0)),
    (dict(control_image=np.zeros((4, 8, 8, 4), np.float32)), dict()),
])
def test_a_rejected_call_leaves_the_attention_processors_as_they_were(pipe, scene, inputs, kwargs):
    """Guards: a call that swaps the UNet's processors before its arguments are checked, so a refused
    call changes the model (the same processor objects must be installed afterwards)."""
    before = pipe.unet.attn_processors
    with pytest.raises(ValueError):
        _run(pipe, {**scene[1], **inputs}, **kwargs)
    after = pipe.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


@pytest.mark.parametrize("space", ["image", "latent"])
def test_overlap_sync_brings_the_views_together_where_the_depths_link_them(pipe, scene, space):
    """Guards against the sync switched off in the pipeline (the result unchanged), a latent sync that
    does not bring linked cells of different views closer at the end, and a sync that runs without
    depths (nothing says which cells agree: the result must be independent editing's). Image space
    through the tiny random VAE (its encoder does not invert its decoder) is only checked to act; its
    arithmetic is tested with an invertible VAE in test_overlap_sync.py, its effect in the benchmark."""
    _, inputs = scene
    free = _run(pipe, inputs, injection=None)
    synced = _run(pipe, inputs, injection=None, overlap_sync=1.0, sync_space=space)
    assert not torch.allclose(free.latents, synced.latents, atol=1e-4)
    if space == "latent":
        links = pipe.overlap_links(inputs["cameras"], inputs["depths"], tuple(free.latents.shape[-2:]), "cpu")
        sources, targets, grids, masks = links

        def disagreement(x):
            warped = torch.nn.functional.grid_sample(x[sources], grids, align_corners=False)
            return float(((warped - x[targets]).abs() * masks).sum() / masks.sum())
        assert disagreement(synced.latents) < 0.5 * disagreement(free.latents)
    no_depth = _run(pipe, {**inputs, "depths": None}, injection=None, overlap_sync=1.0, sync_space=space).latents
    torch.testing.assert_close(no_depth, free.latents)


def test_blend_weight_zero_is_independent_editing(pipe, scene):
    _, inputs = scene
    independent = _run(pipe, inputs, injection=None).latents
    assert torch.allclose(_run(pipe, inputs, injection="blend", blend_weight=0.0).latents, independent, atol=1e-5)


def test_a_call_that_raises_leaves_the_model_as_it_was(pipe, scene):
    _, inputs = scene
    before = {k: type(v) for k, v in pipe.unet.attn_processors.items()}

    def fail(*_):
        raise RuntimeError("stop")
    with pytest.raises(RuntimeError, match="stop"):
        _run(pipe, inputs, interval_callback=fail)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == before
    assert not any(isinstance(p, MultiViewProcessor) for p in pipe.unet.attn_processors.values())


def test_callback_on_step_end_sees_every_step(pipe, scene):
    steps = []
    _run(pipe, scene[1], injection=None, callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw)
    assert steps == [0, 1, 2, 3]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(images=d["images"][:1]), "at least 2 views"),
    (lambda d: d.update(images=d["images"].astype(np.float32)), "uint8"),
    (lambda d: d.update(control_image=d["control_image"][:, :8]), "control_image: expected"),
    (lambda d: d.update(control_image=d["control_image"] * 3), "control_image: expected values in"),
    (lambda d: d.update(cameras=d["cameras"][:3]), "cameras: expected 4"),
    (lambda d: d.update(depths=[None] * 3), "depths"),
    (lambda d: d.update(prompt=""), "prompt"),
])
def test_bad_arguments_are_named(pipe, scene, change, message):
    inputs = dict(scene[1])
    change(inputs)
    with pytest.raises(ValueError, match=message):
        _run(pipe, inputs)


def test_bad_settings_are_named(pipe, scene):
    for kwargs, message in ((dict(injection="paste"), "injection"), (dict(interval=0), "interval"),
                            (dict(blend_weight=2.0), "blend_weight"), (dict(query_layers=["nope"]), "query_layers"),
                            (dict(guidance_alpha=float("nan")), "guidance_alpha"), (dict(qnerf_from=-0.1), "qnerf_from"),
                            (dict(overlap_sync=1.5), "overlap_sync"), (dict(overlap_sync=True), "overlap_sync"),
                            (dict(sync_space="pixels"), "sync_space")):
        with pytest.raises(ValueError, match=message):
            _run(pipe, scene[1], **kwargs)


def test_edit_naming_a_missing_object_is_refused(scene):
    spec, _ = scene
    with pytest.raises(ValueError, match=r"edit.object: object 9 does not exist"):
        apply_orbit_edit(spec, {"object": 9, "colour": "red"})


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"), ("[]", "JSON object"), ('{"object": 0}', "at least one of"),
    ('{"object": "a", "scale": 2}', "edit.object"), ('{"object": 0, "scale": 0}', "edit.scale"),
    ('{"object": 0, "move": [1]}', "edit.move"), ('{"object": 0, "spin": 1}', "unknown fields"),
])
def test_bad_edit_json_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_edit(text)


def _dataset(folder: Path, n_cameras=3):
    spec = replace(sample_orbit_spec(2), n_cameras=n_cameras, resolution=16)
    write_nerfstudio_dataset(spec, render_orbit(spec), folder)
    return spec


def _edit_transforms(folder: Path, change) -> None:
    data = json.loads((folder / "transforms.json").read_text())
    change(data)
    (folder / "transforms.json").write_text(json.dumps(data))


def _without_scene(folder: Path) -> None:
    """A plain nerfstudio folder: no Strata scene in transforms.json, so the CLI needs --controls."""
    _edit_transforms(folder, lambda data: data.pop("strata_scene"))


def _two_sizes(folder: Path) -> None:
    """Frame 2 becomes 24×16 and its own camera says so: each camera agrees with its image, the views differ."""
    def change(data):
        frame = data["frames"][2]
        frame.update(w=24, h=16, cx=12.0, cy=8.0)
        Image.new("RGB", (24, 16)).save(folder / frame["file_path"])
    _edit_transforms(folder, change)


def snapshot(folder: Path) -> dict:
    """Every file and folder under folder, with the files' bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


# a broken Strata dataset folder → the message it is refused with (the app's upload test uses these too)
BAD_DATASETS = {
    "malformed transforms.json": (lambda f: (f / "transforms.json").write_text("{"), "transforms.json: not valid JSON"),
    "a frame naming a missing file": (lambda f: (f / "images" / "frame_00001.png").unlink(),
                                      "transforms.json.frames[1].file_path: 'images/frame_00001.png' does not exist"),
    "views of different sizes": (_two_sizes, "frames[2].file_path: views of different sizes (24×16 after 16×16)"),
    "fewer than 2 views": (lambda f: _edit_transforms(f, lambda data: data.update(frames=data["frames"][:1])),
                           "transforms.json.frames: expected 2..64 views, got 1"),
}


def test_read_views_reads_a_strata_folder(tmp_path):
    spec = _dataset(tmp_path / "scene")
    views = read_views(tmp_path / "scene")
    assert views.images.shape == (3, 16, 16, 3)
    rendered = render_orbit(spec)
    near = np.isfinite(rendered[1].depth) & (rendered[1].depth < 65)  # millimetre 16-bit PNGs stop at 65.5 m
    np.testing.assert_allclose(views.depths[1][near], rendered[1].depth[near], atol=1e-3)
    assert np.isinf(views.depths[1][~np.isfinite(rendered[1].depth)]).all()  # sky: no depth
    assert views.extra["strata_scene"]["orbit"]["n_cameras"] == 3


@pytest.mark.parametrize("break_it, message", [
    (lambda f: (f / "transforms.json").unlink(), "no transforms.json"),
    (lambda f: (f / "transforms.json").write_text("{"), "transforms.json"),
    (lambda f: (f / "images" / "frame_00001.png").unlink(), r"frames\[1\].file_path: .* does not exist"),
    (lambda f: Image.new("RGB", (24, 24)).save(f / "images" / "frame_00002.png"), r"frames\[2\].file_path: the image is 24×24"),
    (lambda f: (f / "images" / "frame_00000.png").write_bytes(b"not a png"), "not a readable image"),
])
def test_bad_datasets_are_named(tmp_path, break_it, message):
    _dataset(tmp_path / "scene")
    break_it(tmp_path / "scene")
    with pytest.raises(ValueError, match=message):
        read_views(tmp_path / "scene")


def test_views_of_different_sizes_are_refused(tmp_path):
    """Guards: views of different sizes stacked or cropped silently. Every camera here agrees with its own
    image, so only the views-of-different-sizes check can refuse it (the 'camera says' check cannot)."""
    _dataset(tmp_path / "scene")
    _two_sizes(tmp_path / "scene")
    with pytest.raises(ValueError) as refused:
        read_views(tmp_path / "scene")
    assert str(refused.value) == "frames[2].file_path: views of different sizes (24×16 after 16×16)"


def test_a_control_map_of_the_wrong_size_is_refused(tmp_path):
    """Guards: a control map of another size (here transposed: width and height swapped) resized or passed
    on to fail inside the ControlNet, instead of a message naming the file and both sizes."""
    for k, size in enumerate([(24, 16), (16, 24), (24, 16)]):  # (width, height); the views are 24 wide, 16 high
        Image.new("RGBA", size).save(tmp_path / f"frame_{k:05d}.png")
    with pytest.raises(ValueError) as refused:
        read_control_maps(tmp_path, 3, (16, 24), channels=4)
    assert str(refused.value) == "controls: frame_00001.png is 16×24, the views are 24×16"
    assert read_control_maps(tmp_path, 1, (16, 24), channels=4).shape == (1, 16, 24, 4)


def test_a_single_view_dataset_is_refused(tmp_path):
    _dataset(tmp_path / "one", n_cameras=1)
    with pytest.raises(ValueError, match="expected 2..64 views"):
        read_views(tmp_path / "one")


def test_written_folder_reads_back_with_nerfstudios_parser(tmp_path, monkeypatch):
    _dataset(tmp_path / "scene")
    views = read_views(tmp_path / "scene")
    write_views(tmp_path / "out", views.images[::-1].copy(), views.cameras, extra={"note": 1},
                files={"grid.png": b"x"})
    again = read_views(tmp_path / "out")
    np.testing.assert_array_equal(again.images, views.images[::-1])
    for a, b in zip(again.cameras, views.cameras):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-9)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=object))
    try:
        from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    except ImportError as err:
        pytest.skip(f"nerfstudio's dataparser does not import here: {err}")
    parsed = NerfstudioDataParserConfig(data=tmp_path / "out", orientation_method="none", center_method="none",
                                        auto_scale_poses=False, scale_factor=1.0,
                                        eval_mode="all").setup().get_dataparser_outputs("train").cameras
    for k, camera in enumerate(views.cameras):
        np.testing.assert_allclose(parsed.camera_to_worlds[k].numpy(), camera.c2w_opengl()[:3], atol=1e-5)


def test_from_pretrained_reads_a_folder_with_a_controlnet(tmp_path):
    components = sd1_components()
    StableDiffusionControlNetPipeline(**components, controlnet=tiny_controlnet(components["unet"])).save_pretrained(
        tmp_path / "model")
    pipe = MultiViewEditPipeline.from_pretrained(tmp_path / "model")
    assert pipe.controlnet is not None


def test_cli_names_bad_input_before_loading_a_model(tmp_path):
    _dataset(tmp_path / "scene")
    (tmp_path / "edit.json").write_text(json.dumps({"object": 7, "colour": "red"}))
    (tmp_path / "bad.json").write_text("{")
    plain = tmp_path / "plain"
    _dataset(plain)
    _without_scene(plain)
    (tmp_path / "ok.json").write_text(json.dumps({"object": 0, "colour": "red"}))
    for args, message in (
            (["--dataset", str(tmp_path / "scene"), "--edit", str(tmp_path / "edit.json")], "object 7 does not exist"),
            (["--dataset", str(tmp_path / "scene"), "--edit", str(tmp_path / "bad.json")], "not JSON"),
            (["--dataset", str(tmp_path / "nowhere"), "--edit", str(tmp_path / "ok.json")], "no transforms.json"),
            (["--dataset", str(plain), "--edit", str(tmp_path / "ok.json")], "--controls"),
            (["--dataset", str(plain), "--edit", str(tmp_path / "ok.json"), "--controls", str(tmp_path),
              "--prompt", "a red ball"], "frame_00000.png is missing"),
            (["--dataset", str(tmp_path / "scene"), "--edit", str(tmp_path / "ok.json"), "--overlap-sync", "2"],
             "--overlap-sync")):
        done = subprocess.run([sys.executable, "-m", "pipelines.multiview_edit", *args, "--out", str(tmp_path / "o")],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "o").exists()


def _wrong_size_controls(tmp_path: Path) -> list[str]:
    _without_scene(tmp_path / "scene")
    (tmp_path / "controls").mkdir()
    for k in range(3):
        Image.new("RGBA", (8, 8) if k == 1 else (16, 16)).save(tmp_path / "controls" / f"frame_{k:05d}.png")
    return ["--controls", str(tmp_path / "controls"), "--prompt", "a red ball"]


@pytest.mark.parametrize("case", [*BAD_DATASETS, "a control map of the wrong size"])
def test_cli_refuses_a_bad_dataset_with_one_line_and_changes_nothing(tmp_path, capsys, case):
    """Guards: a bad dataset that ends in a traceback or several lines instead of one naming the field, a
    partial or empty --out folder (or its temporary folder) left behind, or an input folder touched."""
    _dataset(tmp_path / "scene")
    (tmp_path / "edit.json").write_text(json.dumps({"object": 0, "colour": "red"}))
    if case in BAD_DATASETS:
        break_it, message = BAD_DATASETS[case]
        break_it(tmp_path / "scene")
        extra = []
    else:
        extra, message = _wrong_size_controls(tmp_path), "controls: frame_00001.png is 8×8, the views are 16×16"
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["--dataset", str(tmp_path / "scene"), "--edit", str(tmp_path / "edit.json"), "--out",
              str(tmp_path / "out"), *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not (tmp_path / "out").exists()
    assert snapshot(tmp_path) == before  # the input folder byte for byte, and nothing beside it


def test_cli_edits_a_dataset_prints_each_interval_and_writes_a_nerfstudio_folder(tmp_path, capsys):
    """Guards: interval lines without the record+fit+render or the generation seconds, or for the wrong
    steps; an output folder whose cameras, image size or grid are not the input's."""
    components = sd1_components()
    StableDiffusionControlNetPipeline(**components, controlnet=tiny_controlnet(components["unet"])).save_pretrained(
        tmp_path / "model")
    _dataset(tmp_path / "scene")
    (tmp_path / "edit.json").write_text(json.dumps({"object": 0, "colour": "red"}))
    # 6 steps, τ = 2, fits until 0.6 of the schedule: intervals at steps 0–1 and 2–3, then 2 free steps
    assert main(["--dataset", str(tmp_path / "scene"), "--edit", str(tmp_path / "edit.json"), "--out",
                 str(tmp_path / "out"), "--model", str(tmp_path / "model"), "--controlnet",
                 str(tmp_path / "model" / "controlnet"), "--steps", "6", "--interval", "2", "--fit-seconds", "0.2"]) == 0
    printed = capsys.readouterr()
    number = r"(\d+\.\d)"
    lines = [re.fullmatch(rf"steps (\d)–(\d): record\+fit\+render {number} s \(fit {number} s, \d+ iterations, "
                          rf"loss \d+\.\d{{3}}\), generation {number} s", line)
             for line in printed.err.splitlines() if line.startswith("steps ")]
    assert [m.group(1, 2) for m in lines if m] == [("0", "1"), ("2", "3")] and all(lines), printed.err
    assert f"wrote {tmp_path / 'out'} (3 views" in printed.out
    source, edited = read_views(tmp_path / "scene"), read_views(tmp_path / "out")
    assert edited.images.shape == source.images.shape
    for a, b in zip(edited.cameras, source.cameras):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-9)
    assert edited.extra["strata_scene"]["orbit"]["objects"][0]["colour"] == "red"
    with Image.open(tmp_path / "out" / "grid.png") as grid:
        assert grid.size == (3 * 16, 2 * 16)
