"""What every Strata pipeline (and the trainer) shares: prompt encoding, the latent splice, image ↔
tensor conversion and DDIM inversion. One place for each, so the pipelines cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

# PixArt-α's own pipeline pads T5 prompts to 120 tokens (`max_sequence_length`), not to the
# tokenizer's 512: 4.3× less T5 and cross-attention work, and a tokenizer folder without a
# model_max_length (a huge sentinel) still works.
T5_MAX_LENGTH = 120


class UnknownWordsWarning(UserWarning):
    """A prompt has words the model's tokenizer does not know (it can only spell them out)."""


CLOSED_VOCABULARY = 10_000  # fewer tokens than this: a closed word list (the world tokenizer has ~70 words)


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """The words of prompt outside a closed-vocabulary tokenizer's word list (the embedded model's world
    tokenizer knows only the world's words, and spells others out in pieces it was never trained on).
    An open tokenizer (CLIP's or T5's, tens of thousands of pieces) reads any word: nothing is reported."""
    if len(tokenizer) >= CLOSED_VOCABULARY:
        return []
    return [word for word in dict.fromkeys(prompt.lower().replace(",", " ").split())
            if len(tokenizer.tokenize(word)) > 1]


@dataclass
class PromptEncoding:
    """Encoded prompts, one row per prompt. hidden (n, T, C); pooled (n, C') for SDXL's added
    conditioning; mask (n, T) the tokens' padding mask for T5 (PixArt), else None."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def tokenize(tokenizer, prompts: list[str], device: torch.device | str, max_length: int | None = None):
    """Token ids and attention mask, padded to max_length (default: the tokenizer's own)."""
    length = tokenizer.model_max_length if max_length is None else max_length
    return tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt").to(device)


def encode_prompt(tokenizer, text_encoder, prompts: list[str], device: torch.device | str) -> torch.Tensor:
    """(n, T, C) last hidden states of a CLIP text encoder: SD-1.x conditioning, and the trainer's.
    Not under no_grad, so the trainer can train the encoder through it."""
    return text_encoder(tokenize(tokenizer, prompts, device).input_ids)[0]


def encode_prompts(prompts: list[str], tokenizer, text_encoder, device: torch.device | str, tokenizer_2=None,
                   text_encoder_2=None, t5: bool = False) -> PromptEncoding:
    """Each family as its own diffusers pipeline encodes it: SD-1.x (CLIP last hidden states), SDXL
    (both encoders' penultimate hidden states concatenated, the second's pooled projection), PixArt
    (T5 hidden states with their padding mask, at most T5_MAX_LENGTH tokens)."""
    if t5:
        length = min(T5_MAX_LENGTH, tokenizer.model_max_length or T5_MAX_LENGTH)
        tokens = tokenize(tokenizer, prompts, device, length)
        hidden = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        return PromptEncoding(hidden, mask=tokens.attention_mask)
    if text_encoder_2 is not None:
        hiddens, pooled = [], None
        for tok, encoder in ((tokenizer, text_encoder), (tokenizer_2, text_encoder_2)):
            out = encoder(tokenize(tok, prompts, device).input_ids, output_hidden_states=True)
            hiddens.append(out.hidden_states[-2])
            pooled = out[0]
        return PromptEncoding(torch.cat(hiddens, -1), pooled=pooled)
    return PromptEncoding(encode_prompt(tokenizer, text_encoder, prompts, device))


def blend_latents(base: torch.Tensor, top: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`top` where mask is 1, `base` where it is 0 (fractions blend): the one latent splice that BCG,
    replay and the sliding window use. mask broadcasts against both, e.g. (1, 1, h, w)."""
    return base * (1 - mask) + top * mask


def images_to_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) images (or one (B, H, W, 3) array) → float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(list(images))).permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] → uint8 (B, H, W, 3), rounded (the inverse of images_to_tensor
    on uint8 images)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def inverse_scheduler_matches(scheduler: DDIMScheduler, steps: int) -> bool:
    """Does diffusers' DDIMInverseScheduler walk exactly this scheduler's timesteps backwards? It
    steps by a fixed num_train_timesteps // steps, which "linspace" spacing, or a step count that
    does not divide the training steps under "trailing", does not."""
    if scheduler.config.timestep_spacing not in ("leading", "trailing"):
        return False
    forward = scheduler.timesteps.cpu()
    ratio = scheduler.config.num_train_timesteps // steps
    return bool((forward[:-1] - forward[1:] == ratio).all()) and int(forward[-1]) < ratio


@torch.no_grad()
def ddim_inversion(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor,
                   scheduler: DDIMScheduler, steps: int, progress: Callable = iter, batched: bool = False) -> torch.Tensor:
    """Deterministic DDIM inversion of clean latents (1, C, h, w) into the trajectory that
    `scheduler` (already set to `steps`) would denoise back: (steps + 1, C, h, w), entry k the latent
    after k denoising steps, the last the clean latents. batched: latents (B, C, h, w), every row
    inverted at once, trajectory (steps + 1, B, C, h, w). predict(z, t) is the model output (the
    scheduler's prediction type) at timestep t. The first step starts from alpha = 1 (clean).

    diffusers' DDIMInverseScheduler does the stepping where it walks the same timesteps
    (`inverse_scheduler_matches`); elsewhere the same update with the forward schedule's timesteps."""
    timesteps = scheduler.timesteps
    config = dict(scheduler.config, set_alpha_to_one=True)  # the first step starts from the clean latents
    inverse = DDIMInverseScheduler.from_config(config) if inverse_scheduler_matches(scheduler, steps) else None
    if inverse is not None:
        inverse.set_timesteps(steps, device=latents.device)
    alphas = scheduler.alphas_cumprod.to(latents.device)
    trajectory = [None] * steps + [latents if batched else latents[0]]
    z = latents
    for k in progress(range(steps - 1, -1, -1)):
        t = timesteps[k]
        out = predict(z, t)
        if inverse is not None:
            z = inverse.step(out, t, z).prev_sample
        else:
            a_prev = alphas[timesteps[k + 1]] if k + 1 < steps else torch.ones((), device=z.device)
            z = ddim_inverse_step(out, z, a_prev, alphas[t], scheduler.config)
        trajectory[k] = z if batched else z[0]
    return torch.stack(trajectory)


def ddim_inverse_step(out: torch.Tensor, z: torch.Tensor, alpha_from: torch.Tensor, alpha_to: torch.Tensor,
                      config) -> torch.Tensor:
    """One DDIM step from noise level alpha_from up to alpha_to (the update DDIMInverseScheduler.step
    makes, with both levels given instead of derived from a fixed step)."""
    beta = 1 - alpha_from
    if config.prediction_type == "v_prediction":
        x0 = alpha_from.sqrt() * z - beta.sqrt() * out
        eps = alpha_from.sqrt() * out + beta.sqrt() * z
    elif config.prediction_type == "epsilon":
        x0, eps = (z - beta.sqrt() * out) / alpha_from.sqrt(), out
    else:
        raise ValueError(f"scheduler: inversion supports epsilon and v_prediction, got {config.prediction_type!r}")
    if config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return alpha_to.sqrt() * x0 + (1 - alpha_to).sqrt() * eps
