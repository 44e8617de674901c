"""`MultiViewEditPipeline`: edit many posed views of one scene so that they agree in 3D (QNeRF,
"Consolidating Attention Features for Multi-view Image Editing", Patashnik et al. 2024).

Every view is inverted (DDIM, under its source control map and the source prompt), then all views are
generated together under their new control maps (a ControlNet), starting from their inverted noise:
- source key/value injection (MasaCtrl): each edited view's self-attention reads its own source view's
  keys and values at the same step (the source views run first at every step, from their inversion);
- the progressive QNeRF schedule: every `interval` steps (until `qnerf_until` of the schedule) the
  queries of the recorded layers are taken at the cached latent, the query field is fitted (warm start
  from the previous interval) and rendered into every view, and the next `interval` steps — from the
  same cached latent — inject the rendered queries: `guidance` (a gradient step on the latent toward
  them before each scheduler step, the paper's soft injection) or `blend` (q' = (1 − w)·q + w·q̂ inside
  the layer).
- overlap sync (optional, `overlap_sync`): where the depths after the edit say two views see the same
  surface, their clean-latent estimates are averaged after each DDIM step of the first part of the
  schedule (`pipelines.overlap_sync`, as the driving pipeline does between cameras); the last steps
  run free.
Baselines through the same call: `injection=None` (independent per-view editing: ControlNet and
key/value injection only) and `extended_attention=True` (each view also reads its ring neighbours'
keys and values, `kernels.neighbour_attention`).

    pipe = MultiViewEditPipeline.from_pretrained(folder)     # a folder with controlnet/, or controlnet=…
    out = pipe(images, cameras, control_image=new_controls, source_control_image=old_controls,
               prompt="a red sphere …", depths=new_depths)
    out.images  # (V, H, W, 3)
"""

from __future__ import annotations

import time

import numpy as np
import torch

from attention_processors import AttentionController, installed_processors
from attention_processors.cross_view import ViewState, ring_neighbours
from attention_processors.install import is_cross_attention
from attention_processors.multiview import MultiViewProcessor
from attention_processors.query_inject import guidance_step
from attention_processors.query_record import QueryState, default_query_layers, from_views, to_views
from attention_processors.source_kv import SourceKV
from formats.cameras import Camera
from pipelines.conditioning import ddim_inversion, encode_prompts, images_to_tensor
from pipelines.controlnet_base import ControlNetPipelineBase
from pipelines.outputs import MultiViewEditPipelineOutput
from pipelines.overlap_sync import depth_links, link_tensors, sync_decoded, sync_overlaps
from qnerf import FieldConfig, FitSettings, fit_queries, render_queries

INJECTIONS = (None, "guidance", "blend")
SYNC_SPACES = ("image", "latent")


class MultiViewEditPipeline(ControlNetPipelineBase):
    _callback_tensor_inputs = ["latents"]

    def check_inputs(self, images, cameras, control_image, source_control_image, depths, prompt, injection,
                     num_inference_steps, interval, qnerf_until, blend_weight, kv_start, query_layers, qnerf_from=0.0,
                     guidance_alpha=0.05, overlap_sync=0.0, sync_space="latent", kv_layers=None):
        """Each bad argument is a ValueError that names it; nothing is changed before all pass."""
        if not isinstance(self.scheduler, self.required_scheduler):
            raise ValueError(f"scheduler: multi-view editing inverts the views with DDIM, got "
                             f"{type(self.scheduler).__name__}")
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError("images: expected the source views as one (V, H, W, 3) uint8 array, got "
                             f"{getattr(images, 'shape', type(images).__name__)} {getattr(images, 'dtype', '')}")
        n_views, height, width = images.shape[:3]
        if n_views < 2:
            raise ValueError(f"images: multi-view editing needs at least 2 views, got {n_views}")
        for name, value in (("height", height), ("width", width)):
            if value % (self.vae_scale_factor * 4):
                raise ValueError(f"images: {name} {value} is not a multiple of {self.vae_scale_factor * 4} (the VAE's "
                                 "downsampling and the UNet's)")
        if not isinstance(cameras, (list, tuple)) or len(cameras) != n_views or not all(isinstance(c, Camera) for c in cameras):
            raise ValueError(f"cameras: expected {n_views} formats.Camera, one per view")
        if any((c.width, c.height) != (width, height) for c in cameras):
            raise ValueError(f"cameras: every camera must see {width}×{height} (the views' size)")
        channels = self.controlnet.config.conditioning_channels
        for name, control in (("control_image", control_image), ("source_control_image", source_control_image)):
            if control is None and name == "source_control_image":
                continue
            if not isinstance(control, np.ndarray) or control.shape != (n_views, height, width, channels):
                raise ValueError(f"{name}: expected ({n_views}, {height}, {width}, {channels}) floats in [0, 1] "
                                 f"(one control map per view, the ControlNet's channels), got "
                                 f"{getattr(control, 'shape', type(control).__name__)}")
            if not np.isfinite(control).all() or control.min() < 0 or control.max() > 1:
                raise ValueError(f"{name}: expected values in [0, 1]")
        if depths is not None and (len(depths) != n_views or any(
                d is not None and np.shape(d) != (height, width) for d in depths)):
            raise ValueError(f"depths: expected {n_views} z-depth maps of {height}×{width} (or None per view)")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt: expected a non-empty string, got {prompt!r}")
        if injection not in INJECTIONS:
            raise ValueError(f"injection: expected one of {INJECTIONS}, got {injection!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected a positive integer, got {num_inference_steps!r}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval: expected a positive number of steps between QNeRF fits, got {interval!r}")
        for name, value in (("qnerf_from", qnerf_from), ("qnerf_until", qnerf_until), ("blend_weight", blend_weight),
                            ("kv_start", kv_start), ("overlap_sync", overlap_sync)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {value!r}")
        if isinstance(guidance_alpha, bool) or not isinstance(guidance_alpha, (int, float)) or not 0 <= guidance_alpha < 10:
            raise ValueError(f"guidance_alpha: expected a step size in [0, 10), got {guidance_alpha!r}")
        if sync_space not in SYNC_SPACES:
            raise ValueError(f"sync_space: expected one of {SYNC_SPACES}, got {sync_space!r}")
        if query_layers is not None:
            unknown = set(query_layers) - set(self.unet.attn_processors)
            if not query_layers or unknown or any(is_cross_attention(n) for n in query_layers):
                raise ValueError(f"query_layers: expected self-attention install names of the UNet, got {query_layers!r}")
        if kv_layers is not None:
            if isinstance(kv_layers, str) or not kv_layers:
                raise ValueError(f"kv_layers: expected a non-empty list of self-attention install names of the UNet "
                                 f"(source_kv=False turns the injection off), got {kv_layers!r}")
            wrong = [n for n in kv_layers if n not in self.unet.attn_processors or is_cross_attention(n)]
            if wrong:
                raise ValueError(f"kv_layers: expected self-attention install names of the UNet (such as "
                                 f"{default_query_layers(self.unet)[0]!r}), got {wrong!r}")

    def overlap_links(self, cameras: list[Camera], depths: list[np.ndarray | None] | None, size: tuple[int, int],
                      device, edge_tolerance: float | None = 0.1) -> tuple:
        """The views' cells on a (height, width) = size grid (the latent grid, or the images' for
        `sync_space="image"`) that other views see, from their depths after the edit
        (`pipelines.overlap_sync.depth_links`: every pair of views, their depths decide; cells on a depth
        edge left out); a view without depth is linked to nothing, and no depths at all link nothing: ()."""
        if depths is None:
            return ()
        n_views = len(cameras)
        neighbours = [[a for a in range(n_views) if a != b] for b in range(n_views)]
        return link_tensors(depth_links(cameras, depths, size, neighbours, edge_tolerance), size, device,
                            self.unet.dtype)

    def encode_prompt(self, prompt: str, source_prompt: str, negative_prompt: str, n_views: int, device):
        """(2V, T, C) negative then edit prompt per view, and (V, T, C) the source prompt per view."""
        hidden = encode_prompts([negative_prompt, prompt, source_prompt], self.tokenizer, self.text_encoder, device).hidden
        hidden = hidden.to(self.unet.dtype)
        edit = torch.cat([hidden[0:1].expand(n_views, -1, -1), hidden[1:2].expand(n_views, -1, -1)])
        return edit, hidden[2:3].expand(n_views, -1, -1)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, cameras: list[Camera], control_image: np.ndarray,
                 source_control_image: np.ndarray | None = None, prompt: str = "", source_prompt: str | None = None,
                 depths: list[np.ndarray | None] | None = None, injection: str | None = "blend",
                 extended_attention: bool = False, source_kv: bool = True, kv_start: float = 0.0,
                 num_inference_steps: int = 20, guidance_scale: float = 4.0, negative_prompt: str = "",
                 controlnet_conditioning_scale: float = 1.0, interval: int = 5, qnerf_from: float = 0.0,
                 qnerf_until: float = 0.6,
                 blend_weight: float = 0.5, guidance_alpha: float = 0.05, query_layers: list[str] | None = None,
                 fit_settings: FitSettings = FitSettings(), field_config: FieldConfig = FieldConfig(),
                 generator: torch.Generator | None = None, output_type: str = "np", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ("latents",),
                 interval_callback=None, overlap_sync: float = 0.0, sync_space: str = "latent",
                 kv_layers: list[str] | None = None):
        """Edit the views.

        images: the source views (V, H, W, 3) uint8; cameras: their cameras (`formats.Camera`);
        control_image: each view's control map after the edit, (V, H, W, C) in [0, 1];
        source_control_image: before the edit (default: control_image, as for a recolour); depths: each
        view's z-depth after the edit (the field's depth loss where known); prompt / source_prompt: the
        scene after and before the edit. injection: "blend" (the default: guidance lost edited objects on a
        report seed, benchmarks/RESULTS.md "Nineteenth session"), "guidance" or None (independent per-view
        editing); extended_attention: each view also reads its ring neighbours (a baseline);
        source_kv: key/value injection from the source views, from step kv_start·steps on; kv_layers: the
        self-attention layers (install names, `unet.attn_processors`) that read them (default: every one
        of the up blocks).
        interval: steps between QNeRF fits (τ); qnerf_from / qnerf_until: the part of the schedule with
        fits and injection (fractions of the steps); blend_weight: w of the blend; guidance_alpha: the RMS of a guidance step.
        interval_callback(step, fit_result, rendered) is called after each fit. The output's `fits` give per
        interval its first and last step, the seconds of the query-record pass (record_seconds), of the fit
        and render (seconds) and of the interval's denoising steps without those (generation_seconds).
        overlap_sync: the first fraction of the steps after which the views' clean-latent estimates are
        averaged where the depths link them (0: never; needs depths: without them nothing is linked);
        sync_space: "latent" (average the latent cells, `sync_overlaps`; as good at 64 px and cheaper) or
        "image" (average the decoded estimates pixel by pixel and carry the change back through the
        encoder, `sync_decoded`: three VAE passes per synced step).
        """
        if source_control_image is None:
            source_control_image = control_image
        self.check_inputs(images, cameras, control_image, source_control_image, depths, prompt, injection,
                          num_inference_steps, interval, qnerf_until, blend_weight, kv_start, query_layers, qnerf_from,
                          guidance_alpha, overlap_sync, sync_space, kv_layers)
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type: expected 'np' or 'latent', got {output_type!r}")
        device = self._execution_device
        n_views = len(images)
        seconds = {"inversion": 0.0, "generation": 0.0, "fitting": 0.0}

        # 1. prompts and timesteps
        edit_hidden, source_hidden = self.encode_prompt(prompt, source_prompt or prompt, negative_prompt, n_views, device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 2. invert every view under its source control map
        def to_control(maps):
            return torch.from_numpy(np.ascontiguousarray(maps)).permute(0, 3, 1, 2).to(device, self.controlnet.dtype)
        control, source_control = to_control(control_image), to_control(source_control_image)
        start = time.perf_counter()
        clean = self.vae.encode(images_to_tensor(images).to(device, self.vae.dtype)).latent_dist.mode()
        clean = (clean * self.vae.config.scaling_factor).to(self.unet.dtype)
        source = ddim_inversion(lambda z, t: self.denoise(z, t, source_hidden, source_control,
                                                          controlnet_conditioning_scale),
                                clean, self.scheduler, num_inference_steps, batched=True)
        seconds["inversion"] = time.perf_counter() - start
        latent_size = tuple(clean.shape[-2:])

        # 3. the mechanisms' state
        layers = tuple(query_layers or default_query_layers(self.unet))
        queries = QueryState(layers, weight=blend_weight) if injection else None
        if kv_layers is None:
            kv_layers = default_query_layers(self.unet, levels=len(self.unet.config.block_out_channels))
        kv = SourceKV(frozenset(kv_layers), start_step=round(kv_start * num_inference_steps)) if source_kv else None
        views = None
        if extended_attention:
            index = torch.cat([torch.arange(n_views)[:, None], torch.tensor(ring_neighbours(n_views))], 1)
            views = ViewState(index.long())
        controller = AttentionController(views=views, queries=queries, source_kv=kv)

        def make(name, original):
            return None if is_cross_attention(name) else MultiViewProcessor(controller, name, original)

        # 4. the denoising loop from the inverted noise
        latents = source[0].clone()
        inject_from, inject_until = round(qnerf_from * num_inference_steps), round(qnerf_until * num_inference_steps)
        model_hidden, model_control = edit_hidden, torch.cat([control, control])
        fits, field = [], None
        n_sync = round(overlap_sync * num_inference_steps)
        links = ()
        if n_sync and sync_space == "image":  # pixel-exact links; a pixel mixes no surfaces
            links = self.overlap_links(cameras, depths, images.shape[1:3], device, edge_tolerance=None)
        elif n_sync:
            links = self.overlap_links(cameras, depths, latent_size, device)

        def synchronise(estimate):
            return sync_decoded(estimate, self.vae, links) if sync_space == "image" else sync_overlaps(estimate, *links)

        def predict(z):  # the classifier-free-guided model output for the edited views
            out = self.denoise(torch.cat([z, z]), t, model_hidden, model_control, controlnet_conditioning_scale)
            uncond, text = out.chunk(2)
            return uncond + guidance_scale * (text - uncond)
        with installed_processors(self.unet, make), self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(timesteps):
                controller.begin_step(i, int(t))
                step_start, interval_seconds = time.perf_counter(), 0.0
                if kv is not None:  # the source views at this step: their keys and values
                    kv.mode = "record"
                    self.denoise(source[i], t, source_hidden, source_control, controlnet_conditioning_scale)
                    kv.mode = "inject"
                if queries is not None and inject_from <= i < inject_until and (i - inject_from) % interval == 0:
                    # record the queries at the cached latent, (re)fit the field, render every view
                    record_start = time.perf_counter()
                    queries.mode, queries.recording, queries.recorded = None, True, {}
                    predict(latents)
                    queries.recording = False
                    fit_start = time.perf_counter()
                    recorded = {n: to_views(q, n_views, latent_size) for n, q in queries.recorded.items()}
                    result = fit_queries(recorded, list(cameras), depths, field=field, settings=fit_settings,
                                         config=field_config)
                    field = result.field
                    rendered = render_queries(field, list(cameras), {n: m.shape[1:3] for n, m in recorded.items()})
                    queries.rendered = {n: from_views(m, 2).to(latents.dtype) for n, m in rendered.queries.items()}
                    fit_seconds = time.perf_counter() - fit_start
                    interval_seconds = time.perf_counter() - record_start
                    seconds["fitting"] += fit_seconds
                    fits.append({"step": i, "last_step": min(i + interval, inject_until) - 1,
                                 "record_seconds": fit_start - record_start, "seconds": fit_seconds,
                                 "fit_seconds": result.seconds, "iterations": result.iterations, "loss": result.loss,
                                 "generation_seconds": 0.0})
                    if interval_callback is not None:
                        interval_callback(i, result, rendered)
                injecting = queries is not None and inject_from <= i < inject_until and queries.rendered
                if injecting and injection == "guidance":
                    latents, _ = guidance_step(predict, latents, queries, guidance_alpha)
                if queries is not None:
                    queries.mode = "blend" if injecting and injection == "blend" else None
                noise = predict(latents)
                step = self.scheduler.step(noise, t, latents)
                latents = step.prev_sample
                if i < n_sync:  # the same DDIM step from synchronised clean-latent estimates
                    estimate = step.pred_original_sample
                    latents = latents + self.alpha_prev(t).sqrt() * (synchronise(estimate) - estimate)
                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = (out or {}).get("latents", latents)
                step_seconds = time.perf_counter() - step_start
                seconds["generation"] += step_seconds
                if fits and fits[-1]["step"] <= i <= fits[-1]["last_step"]:  # the interval's steps, less its fit
                    fits[-1]["generation_seconds"] += step_seconds - interval_seconds
                bar.update()
        seconds["generation"] -= seconds["fitting"]

        # 5. decode
        images_out = None
        if output_type == "np":
            images_out = self.decode(latents)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images_out, latents)
        return MultiViewEditPipelineOutput(images=images_out, latents=latents, fits=fits, seconds=seconds)
