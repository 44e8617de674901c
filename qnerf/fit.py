"""Fit the query field to the queries recorded in every view.

For each recorded layer the queries form an h × w token map per view; the rays of a layer go through
its token centres (nerfstudio `Cameras`, rescaled from the image size to the token grid, generate them).
Layers on the same token grid share their rays: a ray is rendered once and every layer of its grid reads
the one embedding through its own head (a UNet's up block has several self-attention layers at one
resolution, so a ray per grid rather than per layer halves the rays a fit renders for the same
supervision; benchmarks/RESULTS.md, "Nineteenth session").
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
    # a fit past ~100 steps learns each view's own detail and renders other cameras worse (on queries
    # recorded from the embedded model: 0.72 of their variance off at a held-out view after 76 steps, 0.85
    # after 224; benchmarks/RESULTS.md, "Nineteenth session"); a warm start trains on from there
    iterations: int = 100
    max_seconds: float = 4.0
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
    bundle: RayBundle  # (R,) flattened over every token grid, view and token
    grid: torch.Tensor  # (R,) index into layers_of
    layers_of: list[list[str]]  # per token grid, the recorded layers on it (they share its rays)
    target: dict[str, torch.Tensor]  # per layer (R_grid, C) normalised queries
    row: torch.Tensor  # (R,) the ray's row in its grid's targets
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


def by_grid(grids: Mapping[str, tuple[int, int]]) -> dict[tuple[int, int], list[str]]:
    """The layers on each token grid: one ray serves every layer of its grid (one embedding, a head each)."""
    out: dict[tuple[int, int], list[str]] = {}
    for name, grid in grids.items():
        out.setdefault(tuple(grid), []).append(name)
    return out


def cat_rays(bundles: list[RayBundle]) -> RayBundle:
    return RayBundle(origins=torch.cat([b.origins for b in bundles]),
                     directions=torch.cat([b.directions for b in bundles]),
                     pixel_area=torch.cat([b.pixel_area for b in bundles]),
                     camera_indices=torch.cat([b.camera_indices for b in bundles]),
                     metadata={"directions_norm": torch.cat([b.metadata["directions_norm"] for b in bundles])})


def grid_rays(field_: QueryField, cameras: list[Camera], grid: tuple[int, int]) -> RayBundle:
    """The rays through every view's token centres on an h × w grid, view-major then row-major."""
    ns = field_.nerfstudio_cameras(cameras, grid)
    return cat_rays([ns.generate_rays(camera_indices=view).flatten() for view in range(len(cameras))])


def _rays(field_: QueryField, cameras: list[Camera], queries: Mapping[str, torch.Tensor],
          depths: list[np.ndarray | None] | None) -> _Rays:
    bundles, grid_index, rows, targets, ray_depths = [], [], [], {}, []
    groups = by_grid({name: (q.shape[1], q.shape[2]) for name, q in queries.items()})
    for index, (grid, names) in enumerate(groups.items()):
        bundles.append(grid_rays(field_, cameras, grid))
        for view in range(len(cameras)):
            z = np.full(grid, np.nan) if depths is None or depths[view] is None else token_depth(depths[view], grid)
            ray_depths.append(torch.as_tensor(np.where(np.isfinite(z), z * float(field_.scale), np.nan),
                                              dtype=torch.float32).reshape(-1, 1))
        n = len(cameras) * grid[0] * grid[1]
        grid_index.append(torch.full((n,), index, dtype=torch.long))
        rows.append(torch.arange(n))
        for name in names:
            targets[name] = field_.normalise(name, queries[name].reshape(n, -1).float())
    rays = _Rays(cat_rays(bundles), torch.cat(grid_index), list(groups.values()), targets, torch.cat(rows),
                 torch.cat(ray_depths))
    if rays.depth.shape[0] != rays.grid.numel():
        raise AssertionError(f"{rays.depth.shape[0]} ray depths for {rays.grid.numel()} rays")
    return rays


def query_loss(field_: QueryField, rays: _Rays, pick: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the picked rays and the layers of each ray's grid, each layer through its
    own head."""
    total, count = rendered.new_zeros(()), 0
    for index, names in enumerate(rays.layers_of):
        mine = rays.grid[pick] == index
        if mine.any():
            embedding, row = rendered[mine], rays.row[pick][mine]
            for name in names:
                predicted = field_.heads[head_key(name)](embedding)
                total = total + ((predicted - rays.target[name][row]) ** 2).mean(-1).sum()
            count += int(mine.sum()) * len(names)
    return total / max(count, 1)


def fit_queries(queries: Mapping[str, torch.Tensor], cameras: list[Camera],
                depths: list[np.ndarray | None] | None = None, field: QueryField | None = None,
                settings: FitSettings = FitSettings(), config: FieldConfig = FieldConfig()) -> FitResult:
    """queries: per recorded layer, (V, h, w, C) — the queries of every view on its token grid, in the
    order of cameras; depths: per view an (H, W) z-depth (inf or nan where unknown) or None.
    field: a field from an earlier interval to train further (warm start), or None for a new one, made
    from config (its max_res, if None, sized from the queries' token grids: `FieldConfig.for_grids`).
    """
    if len(cameras) < 2:
        raise ValueError(f"cameras: expected at least 2 views, got {len(cameras)}")
    grids = check_queries(queries, len(cameras))
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
            field = QueryField(dims, config.for_grids(grids.values()))
            field.set_frame(cameras)
        for name, q in queries.items():
            field.set_statistics(name, q)
        rays = _rays(field, cameras, queries, depths)
        optimiser = torch.optim.Adam(field.parameters(), lr=settings.lr, eps=1e-15)
        field.train()
        n_rays = rays.grid.numel()
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
