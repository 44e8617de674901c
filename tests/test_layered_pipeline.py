"""LayeredEditPipeline as a diffusers pipeline: __call__'s checks, its output, callback_on_step_end,
sizes and schedulers from the model, inversion through DDIMInverseScheduler, model offload, and
each architecture's own conditioning (PixArt-α's resolution and aspect ratio)."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PixArtTransformer2DModel, PNDMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from pipelines.conditioning import ddim_inversion, ddim_inverse_step, inverse_scheduler_matches
from pipelines.layered_edit import EditSettings, LayeredEditPipeline, LayeredSession
from pipelines.loading import load_pipeline
from pipelines.outputs import LayeredEditPipelineOutput


def _pipe(components) -> LayeredEditPipeline:
    pipe = LayeredEditPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _box(y0, y1, x0, x1, size=32):
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pipe(sd1_components):
    return _pipe(sd1_components)


def test_output_dataclass_tuple_and_output_types(pipe):
    out = pipe("an empty scene of grass", height=32, width=32, num_inference_steps=3, generator=_gen())
    assert isinstance(out, LayeredEditPipelineOutput)
    assert out.images.shape == (1, 32, 32, 3) and out.images.dtype == np.uint8
    assert out.trajectory.shape == (4, 4, 16, 16)
    images, trajectory = pipe("an empty scene of grass", height=32, width=32, num_inference_steps=3, generator=_gen(),
                              return_dict=False)
    np.testing.assert_array_equal(images, out.images)  # deterministic per generator
    assert torch.equal(trajectory, out.trajectory)
    pil = pipe("an empty scene of grass", height=32, width=32, num_inference_steps=3, generator=_gen(),
               output_type="pil").images
    np.testing.assert_array_equal(np.asarray(pil[0]), out.images[0])
    latent = pipe("an empty scene of grass", height=32, width=32, num_inference_steps=3, generator=_gen(),
                  output_type="latent")
    assert latent.images is None and torch.equal(latent.trajectory, out.trajectory)


def test_default_size_comes_from_the_model_config(pipe):
    # guards against a fixed 64 px: the tiny UNet's sample_size 8 × the VAE's factor 2
    assert pipe.default_size == (16, 16)
    assert pipe("an empty scene of sand", num_inference_steps=2, generator=_gen()).images.shape == (1, 16, 16, 3)
    assert LayeredSession(pipe).settings.height == 16
    assert LayeredSession(pipe, EditSettings(height=32)).settings.width == 16


@pytest.mark.parametrize("kwargs, name", [
    (dict(prompt=""), "prompt"),
    (dict(prompt=3), "prompt"),
    (dict(height=31), "height"),  # not a multiple of the tiny VAE's factor 2
    (dict(width=0), "width"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(harmonize=1.5), "harmonize"),
    (dict(mask=np.ones((16, 16), bool)), "mask"),  # wrong size (and no background)
    (dict(mask=np.ones((32, 32), bool)), "background"),  # a mask without the trajectory to follow
    (dict(background=torch.zeros(4, 4, 16, 16), mask=np.ones((32, 32), bool)), "background"),  # 3 steps → 4 latents
    (dict(scene_prompts=["an empty scene of grass", "a red circle"], scene_masks=[]), "scene_masks"),
    (dict(scene_prompts="an empty scene of grass"), "scene_prompts"),
    (dict(output_type="tensor"), "output_type"),
    (dict(strength=0.0), "strength"),
    (dict(strength=0.5), "strength"),  # below 1 without a background to start from
    (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "callback_on_step_end_tensor_inputs"),
])
def test_call_checks_each_argument_by_name(pipe, kwargs, name):
    args = dict(prompt="a red circle", height=32, width=32, num_inference_steps=2) | kwargs
    with pytest.raises(ValueError, match=f"^{name}:"):
        pipe(**args)


def test_a_scheduler_the_method_cannot_use_is_refused_not_swapped(sd1_components, tmp_path):
    components = dict(sd1_components, scheduler=PNDMScheduler.from_config(sd1_components["scheduler"].config))
    pipe = _pipe(components)
    assert isinstance(pipe.scheduler, PNDMScheduler)  # kept as given
    with pytest.raises(ValueError, match="^scheduler: .*DDIMScheduler"):
        pipe("a red circle", height=32, width=32, num_inference_steps=2)
    # Strata's own loader makes the DDIM scheduler from the folder's config, and says so in the log
    StableDiffusionPipeline(**components).save_pretrained(tmp_path / "pndm")
    loaded = load_pipeline(tmp_path / "pndm", LayeredEditPipeline)
    assert type(loaded.scheduler) is DDIMScheduler
    assert loaded.scheduler.config.beta_schedule == components["scheduler"].config.beta_schedule


def test_callback_on_step_end_sees_every_step_and_can_change_the_latents(pipe):
    seen = []

    def zero_after_second(p, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 1 else tensors
    out = pipe("an empty scene of grass", height=32, width=32, num_inference_steps=3, generator=_gen(),
               callback_on_step_end=zero_after_second)
    assert [s for s, _, _ in seen] == [0, 1, 2] and seen[0][2] == (1, 4, 16, 16)
    assert out.trajectory[2].abs().max() == 0  # the changed latents are what the loop went on with
    plain = pipe("an empty scene of grass", height=32, width=32, num_inference_steps=3, generator=_gen())
    assert torch.equal(out.trajectory[:2], plain.trajectory[:2]) and not torch.equal(out.trajectory[3], plain.trajectory[3])


def test_bcg_keeps_the_background_trajectory_outside_the_mask(pipe):
    """Guards against BCG switched off in the pipeline: outside the mask every latent of the BCG phase
    is the background's; with bcg=False they drift. Also against a no-BCG ablation that still splices the
    background's initial latent outside the mask ("BCG after step 0 off", not BCG off): with bcg=False
    the first latent is the layer's own noise everywhere."""
    background = pipe("an empty scene of grass", height=32, width=32, num_inference_steps=5, generator=_gen()).trajectory
    mask = _box(0, 12, 0, 12)
    kwargs = dict(height=32, width=32, num_inference_steps=5, generator=_gen(1), harmonize=0.4, mask=mask,
                  background=background)
    out = pipe("a red circle", **kwargs).trajectory
    outside = pipe.latent_mask(mask)[0, 0] == 0
    blended = round(5 * (1 - 0.4))
    assert torch.equal(out[:blended + 1][..., outside], background[:blended + 1][..., outside])
    assert not torch.equal(out[-1][..., outside], background[-1][..., outside])  # harmonize steps run free
    free = pipe("a red circle", **kwargs, bcg=False).trajectory
    assert not torch.equal(free[1:blended + 1][..., outside], background[1:blended + 1][..., outside])
    assert not torch.equal(free[0][..., outside], background[0][..., outside])


def test_strength_starts_the_layer_from_the_background_inside_the_mask_too(pipe):
    """strength 0.6 of 5 steps: the first 2 steps are the background's own latents everywhere (inside the
    mask as well), the last 3 run. Guards against strength ignored (fresh noise inside the mask) and
    against skipping a different number of steps than diffusers' image-to-image would."""
    background = pipe("an empty scene of grass", height=32, width=32, num_inference_steps=5, generator=_gen()).trajectory
    seen = []
    kwargs = dict(height=32, width=32, num_inference_steps=5, generator=_gen(1), mask=_box(0, 12, 0, 12),
                  background=background)
    out = pipe("a red circle", strength=0.6, callback_on_step_end=lambda p, i, t, x: seen.append(i) or x, **kwargs)
    assert seen == [2, 3, 4] and out.trajectory.shape == background.shape
    assert torch.equal(out.trajectory[:3], background[:3])
    assert not torch.equal(out.trajectory[3], background[3])
    full = pipe("a red circle", **kwargs).trajectory
    inside = pipe.latent_mask(kwargs["mask"])[0, 0] > 0
    assert not torch.equal(full[2][..., inside], background[2][..., inside])  # strength 1: fresh noise in the mask


def test_ddim_inverse_scheduler_gives_the_same_trajectory_as_the_explicit_update(pipe):
    """DDIMInverseScheduler is used where it walks the forward schedule's timesteps; there its trajectory
    equals the explicit update (ddim_inverse_step with both noise levels given) to float rounding."""
    latents = torch.randn(1, 4, 16, 16, generator=_gen(3))
    cond = pipe.encode_prompt(["a red circle"], "", 32, 32, torch.device("cpu")).rows(slice(1, 2))

    def predict(z, t):
        return pipe.predict(z, t, cond)
    for spacing, steps, prediction in (("leading", 5, "epsilon"), ("trailing", 4, "v_prediction"),
                                       ("trailing", 5, "epsilon")):
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing,
                                              prediction_type=prediction, steps_offset=1 if spacing == "leading" else 0)
        scheduler.set_timesteps(steps)
        assert inverse_scheduler_matches(scheduler, steps)
        with_scheduler = ddim_inversion(predict, latents, scheduler, steps)
        explicit = [latents[0]]
        z = latents
        alphas, timesteps = scheduler.alphas_cumprod, scheduler.timesteps
        for k in range(steps - 1, -1, -1):
            a_from = alphas[timesteps[k + 1]] if k + 1 < steps else torch.tensor(1.0)
            z = ddim_inverse_step(predict(z, timesteps[k]), z, a_from, alphas[timesteps[k]], scheduler.config)
            explicit.insert(0, z[0])
        torch.testing.assert_close(with_scheduler, torch.stack(explicit), rtol=1e-5, atol=1e-5)
    # 30 trailing steps do not divide 1000: DDIMInverseScheduler would step by 33 between timesteps 34
    # apart, so the explicit update runs instead
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    scheduler.set_timesteps(30)
    assert not inverse_scheduler_matches(scheduler, 30)
    assert ddim_inversion(predict, latents, scheduler, 30).shape == (31, 4, 16, 16)


def test_inversion_ends_at_the_image_latents(pipe):
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    trajectory = pipe.invert(image, "", 4)
    assert trajectory.shape == (5, 4, 16, 16) and torch.equal(trajectory[-1], pipe.encode_image(image)[0])


def test_model_cpu_offload_gives_the_same_layer(sd1_components):
    """The pipeline creates its tensors on _execution_device, so accelerate's offload hooks work."""
    plain = _pipe(sd1_components)
    expected = plain("an empty scene of grass", height=32, width=32, num_inference_steps=2, generator=_gen()).images
    offloaded = _pipe(sd1_components)
    offloaded.enable_model_cpu_offload(device="cpu")
    out = offloaded("an empty scene of grass", height=32, width=32, num_inference_steps=2, generator=_gen())
    np.testing.assert_array_equal(out.images, expected)


def test_pixart_with_resolution_conditions_runs(pixart_components):
    """PixArt-α at sample_size 128 embeds resolution and aspect ratio (use_additional_conditions): the
    pipeline passes them as PixArt's own pipeline does (None made its timestep embedding fail)."""
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel.from_config(pixart_components["transformer"].config,
                                                       use_additional_conditions=True)
    assert transformer.use_additional_conditions
    pipe = _pipe(dict(pixart_components, transformer=transformer))
    session = LayeredSession(pipe, EditSettings(height=32, width=48, steps=2))
    session.start_from_prompt("an empty scene of sand", seed=0)
    out = session.add_layer("a red circle", np.pad(np.ones((10, 10), bool), ((4, 18), (4, 34))), seed=1)
    assert out.shape == (32, 48, 3)


def test_a_version_2_session_with_prompt_embeddings_still_loads(sd1_components, tmp_path):
    pipe = _pipe(sd1_components)
    session = LayeredSession(pipe, EditSettings(height=32, width=32, steps=2))
    session.start_from_prompt("an empty scene of grass", seed=0)
    session.add_layer("a red circle", _box(2, 12, 2, 12), seed=1)
    folder = session.save(tmp_path / "v3")
    manifest = json.loads((folder / "session.json").read_text())
    assert manifest["version"] == 5
    manifest["version"] = 2  # what sessions saved before the change look like: embeddings in memory,
    (folder / "session.json").write_text(json.dumps(manifest))  # masks one byte per pixel
    tensors = load_file(folder / "memory.safetensors")
    tensors |= {f"layer{i}.embeds": torch.randn(1, 77, 32) for i in range(2)}
    for i, layer in enumerate(session.layers):
        for name, mask in (("mask", layer.rough_mask), ("edit_mask", layer.edit_mask), ("object_mask", layer.object_mask)):
            tensors[f"layer{i}.{name}"] = torch.from_numpy(mask.astype(np.uint8))
    save_file(tensors, folder / "memory.safetensors")
    again = LayeredSession.load(pipe, folder)
    for a, b in zip(session.layers, again.layers):
        assert torch.equal(a.trajectory, b.trajectory)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.object_mask, b.object_mask)
    again.add_layer("a blue square", _box(18, 30, 18, 30), seed=2)


def test_fork_leaves_the_session_as_it_was(sd1_components):
    pipe = _pipe(sd1_components)
    session = LayeredSession(pipe, EditSettings(height=32, width=32, steps=2))
    session.start_from_prompt("an empty scene of grass", seed=0)
    fork = session.fork(replay="seed")
    fork.add_layer("a red circle", _box(2, 12, 2, 12), seed=1)
    assert len(session.layers) == 1 and len(fork.layers) == 2
    assert session.settings.replay == "memory" and fork.settings.replay == "seed"
    fork.undo()
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo() or session.undo()
