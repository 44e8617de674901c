"""Surround-view driving video on the tiny models: cross-view and temporal attention against a plain
reference, the camera ring's adjacency, the zero-initialised projection, the sliding window, the
video files, the processors restored, and every bad input a named error."""

import json
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attention_processors import AttentionController
from attention_processors.cross_view import (CrossViewProcessor, CrossViewProjections, ViewState, ring_neighbours,
                                              zero_projection)
from attention_processors.install import installed_processors, is_cross_attention
from attention_processors.regions import RegionState
from attention_processors.temporal import frame_index
from formats import StreetClip
from pipelines.driving_video import DrivingVideoPipeline, write_video
from pipelines.driving_video.pipeline import CONTROLNET_PREFIX, view_processors
from tests.tiny_models import sd1_components, tiny_controlnet
from world.street import make_rig, sample_street_clip

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipe():
    components = sd1_components()
    p = DrivingVideoPipeline(**{k: v for k, v in components.items() if k not in ("requires_safety_checker",)},
                             controlnet=tiny_controlnet(components["unet"]))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def clip():
    return sample_street_clip(1, n_frames=4, image_size=(32, 32), n_cameras=3)


def test_ring_adjacency_follows_the_rig_order():
    """nuScenes: front, front-right, back-right, back, back-left, front-left; each sees the next and the
    previous camera of the ring."""
    assert ring_neighbours(6) == [[1, 5], [2, 0], [3, 1], [4, 2], [5, 3], [0, 4]]
    assert ring_neighbours(3) == [[1, 2], [2, 0], [0, 1]]
    assert ring_neighbours(2) == [[1], [0]]
    assert [c.name for c in make_rig(n_cameras=6)][:2] == ["CAM_FRONT", "CAM_FRONT_RIGHT"]
    index = frame_index(3, 3)
    assert index[0].tolist() == [0, 1, 2, -1, -1]  # the key frame: cross-view only
    assert index[3 + 1].tolist() == [4, 5, 3, 1, -1]  # frame 1, view 1: neighbours, key frame's view 1
    assert index[6 + 2].tolist() == [8, 6, 7, 2, 5]  # frame 2, view 2: neighbours, key frame, previous frame
    assert frame_index(2, 3, cross_view=False)[4].tolist() == [4, 1]
    assert frame_index(2, 3, temporal=False)[4].tolist() == [4, 5, 3]


def _attention():
    torch.manual_seed(0)
    return Attention(query_dim=32, heads=4, dim_head=8)


def test_cross_view_processor_matches_a_plain_reference():
    """Concatenate each group's listed groups' keys and values and take a softmax: the processor,
    which reads them in place through the neighbour kernel, must agree."""
    attn = _attention()
    index = frame_index(2, 3)
    groups, n = index.shape[0], 10
    x = torch.randn(2 * groups, n, 32)  # two guidance branches
    out = CrossViewProcessor(AttentionController(views=ViewState(index)), "attn1")(attn, x)
    q, k, v = (proj(x).view(2 * groups, n, 4, 8).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
    expected = torch.empty(2 * groups, 4, n, 8)
    for branch in range(2):
        for g in range(groups):
            rows = [branch * groups + j for j in index[g].tolist() if j >= 0]
            keys, values = torch.cat([k[r] for r in rows], 1), torch.cat([v[r] for r in rows], 1)
            expected[branch * groups + g] = torch.softmax(q[branch * groups + g] @ keys.transpose(-1, -2) / 8**0.5, -1) @ values
    expected = attn.to_out[0](expected.transpose(1, 2).reshape(2 * groups, n, 32))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_a_zero_initialised_projection_leaves_the_output_unchanged():
    attn = _attention()
    index = frame_index(2, 3)
    x = torch.randn(2 * index.shape[0], 10, 32)
    views = ViewState(index, {"attn1": zero_projection(32)})
    out = CrossViewProcessor(AttentionController(views=views), "attn1")(attn, x)
    torch.testing.assert_close(out, AttnProcessor2_0()(attn, x), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        views.projections["attn1"].weight.normal_()  # trained: the neighbours now count
    assert not torch.allclose(CrossViewProcessor(AttentionController(views=views), "attn1")(attn, x),
                              AttnProcessor2_0()(attn, x))


def test_a_video_is_generated_and_the_sliding_window_equals_one_window_when_it_fits(pipe, clip):
    kwargs = dict(num_frames=3, num_inference_steps=2, local_prompts={"car": "a blue car"})
    one = pipe(clip, "a street view", window=4, generator=torch.Generator().manual_seed(0), **kwargs).frames
    same = pipe(clip, "a street view", window=3, generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert one.shape == (3, 3, 32, 32, 3) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, same)
    long = pipe(clip, "a street view", num_frames=4, window=2, overlap=1, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0)).frames
    assert long.shape == (4, 3, 32, 32, 3)


def test_processors_are_restored_after_a_call_and_when_it_raises(pipe, clip):
    before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    controlnet_before = {name: type(p) for name, p in pipe.controlnet.attn_processors.items()}

    def boom(frame, images):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        pipe(clip, num_frames=2, num_inference_steps=1, frame_callback=boom)
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before
    assert {name: type(p) for name, p in pipe.controlnet.attn_processors.items()} == controlnet_before


def test_the_files_decode_back(clip, tmp_path):
    frames = (np.random.default_rng(0).random((3, 3, 32, 32, 3)) * 255).astype(np.uint8)
    folder = write_video(frames, [c.name for c in clip.rig], clip, tmp_path / "video")
    for name in [c.name for c in clip.rig]:
        decoded = [frame for frame in imageio.get_reader(str(folder / f"{name}.mp4"), format="FFMPEG")]  # (its len is inf)
        assert len(decoded) == 3 and decoded[0].shape == (32, 32, 3)
        assert sorted(p.name for p in (folder / name).iterdir()) == ["000000.png", "000001.png", "000002.png"]
    surround = [frame for frame in imageio.get_reader(str(folder / "surround.mp4"), format="FFMPEG")]
    assert len(surround) == 3 and surround[0].shape == (64, 64, 3)  # 3 cameras: two rows of two
    assert StreetClip.load(folder / "layout.json").to_json() == clip.to_json()


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_frames=0), "num_frames"),
    (dict(num_frames=99), "num_frames"),
    (dict(window=1), "window"),
    (dict(overlap=4, window=4), "overlap"),
    (dict(prompt=""), "prompt"),
    (dict(local_prompts={"bus": "a bus"}), "local_prompts"),
    (dict(layout={"version": 1}), "layout"),
    (dict(reach=0), "reach"),
    (dict(overlap_sync=1.5), "overlap_sync"),
])
def test_bad_arguments_are_named(pipe, clip, kwargs, message):
    args = dict(layout=clip, prompt="a street view", num_inference_steps=1) | kwargs
    with pytest.raises(ValueError, match=f"^{message}"):
        pipe(**args)


def test_a_rig_of_one_camera_is_refused(pipe):
    single = sample_street_clip(0, n_frames=2, image_size=(32, 32), n_cameras=1)
    with pytest.raises(ValueError, match="layout.rig: cross-camera video needs at least 2 cameras"):
        pipe(single, num_inference_steps=1)


def test_the_cli_refuses_bad_layouts_and_an_output_that_is_a_file(tmp_path, clip):
    data = clip.to_json()
    data["frames"][0]["boxes"][0]["size"] = [4.0, float("nan"), 1.5]
    (tmp_path / "nan.json").write_text(json.dumps(data))
    (tmp_path / "file").write_text("x")
    for args, message in ((["--layout", str(tmp_path / "nan.json"), "--out", str(tmp_path / "o")], "size[1]"),
                          (["--layout", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")], "no such file"),
                          (["--seed", "1", "--out", str(tmp_path / "file")], "out:")):
        done = subprocess.run([sys.executable, "-m", "pipelines.driving_video", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_from_pretrained_reads_a_folder_with_a_controlnet(tmp_path):
    components = sd1_components()
    folder = tmp_path / "with-controlnet"
    StableDiffusionControlNetPipeline(**components, controlnet=tiny_controlnet(components["unet"])).save_pretrained(folder)
    pipe = DrivingVideoPipeline.from_pretrained(folder)
    assert pipe.controlnet is not None and pipe.unet is not None


def test_cross_view_attention_changes_the_video_and_is_removed_after(pipe, clip):
    kwargs = dict(num_frames=2, num_inference_steps=2)
    joint = pipe(clip, generator=torch.Generator().manual_seed(3), **kwargs).frames
    alone = pipe(clip, generator=torch.Generator().manual_seed(3), cross_view=False, temporal=False, **kwargs).frames
    assert not np.array_equal(joint, alone)  # guards against cross-view attention silently not installed
    assert all(not isinstance(p, CrossViewProcessor) for p in pipe.unet.attn_processors.values())


def _components(pipe) -> dict:
    """The fixture pipeline's components, for another pipeline built on the same models."""
    return {k: getattr(pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "controlnet", "scheduler")}


def test_trained_projections_are_a_pipeline_component_that_loads_and_can_be_switched_off(pipe, clip, tmp_path):
    """Guards against trained projections that are saved but never read (the video unchanged), that leak
    into the parameter-free run, or that a pipeline folder drops on save / load."""
    projections = CrossViewProjections.for_model(pipe.unet)
    assert set(projections.config.layers) == {n for n in pipe.unet.attn_processors if not is_cross_attention(n)}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in projections.parameters():
            p.normal_(std=0.3)  # as if trained
    projections.save_pretrained(tmp_path / "projections")
    loaded = CrossViewProjections.from_pretrained(tmp_path / "projections")
    for a, b in zip(projections.parameters(), loaded.parameters()):
        torch.testing.assert_close(a, b)
    with_projections = DrivingVideoPipeline(**_components(pipe), view_projections=loaded)
    with_projections.set_progress_bar_config(disable=True)
    kwargs = dict(num_frames=2, num_inference_steps=2)
    trained = with_projections(clip, generator=torch.Generator().manual_seed(3), **kwargs).frames
    free = with_projections(clip, generator=torch.Generator().manual_seed(3), use_view_projections=False, **kwargs).frames
    np.testing.assert_array_equal(free, pipe(clip, generator=torch.Generator().manual_seed(3), **kwargs).frames)
    assert not np.array_equal(trained, free)
    with_projections.save_pretrained(tmp_path / "pipeline")
    again = DrivingVideoPipeline.from_pretrained(tmp_path / "pipeline")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.view_projections, CrossViewProjections)
    np.testing.assert_array_equal(again(clip, generator=torch.Generator().manual_seed(3), **kwargs).frames, trained)


def test_projections_made_for_another_model_or_a_bad_folder_are_refused(pipe, clip, tmp_path):
    from pipelines.loading import ModelLoadError, load_view_projections
    other = CrossViewProjections(["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"], [7])
    mismatched = DrivingVideoPipeline(**_components(pipe), view_projections=other)
    with pytest.raises(ValueError, match="view_projections: made for another UNet"):
        mismatched(clip, num_frames=1, num_inference_steps=1)
    with pytest.raises(ModelLoadError, match="projections: .* not a folder saved by"):
        load_view_projections(tmp_path)
    assert load_view_projections("none") is None


def test_the_controlnet_and_the_unet_keep_their_own_prompt_keys():
    """MQD caches each layer's projected prompt keys by layer name, and a ControlNet's layers are named as
    the UNet's. Guards against the UNet reading the keys the ControlNet's own (trained, different)
    projections made for the same-named layer (the driving pipeline did so before the ControlNet's layers
    were named apart)."""
    components = sd1_components()
    unet = components["unet"]
    controlnet = tiny_controlnet(unet)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, module in controlnet.named_modules():
            if isinstance(module, Attention) and module.is_cross_attention:
                module.to_k.weight.normal_()  # a trained ControlNet's projections are its own
    latents, control = torch.randn(4, 4, 8, 8), torch.rand(4, 4, 16, 16)
    hidden = torch.randn(4, 2 * 77, 32)
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[2:6, 2:6] = 1

    def unet_output(controlnet_first: bool) -> torch.Tensor:
        controller = AttentionController(regions=RegionState(labels, 2, shared_rows=2))
        with torch.no_grad(), installed_processors(unet, view_processors(controller)), \
                installed_processors(controlnet, view_processors(controller, CONTROLNET_PREFIX)):
            if controlnet_first:
                controlnet(latents, 10, encoder_hidden_states=hidden, controlnet_cond=control, return_dict=False)
            return unet(latents, 10, encoder_hidden_states=hidden).sample
    torch.testing.assert_close(unet_output(True), unet_output(False), atol=1e-6, rtol=1e-6)


def test_view_correspondences_link_ring_neighbours_and_map_back():
    """On the nuScenes-like ring every camera sees ground its two neighbours see; a linked cell mapped
    into the neighbour and back lands on itself; the sky is never linked. Guards against a projection
    with the wrong camera or scale."""
    from formats.projection import cast_layout, scaled_camera, view_correspondences
    clip = sample_street_clip(3, n_frames=1)
    links = view_correspondences(clip, 0, (16, 16), ring_neighbours(6))
    cameras = [scaled_camera(c, 16, 16) for c in clip.cameras(0)]
    for b, view in enumerate(links):
        assert [a for a, _, _ in view] == ring_neighbours(6)[b]
        depth_b = cast_layout(cameras[b], clip.frames[0].boxes)[1]
        for a, seen, where in view:
            assert seen.sum() >= 4 and not (seen & ~np.isfinite(depth_b)).any()
            rows, cols = np.nonzero(seen)
            back = {(int(r), int(c)) for r, c in zip(rows, cols)}
            depth_a = cast_layout(cameras[a], clip.frames[0].boxes)[1]
            for r, c in list(back)[:5]:
                x, y = where[r, c]
                point = cameras[a].unproject(depth_a)[int(y), int(x)]
                uv, _ = cameras[b].project(point)
                assert abs(uv[0] - (c + 0.5)) <= 1.0 and abs(uv[1] - (r + 0.5)) <= 1.0
    three = sample_street_clip(3, n_frames=1, n_cameras=3)
    assert all(len(view) == 2 for view in view_correspondences(three, 0, (16, 16), ring_neighbours(3)))


def test_overlap_sync_runs_in_the_pipeline_and_brings_overlaps_together(pipe, clip):
    """Guards against the sync switched off in the pipeline (the video unchanged) and against a sync that
    does not bring the linked cells of neighbouring cameras closer in the final latents."""
    latents = {}

    class Recording(DrivingVideoPipeline):
        def decode(self, x):
            latents.setdefault(self._tag, []).append(x.clone())
            return super().decode(x)
    recording = Recording(**_components(pipe))
    recording.set_progress_bar_config(disable=True)
    runs = {}
    for tag, sync in (("free", 0.0), ("synced", 1.0)):
        recording._tag = tag
        runs[tag] = recording(clip, num_frames=1, num_inference_steps=3, overlap_sync=sync,
                              generator=torch.Generator().manual_seed(0)).frames
    assert not np.array_equal(runs["free"], runs["synced"])
    sources, targets, grids, masks = recording.overlap_links(clip, [0], (16, 16), 1, "cpu")

    def disagreement(x):
        warped = torch.nn.functional.grid_sample(x[sources], grids, align_corners=False)
        return float(((warped - x[targets]).abs() * masks).sum() / masks.sum() / x.shape[1])
    assert disagreement(latents["synced"][0]) < 0.5 * disagreement(latents["free"][0])
