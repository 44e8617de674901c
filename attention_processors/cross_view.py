"""Self-attention across cameras (and frames): each view's tokens attend to their own view's tokens and
to those of the groups its index lists — its ring neighbours in the same frame, and, with
`temporal.frame_index`, the key frame and the previous frame of the same camera. One call of
`kernels.neighbour_attention` per layer: keys and values are read in place, never concatenated.

The batch holds the groups of each classifier-free-guidance branch in order (branch-major): rows
b·G … b·G + G − 1 are the G groups (frame-major: frame f, view v is group f·V + v). Parameter-free by
default (extended attention: the output is the attention over the listed groups); with a projection
(a zero-initialised linear layer per attention layer), the output is the layer's plain self-attention
plus the projection of the extended attention, so an untrained projection leaves the model as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from attention_processors.controller import AttentionController
from attention_processors.tokens import enter_layer, leave_layer
from kernels import neighbour_attention


def ring_neighbours(n_views: int, reach: int = 1) -> list[list[int]]:
    """Per view of a camera ring (listed in ring order, as a rig is), its neighbours: the `reach`
    views on each side, each once and never itself (a 2-camera rig: the other camera)."""
    if n_views < 1:
        raise ValueError(f"n_views: expected at least 1 camera, got {n_views}")
    if isinstance(reach, bool) or not isinstance(reach, int) or reach < 1:
        raise ValueError(f"reach: expected at least 1 camera on each side, got {reach!r}")
    out = []
    for v in range(n_views):
        around = [(v + k) % n_views for k in range(1, reach + 1)] + [(v - k) % n_views for k in range(1, reach + 1)]
        out.append([u for u in dict.fromkeys(around) if u != v])
    return out


def zero_projection(dim: int) -> nn.Linear:
    """An output projection that starts at zero (the optional trainable part of cross-view attention)."""
    projection = nn.Linear(dim, dim)
    nn.init.zeros_(projection.weight)
    nn.init.zeros_(projection.bias)
    return projection


class CrossViewProjections(ModelMixin, ConfigMixin):
    """The trainable part of cross-view attention: one zero-initialised output projection per
    self-attention layer of a UNet, keyed by the layer's install name (`for_model` builds it for a
    model; `training.train --stage crossview` trains it; `save_pretrained` / `from_pretrained` as any
    diffusers model). `as_dict()` is what `ViewState.projections` takes."""

    @register_to_config
    def __init__(self, layers: list[str], dims: list[int]):
        super().__init__()
        if len(layers) != len(dims) or len(set(layers)) != len(layers):
            raise ValueError(f"layers, dims: expected distinct layer names, one width each; got {len(layers)} "
                             f"names ({len(set(layers))} distinct) and {len(dims)} widths")
        self.projections = nn.ModuleList(zero_projection(d) for d in dims)

    @staticmethod
    def layers_of(model) -> dict[str, int]:
        """Every self-attention layer of `model` (a UNet) by install name, with its width."""
        return {f"{name}.processor": module.to_v.out_features for name, module in model.named_modules()
                if isinstance(module, Attention) and not module.is_cross_attention}

    @classmethod
    def for_model(cls, model) -> "CrossViewProjections":
        """Zero projections for every self-attention layer of `model` (a UNet), as installed by name."""
        layers = cls.layers_of(model)
        if not layers:
            raise ValueError(f"model: {type(model).__name__} has no self-attention layer to project")
        return cls(list(layers), list(layers.values()))

    def fits(self, model) -> bool:
        """Whether these projections were made for `model`'s self-attention layers (names and widths)."""
        return dict(zip(self.config.layers, self.config.dims)) == self.layers_of(model)

    def as_dict(self) -> dict[str, nn.Module]:
        return dict(zip(self.config.layers, self.projections))


@dataclass
class ViewState:
    """Cross-view (and temporal) attention's state for one call. index: (G, M) long, the groups each
    group attends to (itself first; −1 marks an unused slot); projections: per layer install name, an
    optional projection (see the module docstring)."""

    index: torch.Tensor
    projections: dict[str, nn.Module] = field(default_factory=dict)

    def __post_init__(self):
        if self.index.dim() != 2 or self.index.dtype != torch.long:
            raise ValueError(f"index: expected a (groups, slots) long tensor, got {tuple(self.index.shape)} "
                             f"{self.index.dtype}")

    @property
    def groups(self) -> int:
        return self.index.shape[0]


class CrossViewProcessor:
    def __init__(self, controller: AttentionController, name: str, fallback=None):
        """name: the layer's install name (its projection's key); fallback: the processor this one
        replaced, which runs cross-attention and calls without views."""
        self.controller = controller
        self.name = name
        self.fallback = fallback if fallback is not None else AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        views = self.controller.views
        if views is None or encoder_hidden_states is not None or attention_mask is not None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        hidden_states, residual, shape = enter_layer(attn, hidden_states, temb)
        batch, n_tokens, _ = hidden_states.shape
        groups = views.groups
        if batch % groups:
            raise ValueError(f"hidden_states: a batch of {batch} rows is not whole branches of {groups} groups")
        heads = attn.heads

        def split(x):  # (batch, N, heads·D) → (branches, heads, groups, N, D)
            d = x.shape[-1] // heads
            return x.view(batch // groups, groups, n_tokens, heads, d).permute(0, 3, 1, 2, 4)
        query, key, value = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        extended = neighbour_attention(query, key, value, views.index.to(query.device))

        def merge(x):  # (branches, heads, groups, N, D) → (batch, N, heads·D)
            return x.permute(0, 2, 3, 1, 4).reshape(batch, n_tokens, -1).to(query.dtype)
        out = merge(extended)
        projection = views.projections.get(self.name)
        if projection is not None:  # plain self-attention plus the (trainable) cross-view part
            own = torch.arange(groups, device=query.device)[:, None]
            out = merge(neighbour_attention(query, key, value, own)) + projection(out)
        return leave_layer(attn, out, residual, shape)
