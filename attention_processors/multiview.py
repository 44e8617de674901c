"""The self-attention processor of multi-view editing: one processor per layer reads the three
mechanisms from the controller — query recording (`query_record`), query injection (`query_inject`,
blend mode inside the layer) and source key/value injection (`source_kv`) — and, for the extended
attention baseline, `controller.views` (each view also reads its neighbours, `cross_view`).

Cross-attention, masked calls and calls with none of the mechanisms active run the processor this one
replaced, so installing it changes nothing until the pipeline turns a mechanism on.
"""

from __future__ import annotations

import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attention_processors.controller import AttentionController
from attention_processors.tokens import enter_layer, leave_layer
from kernels import blended_attention, neighbour_attention


class MultiViewProcessor:
    def __init__(self, controller: AttentionController, name: str, fallback=None):
        self.controller = controller
        self.name = name
        self.fallback = fallback if fallback is not None else AttnProcessor2_0()

    def _active(self) -> bool:
        c = self.controller
        return ((c.queries is not None and self.name in c.queries.layers)
                or (c.source_kv is not None and c.source_kv.mode is not None and self.name in c.source_kv.layers)
                or c.views is not None)

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or not self._active():
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        c = self.controller
        hidden_states, residual, shape = enter_layer(attn, hidden_states, temb)
        batch, n_tokens, _ = hidden_states.shape
        heads = attn.heads
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = query.shape[-1] // heads

        def split(x):  # (batch, N, heads·D) → (batch, heads, N, D)
            return x.view(x.shape[0], -1, heads, head_dim).transpose(1, 2)

        def merge(x):  # (batch, heads, N, D) → (batch, N, heads·D)
            return x.transpose(1, 2).reshape(x.shape[0], -1, heads * head_dim)
        if attn.norm_q is not None:  # recorded queries are the ones attention uses: after the norm
            query, key = merge(attn.norm_q(split(query))), merge(attn.norm_k(split(key)))
        # the source views' own pass (recording their keys and values) takes no part in query injection
        queries = c.queries if c.source_kv is None or c.source_kv.mode != "record" else None
        if queries is not None:
            queries.observe(self.name, query)
        if c.source_kv is not None:
            key, value = c.source_kv.exchange(self.name, c.step, key, value)
        target = queries.blend_target(self.name) if queries is not None else None
        if target is not None and target.shape != query.shape:
            raise ValueError(f"{self.name}: rendered queries {tuple(target.shape)} do not match {tuple(query.shape)}")
        q, k, v = split(query), split(key), split(value)
        q_hat = split(target.to(query.dtype)) if target is not None else None
        w = queries.weight if target is not None else 0.0
        if c.views is not None and queries is c.queries:  # extended attention across views (the baseline), optionally blended
            groups = c.views.groups
            if batch % groups:
                raise ValueError(f"hidden_states: {batch} rows are not whole branches of {groups} views")

            def grouped(x):  # (batch, heads, N, D) → (branches, heads, groups, N, D)
                return x.view(batch // groups, groups, heads, -1, head_dim).transpose(1, 2)
            out = neighbour_attention(grouped(q), grouped(k), grouped(v), c.views.index.to(q.device),
                                      q_hat=grouped(q_hat) if q_hat is not None else None, w=w)
            out = out.transpose(1, 2).reshape(batch, heads, n_tokens, head_dim)
        elif q_hat is not None:
            out = blended_attention(q, k, v, q_hat, w)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return leave_layer(attn, merge(out).to(query.dtype), residual, shape)
