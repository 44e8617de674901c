"""`DrivingVideoPipeline`: surround-view driving video from a 3D box layout (DrivingDiffusion's scheme).

Every camera of the rig and every frame gets a control map projected from the layout's boxes (class
colours and depth, `formats.projection`), read by a ControlNet. Frames are generated chunk by chunk:
the key frame first (all cameras together, cross-camera attention), then windows of `window` frames
whose first `overlap` frames are carried over from the last window (their latents at every step are
replayed, so the new frames attend to them at the same noise level) and act as the key frame and the
previous frames. Inside a window all frames and cameras are denoised together; each view's
self-attention reads its ring neighbours in the same frame (cross_view) and the key frame's and the
previous frame's same camera (temporal), in one `kernels.neighbour_attention` call per layer. Local
prompts: each box class's projected region attends to that class's prompt through MQD (one fused
region-attention call per cross-attention layer), the rest to the scene prompt. Overlaps: where the
layout (its ground plane and boxes) says two neighbouring cameras see the same surface, their
clean-latent estimates are averaged after each DDIM step but the last few (synchronised Tweedie
estimates, as SyncTweedies does for joint diffusion), so the cameras agree on what neither control map
says (where the road ends, the grass). Memory does not grow
with the video's length: only the carried frames' trajectories are kept between windows.

Cross-view attention is parameter-free unless the pipeline has trained projections (the optional
`view_projections` component, a `CrossViewProjections`: `training.train --stage crossview`;
`load_view_projections` reads weights/world-crossview when the embedded model ships one, which it does
not today): each UNet self-attention layer then adds a projection of the extended attention to its
plain self-attention (the ControlNet's layers stay parameter-free).

    pipe = DrivingVideoPipeline.from_pretrained(folder)      # a folder with controlnet/, or controlnet=…
    video = pipe(StreetClip.load("clip.json"), "a street view", {"car": "a blue car"}).frames  # (F, V, H, W, 3)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from attention_processors import AttentionController, MultiQueryDisentangledProcessor, RegionState, installed_processors
from attention_processors.cross_view import CrossViewProcessor, CrossViewProjections, ViewState, ring_neighbours
from attention_processors.install import is_cross_attention
from attention_processors.temporal import frame_index
from formats.layout import CLASSES, StreetClip
from formats.projection import control_maps, view_correspondences
from pipelines.conditioning import encode_prompts
from pipelines.controlnet_base import ControlNetPipelineBase
from pipelines.outputs import DrivingVideoPipelineOutput
from pipelines.overlap_sync import link_tensors, sync_overlaps

MAX_FRAMES = 1000
STREET_MAX_DEPTH = 40.0  # metres at which the control map's depth reaches 0 (the ControlNet's training)


CONTROLNET_PREFIX = "controlnet:"  # the ControlNet's layers are named apart: the projections are the UNet's


def view_processors(controller: AttentionController, prefix: str = ""):
    """make_processor for `installed_processors`: MQD on cross-attention (with regions), cross-view
    attention on self-attention (with views), each layer known to the controller as prefix + name."""
    def make(name, original):
        if is_cross_attention(name):
            return MultiQueryDisentangledProcessor(controller, prefix + name, original) if controller.regions else None
        return CrossViewProcessor(controller, prefix + name, original) if controller.views else None
    return make


class DrivingVideoPipeline(ControlNetPipelineBase):
    _optional_components = [*ControlNetPipelineBase._optional_components, "view_projections"]

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker: bool = False,
                 view_projections: CrossViewProjections | None = None):
        super().__init__(vae, text_encoder, tokenizer, unet, controlnet, scheduler)
        self.register_modules(view_projections=view_projections)

    def check_inputs(self, layout, prompt, local_prompts, num_frames, window, overlap, num_inference_steps, reach=1,
                     overlap_sync=0.0):
        """Each bad argument is a ValueError that names it."""
        if not isinstance(self.scheduler, self.required_scheduler):
            raise ValueError(f"scheduler: driving video needs a DDIMScheduler (carried frames replay their "
                             f"trajectories step by step), got {type(self.scheduler).__name__}")
        if not isinstance(layout, StreetClip):
            raise ValueError(f"layout: expected a formats.StreetClip (StreetClip.load('clip.json')), got "
                             f"{type(layout).__name__}")
        if len(layout.rig) < 2:
            raise ValueError(f"layout.rig: cross-camera video needs at least 2 cameras, got {len(layout.rig)}")
        width, height = layout.image_size
        for name, value in (("layout.image_size height", height), ("layout.image_size width", width)):
            if value % self.vae_scale_factor:
                raise ValueError(f"{name}: expected a multiple of {self.vae_scale_factor} (the VAE's downsampling), "
                                 f"got {value}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt: expected a non-empty string, got {prompt!r}")
        if local_prompts is not None:
            if not isinstance(local_prompts, dict) or not set(local_prompts) <= set(CLASSES) or not all(
                    isinstance(p, str) and p.strip() for p in local_prompts.values()):
                raise ValueError(f"local_prompts: expected {{class: prompt}} with classes among {CLASSES}, got "
                                 f"{local_prompts!r}")
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= min(
                len(layout.frames), MAX_FRAMES):
            raise ValueError(f"num_frames: expected 1..{min(len(layout.frames), MAX_FRAMES)} (the layout has "
                             f"{len(layout.frames)} frames; at most {MAX_FRAMES}), got {num_frames!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"window: expected at least 2 frames, got {window!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 1 <= overlap < window:
            raise ValueError(f"overlap: expected 1..{window - 1} frames (fewer than the window), got {overlap!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected a positive integer, got {num_inference_steps!r}")
        if isinstance(reach, bool) or not isinstance(reach, int) or reach < 1:
            raise ValueError(f"reach: expected at least 1 camera on each side, got {reach!r}")
        if isinstance(overlap_sync, bool) or not isinstance(overlap_sync, (int, float)) or not 0 <= overlap_sync <= 1:
            raise ValueError(f"overlap_sync: expected a fraction of the steps in [0, 1], got {overlap_sync!r}")
        projections = getattr(self, "view_projections", None)
        if projections is not None and not projections.fits(self.unet):
            raise ValueError("view_projections: made for another UNet (its layer names or widths differ from this "
                             "pipeline's self-attention layers); train them for this model (training.train --stage "
                             "crossview) or load the pipeline without them")

    def encode_prompt(self, prompts: list[str], negative_prompt: str, groups: int, device) -> torch.Tensor:
        """(2·groups, R·T, C): the negative prompt repeated R times for each group of the first branch,
        the R prompts concatenated (scene first, then the classes') for each group of the second."""
        hidden = encode_prompts(prompts + [negative_prompt], self.tokenizer, self.text_encoder, device).hidden
        n = len(prompts)
        negative = hidden[n:].repeat(1, n, 1)
        cond = hidden[:n].reshape(1, -1, hidden.shape[-1])
        return torch.cat([negative.expand(groups, -1, -1), cond.expand(groups, -1, -1)]).to(self.unet.dtype)

    def overlap_links(self, layout: StreetClip, frames: list[int], size: tuple[int, int], reach: int, device):
        """The latent rows of `frames` (frame-major, every camera) that see each other's cells, from the
        layout (`formats.projection.view_correspondences`): source rows (L,), target rows (L,), sampling
        grids (L, h, w, 2) for `F.grid_sample` and masks (L, 1, h, w); L links in all (() when none)."""
        height, width = size
        n_views = len(layout.rig)
        links = [(k * n_views + a, k * n_views + b, seen, where) for k, f in enumerate(frames)
                 for b, view in enumerate(view_correspondences(layout, f, (width, height), ring_neighbours(n_views, reach)))
                 for a, seen, where in view]
        return link_tensors(links, size, device, self.unet.dtype)

    def region_labels(self, class_maps: np.ndarray, classes: list[str]) -> torch.Tensor:
        """(G, h, w) long: 1 + the index in `classes` where a latent pixel touches a box of that class, 0
        (the scene prompt) elsewhere; classes later in the list are in front."""
        maps = torch.from_numpy(class_maps)
        size = (maps.shape[-2] // self.vae_scale_factor, maps.shape[-1] // self.vae_scale_factor)
        labels = torch.zeros(len(maps), *size, dtype=torch.long)
        for region, name in enumerate(classes, start=1):
            touched = F.adaptive_max_pool2d((maps == CLASSES.index(name)).float()[:, None], size)[:, 0] > 0
            labels[touched] = region
        return labels

    @torch.no_grad()
    def __call__(self, layout: StreetClip, prompt: str = "a street view", local_prompts: dict[str, str] | None = None,
                 num_frames: int | None = None, window: int = 4, overlap: int = 1, num_inference_steps: int = 20,
                 guidance_scale: float = 4.0, negative_prompt: str = "", controlnet_conditioning_scale: float = 1.0,
                 generator: torch.Generator | None = None, cross_view: bool = True, temporal: bool = True,
                 reach: int = 1, overlap_sync: float = 0.875,
                 use_view_projections: bool = True, output_type: str = "np", return_dict: bool = True,
                 frame_callback=None):
        """Generate num_frames (default: all of the layout's) × every camera of the rig.

        local_prompts: {class: prompt} for the classes whose boxes get their own prompt (None: the
        scene prompt everywhere). cross_view / temporal switch those attentions off (ablations); reach:
        how many cameras on each side of a camera in the rig's ring its cross-view attention reads;
        overlap_sync: the first fraction of the steps during which neighbouring cameras' clean-latent
        estimates are averaged where the layout says they see the same surface (synchronised Tweedie
        estimates, `sync_overlaps`; 0: never; the last steps run free so each view settles its own
        details; 0.875 was chosen on development clips);
        use_view_projections: with False, cross-view attention is parameter-free even when the pipeline
        has trained projections (the `view_projections` component). frame_callback(f, images (V, H, W, 3)) is called as each frame
        is decoded (write a long video as it comes, without keeping it). Returns a
        `DrivingVideoPipelineOutput` with frames (F, V, H, W, 3) uint8 (None for output_type "none").
        """
        if isinstance(layout, StreetClip) and num_frames is None:
            num_frames = len(layout.frames)
        self.check_inputs(layout, prompt, local_prompts, num_frames, window, overlap, num_inference_steps, reach,
                          overlap_sync)
        if output_type not in ("np", "none"):
            raise ValueError(f"output_type: expected 'np' or 'none', got {output_type!r}")
        device = self._execution_device
        n_views = len(layout.rig)
        width, height = layout.image_size
        latent_shape = (self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        classes = [c for c in CLASSES if local_prompts and c in local_prompts]
        prompts = [prompt] + [local_prompts[c] for c in classes]
        projections = {}
        if use_view_projections and getattr(self, "view_projections", None) is not None:
            projections = self.view_projections.as_dict()
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        n_sync = int(round(num_inference_steps * overlap_sync))

        # the chunks: the key frame alone, then windows that carry `overlap` frames over
        chunks, done = [([], [0])], 1
        while done < num_frames:
            carried = list(range(max(0, done - overlap), done))
            new = list(range(done, min(num_frames, done + window - len(carried))))
            chunks.append((carried, new))
            done = new[-1] + 1
        frames_out, kept = [], {}  # kept: frame → its trajectory (steps + 1, V, C, h, w), carried frames only
        with self.progress_bar(total=num_frames * num_inference_steps) as bar:
            for carried, new in chunks:
                chunk = carried + new
                groups = len(chunk) * n_views
                control, class_maps = zip(*(control_maps(layout, f, STREET_MAX_DEPTH) for f in chunk))
                control = torch.from_numpy(np.concatenate(control)).permute(0, 3, 1, 2).to(device, self.controlnet.dtype)
                hidden = self.encode_prompt(prompts, negative_prompt, groups, device)
                regions = None
                if classes:
                    regions = RegionState(self.region_labels(np.concatenate(class_maps), classes), len(prompts),
                                          segment_length=hidden.shape[1] // len(prompts), shared_rows=groups)
                views = None
                if cross_view or temporal:
                    views = ViewState(frame_index(len(chunk), n_views, cross_view, temporal, key_frame=0, reach=reach),
                                      projections)
                controller = AttentionController(regions=regions, views=views)
                latents = randn_tensor((len(new) * n_views, *latent_shape), generator=generator, device=device,
                                       dtype=self.unet.dtype)
                trajectory = [latents]
                fixed = [kept[f] for f in carried]
                links = self.overlap_links(layout, new, latent_shape[1:], reach, device) if n_sync else ()
                with installed_processors(self.unet, view_processors(controller)), \
                        installed_processors(self.controlnet, view_processors(controller, CONTROLNET_PREFIX)):
                    for i, t in enumerate(timesteps):
                        controller.begin_step(i, int(t))
                        batch = torch.cat([*(traj[i] for traj in fixed), latents])
                        model_in = torch.cat([batch, batch])
                        noise = self.denoise(model_in, t, hidden, torch.cat([control, control]),
                                             controlnet_conditioning_scale)
                        uncond, text = noise.chunk(2)
                        guided = (uncond + guidance_scale * (text - uncond))[len(fixed) * n_views:]
                        step = self.scheduler.step(guided, t, latents)
                        latents = step.prev_sample
                        if i < n_sync:  # the same DDIM step from synchronised clean-latent estimates
                            estimate = step.pred_original_sample
                            latents = latents + self.alpha_prev(t).sqrt() * (sync_overlaps(estimate, *links) - estimate)
                        trajectory.append(latents)
                        bar.update(len(new))
                trajectory = torch.stack(trajectory).unflatten(1, (len(new), n_views))  # (steps + 1, F', V, C, h, w)
                latest = {**kept, **{f: trajectory[:, k] for k, f in enumerate(new)}}
                kept = {f: traj for f, traj in latest.items() if f > new[-1] - overlap}  # what the next window carries
                for k, f in enumerate(new):
                    images = self.decode(trajectory[-1, k])
                    if frame_callback is not None:
                        frame_callback(f, images)
                    if output_type == "np":
                        frames_out.append(images)
        self.maybe_free_model_hooks()
        frames = np.stack(frames_out) if output_type == "np" else None
        if not return_dict:
            return (frames,)
        return DrivingVideoPipelineOutput(frames=frames, camera_names=[c.name for c in layout.rig])
