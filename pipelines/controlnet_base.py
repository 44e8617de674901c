"""What Strata's ControlNet pipelines share (driving video, multi-view editing): the components of
diffusers' own `StableDiffusionControlNetPipeline` (so `from_pretrained` reads such a folder), DDIM, one
denoiser call (ControlNet, then UNet) and one decode."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import ControlNetModel, DDIMScheduler, DiffusionPipeline

from pipelines.conditioning import tensor_to_images


class ControlNetPipelineBase(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    required_scheduler = DDIMScheduler

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet: ControlNetModel, scheduler, safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker: bool = False):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
                              scheduler=scheduler, safety_checker=None, feature_extractor=None, image_encoder=None)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def denoise(self, latents, t, hidden, control, scale: float = 1.0) -> torch.Tensor:
        """The model output at latents: the ControlNet's residuals, then the UNet."""
        down, mid = self.controlnet(latents, t, encoder_hidden_states=hidden, controlnet_cond=control,
                                    conditioning_scale=scale, return_dict=False)
        return self.unet(latents, t, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample

    def alpha_prev(self, t) -> torch.Tensor:
        """ᾱ of the timestep a DDIM step from t lands on (as `DDIMScheduler.step` computes it)."""
        prev = int(t) - self.scheduler.config.num_train_timesteps // self.scheduler.num_inference_steps
        return self.scheduler.alphas_cumprod[prev] if prev >= 0 else self.scheduler.final_alpha_cumprod

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(B, H, W, 3) uint8 images of latents (B, C, h, w), one row at a time (memory stays flat)."""
        return np.concatenate([tensor_to_images(self.vae.decode(
            latents[b:b + 1].to(self.vae.dtype) / self.vae.config.scaling_factor).sample) for b in range(len(latents))])
