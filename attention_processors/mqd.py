"""Multi-Query Disentanglement: in cross-attention every image token attends only to the prompt
of its region. Self-attention is untouched (it is what blends a new object into the scene).

The pipeline passes the R prompts concatenated as encoder_hidden_states (B, R·T, C); for the
classifier-free-guidance negative half it passes the negative prompt R times; with
`regions.shared_rows` set, those rows attend plainly to one copy (the same result, a fraction of the
work). Keys and values depend only on the encoder states, which are fixed for a pipeline call, so
they are projected once per layer and kept in `regions.keys` under the layer's install name (with
each chunk's segment for the torch path). Region maps and kernel plans come from the controller's
`regions`; the attention itself from `kernels.region_attention`, T5 prompts' padding (PixArt) as a
per-segment key mask there, never a dense (B, heads, N, R·T) bias. Anything else (self-attention, a
call without regions) goes to the processor this one replaced, so a user's
`enable_xformers_memory_efficient_attention()` or other processor keeps working.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attention_processors.controller import AttentionController
from attention_processors.tokens import enter_layer, leave_layer
from attention_processors.regions import CachedKeys
from kernels import backend_for, gather_segments, needs_grad, region_attention
from kernels.region import token_major


class MultiQueryDisentangledProcessor:
    def __init__(self, controller: AttentionController, name: str, fallback=None):
        """name: the layer's install name (its key in `attn_processors`); fallback: the processor
        this one replaced, which runs every call MQD does not change."""
        self.controller = controller
        self.name = name
        self.fallback = fallback if fallback is not None else AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        regions = self.controller.regions
        if encoder_hidden_states is None or regions is None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        hidden_states, residual, shape = enter_layer(attn, hidden_states, temb)
        batch, n_tokens, _ = hidden_states.shape
        if encoder_hidden_states.shape[1] != regions.n_regions * regions.segment_length:
            raise ValueError(f"encoder_hidden_states: expected {regions.n_regions} prompts × {regions.segment_length} "
                             f"tokens, got {encoder_hidden_states.shape[1]} tokens")
        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        token_regions = regions.token_regions(n_tokens, query.device)
        shared = regions.shared_rows if 0 < regions.shared_rows < batch else 0
        cached = self._keys_values(attn, encoder_hidden_states, shared)
        key, value = cached.rest
        key_mask = None
        if attention_mask is not None:  # T5 prompts' padding: PixArt passes (B, 1, R·T), 0 or −10000 (or bool)
            mask = attention_mask.reshape(batch, -1, attention_mask.shape[-1])[:, 0]
            key_mask = mask if mask.dtype == torch.bool else mask > -1
        plan = regions.region_plan(n_tokens, batch - shared, query.device)
        # the fused kernels (triton, cpp) read keys in place; the torch path wants them per chunk
        backend = backend_for(query.device, "region", dtype=query.dtype, needs_grad=needs_grad(query, key, value),
                              key_mask=key_mask is not None)
        segments = self._segments(cached, query[shared:], plan) if backend == "torch" else None
        out = region_attention(query[shared:], key, value, token_regions, regions.segment_length, plan=plan,
                               backend=backend, segments=segments,
                               key_mask=None if key_mask is None else key_mask[shared:])
        if shared:  # the negative prompt, the same in every segment: plain attention on one copy
            first = None if key_mask is None else key_mask[:shared, None, None, :regions.segment_length]
            plain = F.scaled_dot_product_attention(query[:shared], *cached.shared, attn_mask=first)
            out = torch.cat([plain, out.to(plain.dtype)])
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        return leave_layer(attn, out, residual, shape)

    def _segments(self, cached: CachedKeys, query, plan):
        """Each chunk's keys and values for the torch path, gathered once per layer, plan and query
        layout (new keys start without them)."""
        segments, layout = cached.segments, token_major(query)
        if segments is None or segments.plan is not plan or segments.token_major != layout:
            segments = cached.segments = gather_segments(*cached.rest, plan, self.controller.regions.segment_length,
                                                         layout)
        return segments

    def _keys_values(self, attn: Attention, encoder_hidden_states: torch.Tensor, shared: int) -> CachedKeys:
        """This layer's projected keys and values, each (B', heads, T', head_dim), from the cache while
        the encoder states are the same tensor."""
        regions = self.controller.regions
        hit = regions.keys.get(self.name)
        if hit is not None and hit.encoder_states is encoder_hidden_states and hit.shared_rows == shared:
            return hit
        states = encoder_hidden_states
        if attn.norm_cross:
            states = attn.norm_encoder_hidden_states(states)

        def project(x):
            key, value = attn.to_k(x), attn.to_v(x)
            head_dim = key.shape[-1] // attn.heads
            key = key.view(len(x), -1, attn.heads, head_dim).transpose(1, 2)
            value = value.view(len(x), -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            return key, value
        entry = CachedKeys(encoder_hidden_states, shared,
                           project(states[:shared, :regions.segment_length]) if shared else None,
                           project(states[shared:]))
        regions.keys[self.name] = entry
        return entry
