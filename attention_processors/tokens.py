"""Where an attention layer's tokens lie on the latent."""

from __future__ import annotations

import math


def token_grid(latent_size: tuple[int, int], n_tokens: int) -> tuple[int, int]:
    """The (h, w) grid of an attention layer with n_tokens tokens over a latent of latent_size.

    A UNet halves the grid at each level with stride-2 convolutions that round odd sizes up, and a
    patchifying transformer divides it by its patch size, so the grid is found by ceil-halving the
    latent until the count matches (patch sizes 2, 4, 8 included); other patch sizes fall back to the
    aspect ratio. Guessing from the aspect ratio alone fails at odd sizes (33×40 → … → 5×5)."""
    height, width = latent_size
    h, w = height, width
    while h * w > n_tokens:
        h, w = -(-h // 2), -(-w // 2)
    if h * w == n_tokens:
        return h, w
    scale = math.sqrt(height * width / n_tokens)
    h, w = round(height / scale), round(width / scale)
    if h * w != n_tokens:
        raise ValueError(f"cannot place {n_tokens} tokens on a grid over a {height}×{width} latent")
    return h, w


def enter_layer(attn, hidden_states, temb=None):
    """diffusers' processor preamble: the spatial norm, a (B, C, H, W) map to (B, N, C) tokens, the group
    norm. Returns (tokens, residual, the map's shape or None) for `leave_layer`."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = None
    if hidden_states.ndim == 4:
        shape = hidden_states.shape
        batch, channel, height, width = shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, residual, shape


def leave_layer(attn, out, residual, shape):
    """diffusers' processor epilogue: the output projection and dropout, the map's shape back, the
    residual, the output rescaling. out: (B, N, heads·D) attention output."""
    out = attn.to_out[1](attn.to_out[0](out))
    if shape is not None:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor
