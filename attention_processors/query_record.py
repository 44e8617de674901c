"""Query recording: the self-attention queries of chosen layers, per view, kept in the controller.

QNeRF (Patashnik et al. 2024) fits its field to these. A layer's queries are recorded as the
processor computes them, (batch, tokens, heads·D) after `to_q` (and its norm); with
`keep_graph` (the guidance mode) they stay attached to the autograd graph, so a loss on them
reaches the latent.

The batch holds the views of each classifier-free-guidance branch in order (branch-major: row
b·V + v is view v of branch b); `to_views` turns a layer's record into what the field is fitted to —
per view its token map, the branches' channels side by side — and `from_views` turns rendered maps
back into the batch's rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from attention_processors.tokens import token_grid

_UNET_SELF = re.compile(r"^up_blocks\.(\d+)\.attentions\.\d+\.transformer_blocks\.\d+\.attn1\.processor$")
_TRANSFORMER_SELF = re.compile(r"^transformer_blocks\.(\d+)\.attn1\.processor$")


def default_query_layers(model, levels: int = 2) -> list[str]:
    """The self-attention layers QNeRF records by default: on a UNet, every one of the up blocks at the
    `levels` highest token resolutions (the last up blocks that have attention); on a transformer
    (PixArt, DiT: one token resolution), the last half of its blocks."""
    names = list(model.attn_processors)
    unet = {}
    for name in names:
        m = _UNET_SELF.match(name)
        if m:
            unet.setdefault(int(m.group(1)), []).append(name)
    if unet:
        return [n for block in sorted(unet)[-levels:] for n in unet[block]]
    blocks = [(int(m.group(1)), n) for n in names if (m := _TRANSFORMER_SELF.match(n))]
    if blocks:
        blocks.sort()
        return [n for _, n in blocks[len(blocks) // 2:]]
    raise ValueError("model: no self-attention layers found to record queries from")


@dataclass
class QueryState:
    """Recording and injection of self-attention queries for one call.

    layers: install names of the recorded (and injected) layers; recording: store each listed layer's
    queries as it runs; keep_graph: keep them on the autograd graph (guidance); recorded: name →
    (batch, N, C); rendered: name → (batch, N, C) the field's queries for the current rows;
    mode: None, "blend" or "guidance"; weight: w of the blend, q' = (1 − w)·q + w·q̂."""

    layers: tuple[str, ...]
    recording: bool = False
    keep_graph: bool = False
    recorded: dict[str, torch.Tensor] = field(default_factory=dict)
    rendered: dict[str, torch.Tensor] = field(default_factory=dict)
    mode: str | None = None
    weight: float = 0.5

    def __post_init__(self):
        self.layers = tuple(self.layers)
        if not self.layers:
            raise ValueError("layers: expected at least one layer to record")
        if self.mode not in (None, "blend", "guidance"):
            raise ValueError(f"mode: expected None, 'blend' or 'guidance', got {self.mode!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight: expected a blend weight in [0, 1], got {self.weight!r}")

    def observe(self, name: str, queries: torch.Tensor) -> None:
        if self.recording and name in self.layers:
            self.recorded[name] = queries if self.keep_graph else queries.detach()

    def blend_target(self, name: str) -> torch.Tensor | None:
        """The rendered queries a blend layer mixes in, or None."""
        return self.rendered.get(name) if self.mode == "blend" else None


def to_views(queries: torch.Tensor, n_views: int, latent_size: tuple[int, int]) -> torch.Tensor:
    """(branches·V, N, C) → (V, h, w, branches·C): each view's token map, branches side by side."""
    batch, n_tokens, channels = queries.shape
    if batch % n_views:
        raise ValueError(f"queries: {batch} rows are not whole branches of {n_views} views")
    h, w = token_grid(latent_size, n_tokens)
    branches = batch // n_views
    return queries.view(branches, n_views, h, w, channels).permute(1, 2, 3, 0, 4).reshape(n_views, h, w, -1)


def from_views(maps: torch.Tensor, branches: int) -> torch.Tensor:
    """(V, h, w, branches·C) → (branches·V, h·w, C), the inverse of `to_views`."""
    n_views, h, w, channels = maps.shape
    if channels % branches:
        raise ValueError(f"maps: {channels} channels are not {branches} branches")
    return maps.view(n_views, h * w, branches, channels // branches).permute(2, 0, 1, 3).reshape(branches * n_views, h * w, -1)
