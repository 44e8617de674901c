"""Tiny random models built from configs with a fixed seed, never downloaded (diffusers' dummy-components pattern).

All use the world tokenizer, so prompts are world captions.
"""

from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, PixArtTransformer2DModel,
                       UNet2DConditionModel)
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config,
                          T5EncoderModel)

from world.tokenizer import build_world_tokenizer


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=32)


def _clip_config(tokenizer, hidden: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, projection_dim=hidden)


def sd1_components(seed: int = 0) -> dict:
    """SD-1-like: UNet with cross-attention (and self-attention) at the highest latent resolution."""
    tokenizer = build_world_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    return dict(unet=unet, vae=tiny_vae(seed), text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def sdxl_components(seed: int = 0) -> dict:
    """SDXL-like: two text encoders (the second with projection) and added time/size conditioning."""
    tokenizer = build_world_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
                                cross_attention_dim=64, norm_num_groups=8)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer))
    return dict(unet=unet, vae=tiny_vae(seed), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=build_world_tokenizer(),
                scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1),
                image_encoder=None, feature_extractor=None)


def pixart_components(seed: int = 0) -> dict:
    """PixArt-like: a DiT transformer with cross-attention to a T5 encoder (world tokenizer)."""
    tokenizer = build_world_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                           num_heads=4, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                                           eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0))
    return dict(transformer=transformer, vae=tiny_vae(seed), text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=DDIMScheduler())


def tiny_controlnet(unet: UNet2DConditionModel, conditioning_channels: int = 4) -> ControlNetModel:
    """A ControlNet copied from a tiny UNet; its conditioning embedding downsamples by the VAE's factor (2)."""
    return ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels,
                                     conditioning_embedding_out_channels=(8, 16))
