"""Temporal attention (DrivingDiffusion's sparse-causal pattern): a frame's view also attends to the
key frame and the previous frame of the same camera. It runs through the cross-view processor: this
module builds the index of every (frame, view) group — itself, its ring neighbours in the same frame
(cross_view) and its temporal references (temporal) — for `kernels.neighbour_attention`."""

from __future__ import annotations

import torch

from attention_processors.cross_view import ring_neighbours


def frame_index(n_frames: int, n_views: int, cross_view: bool = True, temporal: bool = True,
                key_frame: int = 0, reach: int = 1) -> torch.Tensor:
    """(n_frames·n_views, M) long on the CPU: group f·V + v lists itself, then its ring neighbours in
    frame f (cross_view; the `reach` cameras on each side), then (temporal) the key frame's and the
    previous frame's view v (each once, never itself); −1 pads the rows to one length."""
    if n_frames < 1 or n_views < 1:
        raise ValueError(f"n_frames, n_views: expected at least 1 each, got {n_frames}, {n_views}")
    if not 0 <= key_frame < n_frames:
        raise ValueError(f"key_frame: expected a frame in 0..{n_frames - 1}, got {key_frame}")
    neighbours = ring_neighbours(n_views, reach) if cross_view else [[] for _ in range(n_views)]
    rows = []
    for f in range(n_frames):
        for v in range(n_views):
            row = [f * n_views + v] + [f * n_views + u for u in neighbours[v]]
            if temporal:
                row += [r * n_views + v for r in dict.fromkeys((key_frame, f - 1)) if 0 <= r != f]
            rows.append(list(dict.fromkeys(row)))
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)
