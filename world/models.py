"""The embedded default model's architecture: tiny Stable-Diffusion-style components.

One place for the configs, used by the trainer (`training.train`) and by the benchmarks' random-weight
baselines. Latents are 4 × 16 × 16 for 64 × 64 images (the VAE downsamples by 4).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from world.tokenizer import MAX_LENGTH, build_world_tokenizer

IMAGE_SIZE = 64
VAE_FACTOR = 4
LATENT_SIZE = IMAGE_SIZE // VAE_FACTOR
TEXT_DIM = 64
CONTROL_CHANNELS = 4  # layout RGB + depth


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16)


def text_encoder_config(vocab_size: int, bos_token_id: int, eos_token_id: int) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM,
                          num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                          bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
                          projection_dim=TEXT_DIM)


def unet_config() -> dict:
    # Cross-attention blocks at 16×16 and 8×8, so self-attention also runs at the highest latent
    # resolution (QNeRF records queries there).
    return dict(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(64, 128, 128),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=16)


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                timestep_spacing="trailing", rescale_betas_zero_snr=True)


def build_components(seed: int = 0) -> dict:
    """Randomly initialised components of the embedded architecture (a StableDiffusionPipeline's kwargs)."""
    torch.manual_seed(seed)
    tokenizer = build_world_tokenizer()
    text_encoder = CLIPTextModel(text_encoder_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    return dict(vae=AutoencoderKL(**vae_config()), text_encoder=text_encoder, tokenizer=tokenizer,
                unet=UNet2DConditionModel(**unet_config()), scheduler=DDIMScheduler(**scheduler_config()),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """A ControlNet copied from the UNet's encoder, for 4-channel control maps at image resolution."""
    return ControlNetModel.from_unet(unet, conditioning_channels=CONTROL_CHANNELS,
                                     conditioning_embedding_out_channels=(16, 32, 64))
