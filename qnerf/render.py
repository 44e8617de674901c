"""Render a fitted query field: every view's query map for each recorded layer (what the injection
processors read), and its depth and accumulation (for pictures and checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from formats.cameras import Camera
from qnerf.field import QueryField


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
        for name, (h, w) in grids.items():
            ns = field.nerfstudio_cameras(cameras, (h, w))
            per_view_q, per_view_d, per_view_a = [], [], []
            for view in range(len(cameras)):
                bundle = ns.generate_rays(camera_indices=view).flatten()
                parts = [field.render_rays(bundle[i:i + chunk]) for i in range(0, len(bundle), chunk)]
                embedding = torch.cat([p["embedding"] for p in parts])
                # expected distance along the (unit) ray → z-depth in world units
                distance = torch.cat([p["depth"] for p in parts])[:, 0] / bundle.metadata["directions_norm"][:, 0]
                per_view_q.append(field.project(name, embedding).view(h, w, -1))
                per_view_d.append((distance / field.scale).view(h, w))
                per_view_a.append(torch.cat([p["accumulation"] for p in parts]).view(h, w))
            queries[name] = torch.stack(per_view_q)
            depth[name] = torch.stack(per_view_d)
            accumulation[name] = torch.stack(per_view_a)
    finally:
        field.train(was_training)
    return RenderedQueries(queries, depth, accumulation)
