"""Overlap sync, shared by the driving and multi-view pipelines: where two views see the same surface,
their clean-latent estimates are averaged after a DDIM step (synchronised Tweedie estimates, as
SyncTweedies does for joint diffusion), so the views agree on what neither control map says.

Links come from `formats.projection.depth_correspondences` on the latent grid; `link_tensors` packs
them for `sync_overlaps`, and a pipeline's step becomes
    latents += sqrt(ᾱ_prev) · (sync_overlaps(x̂₀, *links) − x̂₀)
(the same DDIM step taken from the synchronised estimate). `sync_decoded` does the averaging on the
decoded images instead, where the links are pixel-exact (a latent cell mixes the surfaces of its
pixels), and carries the change back through the encoder."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from formats.cameras import Camera
from formats.projection import depth_correspondences, grid_depth, scaled_camera


def depth_links(cameras: list[Camera], depths: list[np.ndarray | None], size: tuple[int, int],
                neighbours: list[list[int]], edge_tolerance: float | None = 0.1) -> list:
    """Links between the views' latent cells, from each view's z-depth at full size (None: unknown, that
    view is linked to nothing): the cameras and depths are read on the (height, width) = size latent
    grid (`grid_depth`, cells on a depth edge left out: they mix two surfaces) and matched by
    `depth_correspondences`. Returns (source row, target row, seen, where) for `link_tensors`."""
    height, width = size
    grid = [scaled_camera(c, width, height) for c in cameras]
    grid_depths = [None if d is None else grid_depth(d, (width, height), edge_tolerance) for d in depths]
    return [(a, b, seen, where) for b, view in enumerate(depth_correspondences(grid, grid_depths, neighbours))
            for a, seen, where in view]


def link_tensors(links, size: tuple[int, int], device, dtype) -> tuple:
    """links: (source row, target row, seen (h, w) bool, where (h, w, 2) source-grid coordinates) for each
    pair of latent rows; size: (height, width) of the latent grid. Returns source rows (L,), target rows
    (L,), sampling grids (L, h, w, 2) for `F.grid_sample` and masks (L, 1, h, w) of the links that see
    anything, or () when none does."""
    height, width = size
    kept = [(a, b, seen, where) for a, b, seen, where in links if seen.any()]
    if not kept:
        return ()
    sources, targets, seen, where = zip(*kept)
    grids = np.stack(where) / np.array([width, height]) * 2 - 1
    return (torch.tensor(sources, device=device), torch.tensor(targets, device=device),
            torch.from_numpy(grids).to(device, dtype), torch.from_numpy(np.stack(seen)[:, None]).to(device, dtype))


def sync_overlaps(estimate: torch.Tensor, sources=None, targets=None, grids=None, masks=None) -> torch.Tensor:
    """Each row's cells that neighbouring rows also see, averaged with what those rows hold there
    (bilinear samples at the linked positions): synchronised estimates. No links: unchanged."""
    if sources is None:
        return estimate
    warped = F.grid_sample(estimate[sources], grids, mode="bilinear", padding_mode="border", align_corners=False)
    total = estimate.index_add(0, targets, warped * masks)
    count = torch.ones_like(estimate[:, :1]).index_add(0, targets, masks)
    return total / count


def sync_decoded(estimate: torch.Tensor, vae, links=()) -> torch.Tensor:
    """Clean-latent estimates (B, C, h, w) synchronised in image space: decoded, averaged at the linked
    pixels (`sync_overlaps` with links on the image grid), and the change carried back through the
    encoder: x̂₀ + E(sync(D(x̂₀))) − E(D(x̂₀)) (E the posterior mode), so that the VAE's own round-trip
    error does not enter. No links: unchanged."""
    if not links:
        return estimate
    scale = vae.config.scaling_factor
    images = vae.decode(estimate.to(vae.dtype) / scale).sample
    synced = sync_overlaps(images, *links)
    change = vae.encode(torch.cat([synced, images])).latent_dist.mode() * scale
    after, before = change.chunk(2)
    return estimate + (after - before).to(estimate.dtype)
