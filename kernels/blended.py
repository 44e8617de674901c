"""Query-blended attention: q' = (1 − w)·q + w·q̂, then ordinary attention, fused in one kernel.

QNeRF's `blend` injection: q̂ are the queries rendered by the query field. Shapes: q, q_hat
(B, H, N, D); k, v (B, H, L, D); w a float or a tensor broadcastable to (B, H, N, 1).
The fused kernel is the neighbour kernel with a single group attending to itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import neighbour


def reference(q, k, v, q_hat, w, scale=None):
    """The spec, step by step (use float64 in tests)."""
    blended = (1 - w) * q + w * q_hat
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(blended @ k.transpose(-1, -2) * scale, -1) @ v


def naive(q, k, v, q_hat, w, scale=None):
    """What a user writes today: blend into a new tensor, then SDPA."""
    return F.scaled_dot_product_attention((1 - w) * q + w * q_hat, k, v, scale=scale)


def torch_path(q, k, v, q_hat, w, scale=None):
    return F.scaled_dot_product_attention(torch.lerp(q, q_hat, w), k, v, scale=scale)


def triton_path(q, k, v, q_hat, w, scale=None):
    one_group = torch.zeros((1, 1), dtype=torch.int32, device=q.device)
    w = w[:, :, None] if torch.is_tensor(w) and w.dim() == 4 else w
    out = neighbour.triton_path(q[:, :, None], k[:, :, None], v[:, :, None], one_group, scale,
                                q_hat=q_hat[:, :, None], w=w)
    return out[:, :, 0]
