"""Render a fitted query field: every view's query map for each recorded layer (what the injection
processors read), and its depth and accumulation (for pictures and checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from formats.cameras import Camera
from qnerf.field import QueryField
from qnerf.fit import by_grid, grid_rays


@dataclass
class RenderedQueries:
    queries: dict[str, torch.Tensor]  # per layer (V, h, w, C), in the model's units
    depth: dict[str, torch.Tensor]  # per layer (V, h, w) z-depth in world units
    accumulation: dict[str, torch.Tensor]  # per layer (V, h, w)


@torch.no_grad()
def render_queries(field: QueryField, cameras: list[Camera], grids: Mapping[str, tuple[int, int]],
                   chunk: int = 8192) -> RenderedQueries:
    """grids: per layer its token grid (h, w); each view's rays go through the token centres."""
    unknown = [name for name in grids if name not in field.layers]
    if unknown:
        raise ValueError(f"grids: layers {unknown} were not fitted (the field has {field.layers})")
    was_training = field.training
    field.eval()
    queries, depth, accumulation = {}, {}, {}
    try:
        for (h, w), names in by_grid(grids).items():  # one render per token grid, a projection per layer
            bundle = grid_rays(field, cameras, (h, w))
            parts = [field.render_rays(bundle[i:i + chunk]) for i in range(0, len(bundle), chunk)]
            embedding = torch.cat([p["embedding"] for p in parts])
            # expected distance along the (unit) ray → z-depth in world units
            distance = torch.cat([p["depth"] for p in parts])[:, 0] / bundle.metadata["directions_norm"][:, 0]
            grid_depth = (distance / field.scale).view(len(cameras), h, w)
            grid_accumulation = torch.cat([p["accumulation"] for p in parts]).view(len(cameras), h, w)
            for name in names:
                queries[name] = field.project(name, embedding).view(len(cameras), h, w, -1)
                depth[name], accumulation[name] = grid_depth.clone(), grid_accumulation.clone()  # one tensor each
    finally:
        field.train(was_training)
    return RenderedQueries(queries, depth, accumulation)
