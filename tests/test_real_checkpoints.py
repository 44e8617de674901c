"""What users of real SD-1.5, SDXL and PixArt-α checkpoints hit, each reproduced on a tiny model with
the same config switch (issue 26): fp16 files, PixArt at sample_size 128, odd latent sizes at deeper
cross-attention levels, a T5 tokenizer without model_max_length, SDXL's zeroed empty negative prompt,
the VAE's force_upcast, and PixArt's padded prompts without a dense attention bias."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, PixArtTransformer2DModel, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)

from attention_processors import AttentionController, MultiQueryDisentangledProcessor, RegionState
from kernels import region
from pipelines.conditioning import T5_MAX_LENGTH, encode_prompts
from pipelines.layered_edit import EditSettings, LayeredEditPipeline, LayeredSession


def _box(y0, y1, x0, x1, h=32, w=32):
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _edit(pipe, height=32, width=32, steps=2):
    pipe.set_progress_bar_config(disable=True)
    session = LayeredSession(pipe, EditSettings(height=height, width=width, steps=steps))
    session.start_from_prompt("an empty scene of grass", seed=0)
    return session.add_layer("a red circle", _box(2, height // 2, 2, width // 2, height, width), seed=1)


def test_fp16_files_load_and_edit(sd1_components, tmp_path):
    """Found: from_pretrained on fp16 files gave a dtype mismatch (diffusers loaded the UNet and VAE
    as float32, transformers kept CLIP in fp16, nothing cast the embeddings)."""
    StableDiffusionPipeline(**sd1_components).to(torch.float16).save_pretrained(tmp_path / "fp16")
    pipe = LayeredEditPipeline.from_pretrained(tmp_path / "fp16")
    assert pipe.text_encoder.dtype != pipe.unet.dtype or pipe.unet.dtype == torch.float16
    assert _edit(pipe).shape == (32, 32, 3)


def test_pixart_at_sample_size_128_edits(pixart_components):
    """PixArt-α's 1024 px checkpoints have sample_size 128, which turns on its resolution and aspect-ratio
    embedding: passing None for them failed in the timestep embedding."""
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel.from_config(pixart_components["transformer"].config, sample_size=128)
    assert transformer.use_additional_conditions
    pipe = LayeredEditPipeline(**dict(pixart_components, transformer=transformer))
    assert pipe.default_size == (256, 256)
    assert _edit(pipe, 32, 48).shape == (32, 48, 3)


def test_a_unet_edits_at_a_size_whose_latent_is_odd_deeper_down(sd1_components):
    """Found: 5,272 of 14,641 SD-1.5 sizes failed in MQD ("cannot place 25 tokens on a grid over a
    33×40 latent"): the grid was guessed from the token count; stride-2 convolutions round up."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(16, 16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    pipe = LayeredEditPipeline(**dict(sd1_components, unet=unet))
    assert _edit(pipe, 2 * 9, 2 * 13).shape == (18, 26, 3)  # latent 9×13 → 5×7 → 3×4


def test_sizes_the_vae_cannot_take_are_refused(sd1_components):
    """Found: 100 px was silently shrunk to 96 and the next edit crashed in a numpy broadcast."""
    pipe = LayeredEditPipeline(**sd1_components)
    with pytest.raises(ValueError, match="height: expected a positive multiple of 2"):
        LayeredSession(pipe, EditSettings(height=33, width=32))


def test_t5_prompts_stop_at_pixarts_length_even_without_a_model_max_length(pixart_components):
    """Found: T5 prompts were padded to the tokenizer's 512 (4.3× the work of PixArt's 120), and a
    tokenizer folder without model_max_length raised OverflowError."""
    tokenizer = pixart_components["tokenizer"]
    tokenizer.model_max_length = int(1e30)  # what transformers sets when the folder says nothing
    enc = encode_prompts(["a red circle", ""], tokenizer, pixart_components["text_encoder"], "cpu", t5=True)
    assert enc.hidden.shape[1] == T5_MAX_LENGTH and enc.mask.shape == (2, T5_MAX_LENGTH)
    assert enc.mask[1].sum() < enc.mask[0].sum()


def test_sdxl_zeroes_an_empty_negative_prompt_when_its_folder_says_so(sdxl_components, tmp_path):
    StableDiffusionXLPipeline(**sdxl_components).save_pretrained(tmp_path / "xl")  # force_zeros_for_empty_prompt
    pipe = LayeredEditPipeline.from_pretrained(tmp_path / "xl")
    assert pipe.config.force_zeros_for_empty_prompt
    cond = pipe.encode_prompt(["a red circle"], "", 32, 32, torch.device("cpu"))
    assert cond.hidden[0].abs().max() == 0 and cond.added["text_embeds"][0].abs().max() == 0
    cond = pipe.encode_prompt(["a red circle"], "a blue square", 32, 32, torch.device("cpu"))
    assert cond.hidden[0].abs().max() > 0


def test_an_fp16_vae_that_asks_for_it_decodes_in_float32(sd1_components):
    """SDXL's VAE overflows in fp16 (NaNs on a GPU); its config says force_upcast, as diffusers' own
    pipelines read it: decode (and encode) run in float32 and the VAE is left as it was."""
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(sd1_components["vae"].config, force_upcast=True)
    vae.load_state_dict(sd1_components["vae"].state_dict())
    pipe = LayeredEditPipeline(**dict(sd1_components, vae=vae))
    latents = torch.randn(1, 4, 16, 16)
    pipe.vae.to(torch.float16).to(torch.float32)  # the weights as an fp16 file holds them
    expected = pipe.decode(latents)
    pipe.vae.to(torch.float16)
    np.testing.assert_array_equal(pipe.decode(latents), expected)
    assert pipe.vae.dtype == torch.float16


def test_pixart_mqd_masks_padding_per_segment_without_a_dense_bias(monkeypatch):
    """Found: PixArt's MQD built a dense (B, heads, N, R·T) masked bias (~0.8 GB per call at 1024², 3
    regions). Now the prompts' padding is a per-segment key mask; the result equals the masked reference."""
    from diffusers.models.attention_processor import Attention
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=4, dim_head=8)
    h = w = 8
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[:, 4:] = 1
    labels[5:, :3] = 2
    t = 6
    states = torch.randn(2, 3 * t, 16)
    valid = torch.tensor([[1, 1, 0, 0, 0, 0] * 3, [1, 1, 1, 1, 0, 0] + [1, 1, 1, 0, 0, 0] + [1] * 6], dtype=torch.bool)
    bias = ((~valid).float() * -10000.0)[:, None]  # what PixArt passes: (B, 1, R·T)
    x = torch.randn(2, h * w, 32)
    masks = []
    real = F.scaled_dot_product_attention

    def recording(*args, attn_mask=None, **kwargs):
        masks.append(0 if attn_mask is None else attn_mask.numel())
        return real(*args, attn_mask=attn_mask, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    controller = AttentionController(regions=RegionState(labels, 3, segment_length=t))
    with torch.no_grad():
        out = MultiQueryDisentangledProcessor(controller, "attn2")(attn, x, states, attention_mask=bias)
        q = attn.to_q(x).view(2, -1, 4, 8).transpose(1, 2)
        k = attn.to_k(states).view(2, -1, 4, 8).transpose(1, 2)
        v = attn.to_v(states).view(2, -1, 4, 8).transpose(1, 2)
        expected = region.reference(q.double(), k.double(), v.double(), labels.reshape(-1), t, key_mask=valid)
        expected = attn.to_out[0](expected.float().transpose(1, 2).reshape(2, -1, 32))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    dense = 2 * 4 * h * w * 3 * t
    assert max(masks) < dense / 4, f"a mask of {max(masks)} elements (dense: {dense})"
