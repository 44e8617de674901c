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
