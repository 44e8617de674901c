"""Fit the query field to the queries recorded in every view.

For each recorded layer the queries form an h × w token map per view; the rays of a layer go through
its token centres (nerfstudio `Cameras`, rescaled from the image size to the token grid, generate them).
The loss is the mean squared distance between projected rendered embeddings and the recorded queries
(normalised per channel), plus nerfstudio's depth loss (DS-NeRF) where a view's depth is known.
A field passed in is trained further (warm start from the previous interval); the fit stops at
`iterations` or `max_seconds`, whichever comes first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.losses import DepthLossType, depth_loss
from tqdm.auto import tqdm

from formats.cameras import Camera
from qnerf.field import FieldConfig, QueryField, head_key


@dataclass(frozen=True)
class FitSettings:
    iterations: int = 300
    max_seconds: float = 10.0
    rays_per_step: int = 512
    lr: float = 1e-2
    depth_weight: float = 1.0  # DS-NeRF; at 0.05 held-out views were twice as far off (tests/test_qnerf.py)
    depth_sigma: float = 0.01  # in the field's frame (cameras about 1 unit from the centre)
    seed: int = 0
    progress: bool = False


@dataclass
class FitResult:
    field: QueryField
    seconds: float
    iterations: int
    loss: float  # the query loss (normalised units) of the last iterations, averaged
    history: list[float] = field(default_factory=list)


@dataclass
class _Rays:
    bundle: RayBundle  # (R,) flattened over every layer, view and token
    layer: torch.Tensor  # (R,) index into the layer list
    target: list[torch.Tensor]  # per layer (R_layer, C) normalised queries
    row: torch.Tensor  # (R,) the ray's row in its layer's target
    depth: torch.Tensor  # (R, 1) z-depth in the field's frame, nan where unknown


def token_depth(depth: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A view's z-depth at the token centres of an h × w grid (the nearest pixel)."""
    height, width = depth.shape
    h, w = grid
    rows = np.minimum(((np.arange(h) + 0.5) * height / h).astype(int), height - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * width / w).astype(int), width - 1)
    return depth[np.ix_(rows, cols)]


def check_queries(queries: Mapping[str, torch.Tensor], n_views: int) -> dict[str, tuple[int, int]]:
    grids = {}
    for name, q in queries.items():
        if q.dim() != 4 or q.shape[0] != n_views:
            raise ValueError(f"queries[{name!r}]: expected (views={n_views}, h, w, channels), got {tuple(q.shape)}")
        if not torch.isfinite(q).all():
            raise ValueError(f"queries[{name!r}]: not finite")
        grids[name] = (q.shape[1], q.shape[2])
    if not grids:
        raise ValueError("queries: expected at least one recorded layer")
    return grids


def _rays(field_: QueryField, cameras: list[Camera], queries: Mapping[str, torch.Tensor],
          depths: list[np.ndarray | None] | None) -> _Rays:
    bundles, layers, rows, targets, ray_depths = [], [], [], [], []
    for index, (name, q) in enumerate(queries.items()):
        grid = (q.shape[1], q.shape[2])
        ns = field_.nerfstudio_cameras(cameras, grid)
        for view in range(len(cameras)):
            bundles.append(ns.generate_rays(camera_indices=view).flatten())
            z = np.full(grid, np.nan) if depths is None or depths[view] is None else token_depth(depths[view], grid)
            ray_depths.append(torch.as_tensor(np.where(np.isfinite(z), z * float(field_.scale), np.nan),
                                              dtype=torch.float32).reshape(-1, 1))
        n = len(cameras) * grid[0] * grid[1]
        layers.append(torch.full((n,), index, dtype=torch.long))
        rows.append(torch.arange(n))
        targets.append(field_.normalise(name, q.reshape(n, -1).float()))
    bundle = RayBundle(origins=torch.cat([b.origins for b in bundles]),
                       directions=torch.cat([b.directions for b in bundles]),
                       pixel_area=torch.cat([b.pixel_area for b in bundles]),
                       camera_indices=torch.cat([b.camera_indices for b in bundles]),
                       metadata={"directions_norm": torch.cat([b.metadata["directions_norm"] for b in bundles])})
    return _Rays(bundle, torch.cat(layers), targets, torch.cat(rows), torch.cat(ray_depths))


def query_loss(field_: QueryField, rays: _Rays, pick: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the picked rays, each layer through its own head."""
    total = rendered.new_zeros(())
    for index, name in enumerate(field_.layers):
        mine = rays.layer[pick] == index
        if mine.any():
            predicted = field_.heads[head_key(name)](rendered[mine])
            total = total + ((predicted - rays.target[index][rays.row[pick][mine]]) ** 2).mean(-1).sum()
    return total / pick.numel()


def fit_queries(queries: Mapping[str, torch.Tensor], cameras: list[Camera],
                depths: list[np.ndarray | None] | None = None, field: QueryField | None = None,
                settings: FitSettings = FitSettings(), config: FieldConfig = FieldConfig()) -> FitResult:
    """queries: per recorded layer, (V, h, w, C) — the queries of every view on its token grid, in the
    order of cameras; depths: per view an (H, W) z-depth (inf or nan where unknown) or None.
    field: a field from an earlier interval to train further (warm start), or None for a new one.
    """
    if len(cameras) < 2:
        raise ValueError(f"cameras: expected at least 2 views, got {len(cameras)}")
    check_queries(queries, len(cameras))
    if depths is not None and len(depths) != len(cameras):
        raise ValueError(f"depths: expected one per view ({len(cameras)}), got {len(depths)}")
    dims = {name: int(q.shape[-1]) for name, q in queries.items()}
    if field is not None and field.layer_dims() != dims:
        raise ValueError(f"field: recorded layers {field.layer_dims()} differ from the queries' {dims}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    grad_mode = torch.is_grad_enabled()
    torch.set_grad_enabled(True)  # pipelines call this from inside their no_grad __call__
    try:
        if field is None:
            field = QueryField(dims, config)
            field.set_frame(cameras)
        for name, q in queries.items():
            field.set_statistics(name, q)
        rays = _rays(field, cameras, queries, depths)
        optimiser = torch.optim.Adam(field.parameters(), lr=settings.lr, eps=1e-15)
        field.train()
        n_rays = rays.layer.numel()
        history: list[float] = []
        start = time.perf_counter()
        bar = tqdm(total=settings.iterations, desc="QNeRF fit", disable=not settings.progress, leave=False)
        iteration = 0
        while iteration < settings.iterations and time.perf_counter() - start < settings.max_seconds:
            pick = torch.randint(n_rays, (min(settings.rays_per_step, n_rays),))
            out = field.render_rays(rays.bundle[pick])
            loss = query_loss(field, rays, pick, out["embedding"])
            history.append(float(loss.detach()))
            known = torch.isfinite(rays.depth[pick, 0])
            if settings.depth_weight > 0 and known.any():
                bundle = rays.bundle[pick][known]
                loss = loss + settings.depth_weight * depth_loss(
                    out["weights"][known], out["samples"][known], rays.depth[pick][known], out["depth"][known],
                    torch.tensor(settings.depth_sigma), bundle.metadata["directions_norm"], is_euclidean=False,
                    depth_loss_type=DepthLossType.DS_NERF)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            iteration += 1
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        bar.close()
        field.eval()
    finally:
        torch.random.set_rng_state(generator_state)
        torch.set_grad_enabled(grad_mode)
    tail = history[-max(1, len(history) // 10):]
    return FitResult(field, time.perf_counter() - start, iteration, float(np.mean(tail)) if tail else math.nan, history)
