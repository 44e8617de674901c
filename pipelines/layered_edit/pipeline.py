"""`LayeredEditPipeline`: generates one layer of a layered edit, as a diffusers pipeline.

`__call__` reads top to bottom: check the inputs, encode the prompts, set the timesteps, prepare
latents and masks, the denoising loop, decode. In the loop, Multi-Query Disentanglement runs in
cross-attention (each region of the scene sees only its own prompt) and Background Consistency
Guidance after every scheduler step (outside the layer's mask the latent is taken from the previous
layer's trajectory, except during the last `harmonize` fraction of steps). It runs on SD-1.x-style
UNets (the embedded default), SDXL-style UNets (two text encoders, added conditioning) and
PixArt-style transformers (T5 with a padding mask; resolution and aspect-ratio conditions at
`sample_size` 128, as PixArt-α's own pipeline passes them).

    pipe = LayeredEditPipeline.from_pretrained(folder)   # a DDIM scheduler (see check_inputs)
    background = pipe("an empty scene of grass", generator=torch.Generator().manual_seed(0))
    layer = pipe("a red circle", mask=rough_mask, background=background.trajectory,
                 scene_prompts=["an empty scene of grass"], scene_masks=[])
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from attention_processors import (AttentionController, MultiQueryDisentangledProcessor, RegionState, installed_processors,
                                  region_labels)
from attention_processors.install import is_cross_attention
from pipelines.conditioning import (UnknownWordsWarning, blend_latents, ddim_inversion, encode_prompts,
                                    images_to_tensor, tensor_to_images, unknown_words)
from pipelines.outputs import LayeredEditPipelineOutput

OUTPUT_TYPES = ("np", "pil", "latent")


@dataclass
class Conditioning:
    """What the denoiser gets besides latents and timestep, two rows: [negative branch; prompts].
    hidden (2, R·T, C), the R prompts concatenated along tokens; mask (2, R·T) the T5 padding mask or
    None; added: added_cond_kwargs (SDXL's pooled text and size ids, PixArt's resolution)."""

    hidden: torch.Tensor
    mask: torch.Tensor | None = None
    added: dict = field(default_factory=dict)

    def rows(self, index: slice) -> "Conditioning":
        """The same conditioning for a subset of the rows (e.g. slice(1, 2): the prompts only)."""
        return Conditioning(self.hidden[index], None if self.mask is None else self.mask[index],
                            {k: None if v is None else v[index] for k, v in self.added.items()})


class LayeredEditPipeline(DiffusionPipeline):
    """Generates one layer at a time; `LayeredSession` holds the layers."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->transformer->vae"
    _optional_components = ["unet", "transformer", "text_encoder_2", "tokenizer_2", "safety_checker",
                            "feature_extractor", "image_encoder"]
    _callback_tensor_inputs = ["latents"]
    # deterministic and one-step: BCG splices latents between steps and replay restarts mid-trajectory
    required_scheduler = DDIMScheduler

    def __init__(self, vae, text_encoder, tokenizer, scheduler, unet=None, transformer=None, text_encoder_2=None,
                 tokenizer_2=None, safety_checker=None, feature_extractor=None, image_encoder=None,
                 requires_safety_checker: bool = False, force_zeros_for_empty_prompt: bool = False):
        """force_zeros_for_empty_prompt: an empty negative prompt is zero embeddings (SDXL folders say so
        in model_index.json, and from_pretrained passes it on)."""
        super().__init__()
        if unet is None and transformer is None:
            raise ValueError("unet/transformer: the pipeline needs a denoiser, got neither")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                              unet=unet, transformer=transformer, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2, safety_checker=None, feature_extractor=None, image_encoder=None)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def denoiser(self):
        return self.unet if self.unet is not None else self.transformer

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) the model was made for: its config's sample_size × the VAE's factor."""
        size = self.denoiser.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    # -- checks

    def check_size(self, height, width) -> None:
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0 \
                    or value % self.vae_scale_factor:
                raise ValueError(f"{name}: expected a positive multiple of {self.vae_scale_factor} (the VAE's "
                                 f"downsampling), got {value!r}")

    def check_inputs(self, prompt, mask, background, scene_prompts, scene_masks, height, width, num_inference_steps,
                     guidance_scale, harmonize, start_trajectory, output_type, callback_on_step_end_tensor_inputs,
                     strength=1.0):
        """Each bad argument is a ValueError that names it and says what was expected."""
        if not isinstance(self.scheduler, self.required_scheduler):
            raise ValueError(f"scheduler: layered editing needs a DDIMScheduler (deterministic and one-step: BCG "
                             f"splices latents between steps and replay restarts mid-trajectory), got "
                             f"{type(self.scheduler).__name__}; set pipe.scheduler = "
                             f"DDIMScheduler.from_config(pipe.scheduler.config)")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt: expected a non-empty string, got {prompt!r}")
        self.check_size(height, width)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected a positive integer, got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale: expected a finite number, got {guidance_scale!r}")
        if not isinstance(harmonize, (int, float)) or not 0 <= harmonize <= 1:
            raise ValueError(f"harmonize: expected a fraction in [0, 1], got {harmonize!r}")
        for name, m in [("mask", mask)] + [(f"scene_masks[{i}]", m) for i, m in enumerate(scene_masks or [])]:
            if m is not None and (not isinstance(m, np.ndarray) or m.shape != (height, width)):
                raise ValueError(f"{name}: expected a ({height}, {width}) boolean array, got "
                                 f"{getattr(m, 'shape', type(m).__name__)}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"strength: expected a fraction in (0, 1], got {strength!r}")
        if strength < 1 and background is None:
            raise ValueError("strength: below 1 a layer starts from the background's latents; pass background")
        if isinstance(num_inference_steps, int) and round(num_inference_steps * strength) < 1:
            raise ValueError(f"strength: {strength} of {num_inference_steps} steps runs none; expected at least "
                             f"1 / num_inference_steps")
        if (mask is None) != (background is None):
            raise ValueError("background: a layer with a mask needs the previous layer's trajectory, and a "
                             "trajectory needs the mask it is kept outside of; pass both or neither")
        steps_shape = (num_inference_steps + 1, self.denoiser.config.in_channels,
                       height // self.vae_scale_factor, width // self.vae_scale_factor)
        for name, trajectory in (("background", background), ("start_trajectory", start_trajectory)):
            if trajectory is not None and tuple(trajectory.shape) != steps_shape:
                raise ValueError(f"{name}: expected a trajectory of shape {steps_shape} (steps + 1, channels, "
                                 f"latent height, latent width), got {tuple(trajectory.shape)}")
        if start_trajectory is not None and background is None:
            raise ValueError("start_trajectory: resuming from memory needs the background it is blended with")
        if scene_prompts is not None:
            if not isinstance(scene_prompts, (list, tuple)) or not all(isinstance(p, str) for p in scene_prompts):
                raise ValueError(f"scene_prompts: expected a list of strings, got {scene_prompts!r}")
            if len(scene_masks or []) != len(scene_prompts) - 1:
                raise ValueError(f"scene_masks: expected one mask per scene layer after the background "
                                 f"({len(scene_prompts) - 1}), got {len(scene_masks or [])}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: expected one of {OUTPUT_TYPES}, got {output_type!r}")
        if not set(callback_on_step_end_tensor_inputs) <= set(self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs: expected a subset of "
                             f"{self._callback_tensor_inputs}, got {list(callback_on_step_end_tensor_inputs)}")

    # -- prompts

    def encode_prompt(self, prompts: list[str], negative_prompt: str, height: int, width: int,
                      device: torch.device) -> Conditioning:
        """The R prompts concatenated along tokens (row 1) and the negative prompt repeated R times (row 0):
        with MQD each region attends to its own segment; without regions R is 1."""
        enc = encode_prompts(prompts + [negative_prompt], self.tokenizer, self.text_encoder, device,
                             self.tokenizer_2, self.text_encoder_2, t5=self.transformer is not None)
        dtype = self.denoiser.dtype  # an fp16 text encoder beside a float32 denoiser (fp16 files) is cast
        n = len(prompts)
        negative, negative_pooled = enc.hidden[n:], None if enc.pooled is None else enc.pooled[n:]
        if negative_prompt == "" and self.config.force_zeros_for_empty_prompt:  # as SDXL's own pipeline does
            negative = torch.zeros_like(negative)
            negative_pooled = None if negative_pooled is None else torch.zeros_like(negative_pooled)
        cond = enc.hidden[:n].reshape(1, -1, enc.hidden.shape[-1])
        hidden = torch.cat([negative.repeat(1, n, 1), cond]).to(dtype)
        mask, added = None, {}
        if enc.mask is not None:
            mask = torch.cat([enc.mask[n:].repeat(1, n), enc.mask[:n].reshape(1, -1)])
        if enc.pooled is not None:  # SDXL: the global vector is the newest prompt's
            pooled = torch.cat([negative_pooled, enc.pooled[n - 1:n]]).to(dtype)
            size = [height, width, 0, 0, height, width]
            added = {"text_embeds": pooled, "time_ids": torch.tensor([size, size], dtype=pooled.dtype, device=device)}
        if self.transformer is not None:
            added = {"resolution": None, "aspect_ratio": None}
            if getattr(self.transformer, "use_additional_conditions", False):  # PixArt-α at sample_size 128
                added = {"resolution": torch.tensor([[height, width]] * 2, dtype=hidden.dtype, device=device),
                         "aspect_ratio": torch.tensor([[height / width]] * 2, dtype=hidden.dtype, device=device)}
        return Conditioning(hidden, mask, added)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's output for latents (B, C, h, w) at timestep t (its prediction type)."""
        if self.transformer is not None:
            out = self.transformer(latents, encoder_hidden_states=cond.hidden, encoder_attention_mask=cond.mask,
                                   timestep=t.expand(len(latents)), added_cond_kwargs=cond.added).sample
            return out[:, :latents.shape[1]]  # PixArt also predicts a variance
        return self.unet(latents, t, cond.hidden, added_cond_kwargs=cond.added or None).sample

    # -- latents, masks, images

    def latent_mask(self, mask: np.ndarray, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
        """(1, 1, h, w) in {0, 1} from an (H, W) mask: a latent pixel belongs to it if the mask touches it;
        on device in dtype (default: the execution device, the denoiser's dtype; looking those up takes a
        few ms each, so a caller that has them passes them)."""
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        size = (mask.shape[0] // self.vae_scale_factor, mask.shape[1] // self.vae_scale_factor)
        return F.adaptive_max_pool2d(m, size).to(self._execution_device if device is None else device,
                                                 self.denoiser.dtype if dtype is None else dtype)

    def prepare_latents(self, shape: tuple, generator, device, background, latent_mask, start_trajectory,
                        n_blended: int, n_skipped: int = 0) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
        """(the first step to run, its latents (1, C, h, w), the trajectory so far). From memory
        (start_trajectory): its latents up to the end of the BCG phase, then only the last steps run.
        n_skipped > 0 (strength below 1): the background's own latents after that many steps, inside the
        mask too, as an image-to-image start. With BCG (n_blended > 0) the starting noise outside the
        mask is the background's too."""
        if start_trajectory is not None:
            return n_blended, start_trajectory[n_blended:n_blended + 1], list(start_trajectory[:n_blended + 1])
        if n_skipped > 0:
            return n_skipped, background[n_skipped:n_skipped + 1].clone(), list(background[:n_skipped + 1])
        latents = randn_tensor(shape, generator=generator, device=device, dtype=self.denoiser.dtype)
        if background is not None and n_blended > 0:
            latents = blend_latents(background[0:1], latents, latent_mask)
        return 0, latents, [latents[0]]

    @staticmethod
    def object_latent_mask(estimate: torch.Tensor, background: torch.Tensor, mask: torch.Tensor,
                           threshold: float) -> torch.Tensor:
        """(1, 1, h, w): the latent pixels of mask where estimate (1, C, h, w) differs from the background's
        clean latents by more than threshold (L2 over channels), grown by one latent pixel."""
        differs = ((estimate - background).norm(dim=1, keepdim=True) > threshold).to(mask.dtype)
        return F.max_pool2d(differs, 3, stride=1, padding=1) * mask

    @contextlib.contextmanager
    def _vae_precision(self):
        """The VAE in float32 for the block when its config says fp16 overflows (force_upcast: SDXL's
        VAE gives NaNs in fp16), as diffusers' own pipelines upcast it; yields the dtype to feed it."""
        upcast = self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if upcast:
            self.vae.to(torch.float32)
        try:
            yield self.vae.dtype
        finally:
            if upcast:
                self.vae.to(torch.float16)

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """(1, C, h, w) scaled latents of an (H, W, 3) uint8 image (the posterior's mean)."""
        with self._vae_precision() as dtype:
            x = images_to_tensor([image]).to(self._execution_device, dtype)
            latents = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
        return latents.to(self.denoiser.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(H, W, 3) uint8 image of latents (1, C, h, w)."""
        with self._vae_precision() as dtype:
            return tensor_to_images(self.vae.decode(latents.to(dtype) / self.vae.config.scaling_factor).sample)[0]

    # -- one layer

    @torch.no_grad()
    def __call__(self, prompt: str, mask: np.ndarray | None = None, background: torch.Tensor | None = None,
                 scene_prompts: list[str] | None = None, scene_masks: list[np.ndarray] | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 20,
                 guidance_scale: float = 4.0, negative_prompt: str = "", harmonize: float = 0.2, bcg: bool = True,
                 generator: torch.Generator | None = None, start_trajectory: torch.Tensor | None = None,
                 tighten: float | None = None, strength: float = 1.0, output_type: str = "np", return_dict: bool = True,
                 callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",)):
        """Generate one layer.

        prompt: the layer's prompt. mask: (height, width) bool, where the layer may change the scene
        (None: everywhere, a background); background: the previous layer's trajectory
        (steps + 1, C, h, w), which BCG follows outside the mask. scene_prompts: the prompts of the
        layers below, background first, and scene_masks their masks (one per layer after the
        background): with them, MQD gives each region its own prompt (later layers in front, this
        layer's mask frontmost); without, one prompt everywhere. harmonize: the last fraction of
        steps run without BCG, so the seam settles; bcg=False runs none. start_trajectory: a
        trajectory from memory for the BCG phase (replay); only the last harmonize steps then run.
        tighten: during the harmonize steps, keep following the background inside the mask too, except
        where the clean-latent estimate at their start differs from the background's by more than
        this (latent units): the object and a latent pixel around it (`object_latent_mask`). strength: as
        in diffusers' image-to-image: below 1, the first (1 − strength) of the steps are not run and the
        layer starts from the background's latents at that point, inside the mask as well, so the region
        starts from the scene's own layout instead of fresh noise.
        callback_on_step_end(pipe, step, timestep, {"latents": …}) may return new latents.
        Returns a `LayeredEditPipelineOutput` (images, trajectory), or (images, trajectory).
        """
        default_height, default_width = self.default_size
        height = default_height if height is None else height
        width = default_width if width is None else width
        # 1. inputs
        self.check_inputs(prompt, mask, background, scene_prompts, scene_masks, height, width, num_inference_steps,
                          guidance_scale, harmonize, start_trajectory, output_type, callback_on_step_end_tensor_inputs,
                          strength)
        if unknown := unknown_words(self.tokenizer, prompt):
            warnings.warn(f"prompt: the model does not know {', '.join(map(repr, unknown))}; it reads them letter "
                          f"by letter", UnknownWordsWarning, stacklevel=2)
        device = self._execution_device
        prompts = [*scene_prompts, prompt] if scene_prompts else [prompt]

        # 2. prompts: the scene's regions back to front, this layer's last; the negative branch
        cond = self.encode_prompt(prompts, negative_prompt, height, width, device)

        # 3. timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        n_blended = int(round(num_inference_steps * (1 - harmonize))) if bcg else 0

        # 4. latents and masks
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        dtype = self.denoiser.dtype
        latent_mask = None if mask is None else self.latent_mask(mask, device, dtype)
        n_skipped = num_inference_steps - int(round(num_inference_steps * strength))
        first, latents, trajectory = self.prepare_latents((1, self.denoiser.config.in_channels, *latent_size),
                                                          generator, device, background, latent_mask,
                                                          start_trajectory, n_blended, n_skipped)
        regions = None
        if len(prompts) > 1:  # MQD: every latent pixel belongs to one region, later layers in front
            masks = [self.latent_mask(m, "cpu", dtype)[0, 0] for m in [*scene_masks, mask]]
            regions = RegionState(region_labels(masks, *latent_size), len(prompts),
                                  segment_length=cond.hidden.shape[1] // len(prompts),
                                  shared_rows=1)  # row 0 is the negative prompt, repeated in every segment
        controller = AttentionController(regions=regions)

        def make(name, original):
            if regions is None or not is_cross_attention(name):
                return None
            return MultiQueryDisentangledProcessor(controller, name, fallback=original)

        # 5. the denoising loop
        with installed_processors(self.denoiser, make), self.progress_bar(total=num_inference_steps - first) as bar:
            for i, t in enumerate(timesteps[first:], start=first):
                controller.begin_step(i, int(t))
                uncond, text = self.predict(torch.cat([latents, latents]), t, cond).chunk(2)
                step = self.scheduler.step(uncond + guidance_scale * (text - uncond), t, latents)
                latents = step.prev_sample
                if background is not None and i < n_blended:
                    latents = blend_latents(background[i + 1:i + 2], latents, latent_mask)
                elif background is not None and tighten is not None and n_blended > 0:
                    if i == max(n_blended, first):  # the object, as the clean-latent estimate has it now
                        tight = self.object_latent_mask(step.pred_original_sample, background[-1:], latent_mask, tighten)
                    latents = blend_latents(background[i + 1:i + 2], latents, tight)
                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                trajectory.append(latents[0])
                bar.update()

        # 6. decode
        trajectory = torch.stack(trajectory)
        images = None
        if output_type != "latent":
            images = self.decode(latents)[None]
            if output_type == "pil":
                images = [PIL.Image.fromarray(image) for image in images]
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, trajectory
        return LayeredEditPipelineOutput(images=images, trajectory=trajectory)

    # -- a real image as layer 0

    @torch.no_grad()
    def invert(self, image: np.ndarray, prompt: str = "", num_inference_steps: int = 20,
               callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """DDIM inversion of an (H, W, 3) uint8 image: the trajectory (steps + 1, C, h, w) that this
        pipeline's scheduler denoises back to the image's latents (conditioned on prompt, no guidance).
        callback(steps done, steps in all) after each step (an app's progress bar; it may raise to stop)."""
        height, width = image.shape[:2]
        self.check_size(height, width)
        device = self._execution_device
        cond = self.encode_prompt([prompt], "", height, width, device).rows(slice(1, 2))  # the prompt's row
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        trajectory = ddim_inversion(lambda z, t: self.predict(z, t, cond), self.encode_image(image), self.scheduler,
                                    num_inference_steps,
                                    progress=lambda steps: _reporting(self.progress_bar(steps), callback))
        self.maybe_free_model_hooks()
        return trajectory

    @torch.no_grad()
    def forward_noise(self, image: np.ndarray, num_inference_steps: int = 20,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The cheap alternative to inversion: the image's latents noised with one fixed noise, at every
        timestep: (steps + 1, C, h, w)."""
        latents = self.encode_image(image)
        self.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        steps = [self.scheduler.add_noise(latents, noise, t[None])[0] for t in self.scheduler.timesteps]
        return torch.stack(steps + [latents[0]])


def _reporting(steps, callback):
    """steps, calling callback(k, len(steps)) once the k-th step is done (when it asks for the next)."""
    total = len(steps)
    for k, step in enumerate(steps):
        if callback is not None and k:
            callback(k, total)
        yield step
    if callback is not None and total:
        callback(total, total)
