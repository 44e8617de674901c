"""The peers a user could pick instead of Strata's kernels, for each pattern, with the pattern
modules' contracts: xformers' memory-efficient attention, FlexAttention, and SDPA with a boolean mask.

- xformers (`memory_efficient_attention` with a block-diagonal bias): region attention runs the
  tokens sorted by region (the plan's order) as one packed batch of sequences, each attending to its
  own segment; neighbour attention packs each group's queries with its gathered neighbour keys (a
  copy). GPU only: xformers has no CPU kernels.
- FlexAttention (`torch.nn.attention.flex_attention`) with a mask_mod over the concatenated keys; the
  region call gets its tokens region-sorted (so whole blocks of the mask are empty or full, as Strata's
  kernels get them). Compiled on CUDA; eager (the unfused reference) elsewhere, for correctness only.
- SDPA with a boolean mask over all keys: what a careful user writes first. A mask drops SDPA on a GPU
  from the flash kernel to the memory-efficient one, with no block skipping.
Rows no region or neighbour covers give zeros, as in the pattern modules.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kernels.neighbour import _blend
from kernels.region import _check, make_plan


def xformers_ops():
    """(xformers.ops, its attn_bias module), or None where xformers does not import."""
    try:
        import xformers.ops as xops
        from xformers.ops.fmha import attn_bias
    except ImportError:
        return None
    return xops, attn_bias


def _memory_efficient(q, k, v, bias, scale):
    """xformers' kernel on (1, M, H, D) packed sequences (the one call the xformers paths make)."""
    xops, _ = xformers_ops()
    return xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)


# ---- xformers

def region_xformers(q, k, v, region, segment_length: int, scale=None, plan=None):
    """Each (batch, region)'s tokens, sorted by region, are one sequence attending to its segment."""
    _, attn_bias = xformers_ops()
    n_regions = _check(q, k, region, segment_length)
    b, h, n, d = q.shape
    plan = plan if plan is not None and not plan.packed else make_plan(region, b, n_regions)
    counts = plan.segment_offsets.diff()
    present = torch.nonzero(counts).flatten()  # segments with at least one token (sequences can't be empty)
    tokens = q.transpose(1, 2).reshape(b * n, h, d)
    queries = tokens.index_select(0, plan.order)[None]

    def segments(x):  # (B, H, R·T, D) → the present segments packed: (1, S·T, H, D)
        x = x.transpose(1, 2).reshape(b * n_regions, segment_length, h, d)
        return x.index_select(0, present).reshape(1, -1, h, d)
    bias = attn_bias.BlockDiagonalMask.from_seqlens(counts[present].tolist(), [segment_length] * len(present))
    out = tokens.new_zeros(b * n, h, d)
    out[plan.order] = _memory_efficient(queries, segments(k), segments(v), bias, scale)[0].to(out.dtype)
    return out.view(b, n, h, d).transpose(1, 2)


def neighbour_xformers(q, k, v, index, scale=None, q_hat=None, w=0.0):
    """Each (batch, group)'s queries are one sequence attending to its neighbours' keys, gathered."""
    _, attn_bias = xformers_ops()
    q = _blend(q, q_hat, w)
    b, h, g, lq, d = q.shape
    lk = k.shape[3]
    lists = [[j for j in row if j >= 0] for row in index.tolist()]
    groups = [i for i in range(g) if lists[i]]
    out = torch.zeros_like(q)
    if not groups:
        return out
    order = torch.tensor([j for i in groups for j in lists[i]], device=q.device)
    queries = q[:, :, groups].permute(0, 2, 3, 1, 4).reshape(1, -1, h, d)
    keys, values = (x.index_select(2, order).permute(0, 2, 3, 1, 4).reshape(1, -1, h, d) for x in (k, v))
    bias = attn_bias.BlockDiagonalMask.from_seqlens([lq] * (b * len(groups)),
                                                    [len(lists[i]) * lk for _ in range(b) for i in groups])
    packed = _memory_efficient(queries, keys, values, bias, scale)
    out[:, :, groups] = packed.reshape(b, len(groups), lq, h, d).permute(0, 3, 1, 2, 4).to(out.dtype)
    return out


def blended_xformers(q, k, v, q_hat, w, scale=None):
    blended = torch.lerp(q, q_hat, w)
    return _memory_efficient(*(x.transpose(1, 2) for x in (blended, k, v)), None, scale).transpose(1, 2)


# ---- FlexAttention

@functools.cache
def _flex(compiled: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    return (torch.compile(flex_attention, dynamic=False) if compiled else flex_attention), create_block_mask


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _flex_call(q, k, v, mask_mod, scale):
    """flex_attention over q (B, H, Lq, D) and k, v (B, H, Lk, D) with mask_mod(b, h, q_idx, kv_idx)."""
    attention, create_block_mask = _flex(q.device.type == "cuda")
    block_mask = create_block_mask(mask_mod, q.shape[0], None, q.shape[2], k.shape[2], device=q.device)
    out = attention(q, k, v, block_mask=block_mask, scale=scale)
    return out


def region_flex(q, k, v, region, segment_length: int, scale=None, plan=None, key_mask=None):
    """Tokens sorted by region per batch row (uncovered ones last, zeroed), then one masked call."""
    _check(q, k, region, segment_length, key_mask)
    b, h, n, d = q.shape
    region = region.expand(b, n) if region.dim() == 1 else region
    key = torch.where(region >= 0, region, torch.iinfo(torch.long).max)
    order = torch.argsort(key, dim=1, stable=True)  # (B, N)
    sorted_region = torch.gather(region, 1, order)
    queries = torch.gather(q, 2, order[:, None, :, None].expand(b, h, n, d))

    def mask_mod(bb, hh, q_idx, kv_idx):
        allowed = sorted_region[bb, q_idx] == kv_idx // segment_length
        return allowed if key_mask is None else allowed & key_mask[bb, kv_idx]
    out_sorted = _flex_call(queries, k, v, mask_mod, scale)
    out_sorted = torch.where((sorted_region >= 0)[:, None, :, None], out_sorted, 0)
    return torch.zeros_like(q).scatter(2, order[:, None, :, None].expand(b, h, n, d), out_sorted.to(q.dtype))


def neighbour_flex(q, k, v, index, scale=None, q_hat=None, w=0.0):
    """Groups concatenated; query group i may see key group j when j is in index[i]."""
    q = _blend(q, q_hat, w)
    b, h, g, lq, d = q.shape
    lk = k.shape[3]
    allowed = torch.zeros(g, g + 1, dtype=torch.bool, device=q.device)  # column g: the unused slots (-1)
    allowed[torch.arange(g, device=q.device).repeat_interleave(index.shape[1]), index.to(q.device).reshape(-1)] = True
    allowed = allowed[:, :g]

    def mask_mod(bb, hh, q_idx, kv_idx):
        return allowed[q_idx // lq, kv_idx // lk]
    out = _flex_call(q.reshape(b, h, g * lq, d), k.reshape(b, h, g * lk, d), v.reshape(b, h, g * lk, d), mask_mod, scale)
    out = out.reshape(b, h, g, lq, d)
    return torch.where(allowed.any(1)[:, None, None], out, 0).to(q.dtype)


def blended_flex(q, k, v, q_hat, w, scale=None):
    return _flex_call(torch.lerp(q, q_hat, w), k, v, lambda bb, hh, q_idx, kv_idx: q_idx >= 0, scale)


# ---- SDPA with a boolean mask

def region_sdpa_mask(q, k, v, region, segment_length: int, scale=None, plan=None, key_mask=None):
    n_regions = _check(q, k, region, segment_length, key_mask)
    b, _, n, _ = q.shape
    region = region.expand(b, n) if region.dim() == 1 else region
    segment = torch.arange(n_regions * segment_length, device=q.device) // segment_length
    allowed = region[:, None, :, None] == segment  # (B, 1, N, R·T)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    return torch.where((region >= 0)[:, None, :, None], out, 0)


def neighbour_sdpa_mask(q, k, v, index, scale=None, q_hat=None, w=0.0):
    q = _blend(q, q_hat, w)
    b, h, g, lq, d = q.shape
    lk = k.shape[3]
    allowed = torch.zeros(g, g + 1, dtype=torch.bool, device=q.device)
    allowed[torch.arange(g, device=q.device).repeat_interleave(index.shape[1]), index.to(q.device).reshape(-1)] = True
    allowed = allowed[:, :g]
    mask = allowed.repeat_interleave(lq, 0).repeat_interleave(lk, 1)  # (G·Lq, G·Lk)
    out = F.scaled_dot_product_attention(q.reshape(b, h, g * lq, d), k.reshape(b, h, g * lk, d),
                                         v.reshape(b, h, g * lk, d), attn_mask=mask, scale=scale)
    return torch.where(allowed.any(1)[:, None, None], out.reshape(b, h, g, lq, d), 0)
