"""Neighbour attention: query group g attends to the key/value groups listed in index[g, :].

A group is a camera view or a video frame. index[g] lists itself, its ring neighbours, a key frame,
the previous frame…; -1 marks an unused slot (a first frame has no previous frame). An optional
blended query q' = (1 − w)·q + w·q̂ is folded in before the product (the query-blended pattern).

Shapes: q, q_hat (B, H, G, Lq, D); k, v (B, H, G, Lk, D); index (G, M) integer; w a float or a
tensor broadcastable to (B, H, G, Lq, 1). Output (B, H, G, Lq, D). Softmax scale defaults to D^-½.
A query whose slots are all -1 gets zeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch paths do not need it
    triton = None


def _blend(q, q_hat, w):
    if q_hat is None:
        return q
    return torch.lerp(q, q_hat.to(q.dtype), w if isinstance(w, float) else w.to(q.dtype))


def reference(q, k, v, index, scale=None, q_hat=None, w=0.0):
    """The spec: one group at a time, explicit concatenation and softmax (use float64 in tests)."""
    q = _blend(q, q_hat, w)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros_like(q)
    for g in range(q.shape[2]):
        groups = [int(j) for j in index[g] if j >= 0]
        if not groups:
            continue
        keys = torch.cat([k[:, :, j] for j in groups], dim=2)
        values = torch.cat([v[:, :, j] for j in groups], dim=2)
        weights = torch.softmax(q[:, :, g] @ keys.transpose(-1, -2) * scale, dim=-1)
        out[:, :, g] = weights @ values
    return out


def naive(q, k, v, index, scale=None, q_hat=None, w=0.0):
    """What a user writes today: loop over groups, concatenate, SDPA."""
    q = _blend(q, q_hat, w)
    outs = []
    for g in range(q.shape[2]):
        groups = [int(j) for j in index[g] if j >= 0]
        if not groups:
            outs.append(torch.zeros_like(q[:, :, g]))
            continue
        keys = torch.cat([k[:, :, j] for j in groups], dim=2)
        values = torch.cat([v[:, :, j] for j in groups], dim=2)
        outs.append(F.scaled_dot_product_attention(q[:, :, g], keys, values, scale=scale))
    return torch.stack(outs, dim=2)


def torch_path(q, k, v, index, scale=None, q_hat=None, w=0.0):
    """All groups in one SDPA call on gathered keys (the CPU and fallback path)."""
    q = _blend(q, q_hat, w)
    b, h, g, lq, d = q.shape
    lk = k.shape[3]
    index = index.to(q.device, torch.long)
    m = index.shape[1]
    valid = index >= 0
    safe = index.clamp(min=0)
    # Groups folded into heads: SDPA's fast CPU kernel takes 4-D tensors only (5-D runs ~3× slower).
    keys = k[:, :, safe].reshape(b, h * g, m * lk, d)
    values = v[:, :, safe].reshape(b, h * g, m * lk, d)
    q4 = q.reshape(b, h * g, lq, d)
    if bool(valid.all()):
        return F.scaled_dot_product_attention(q4, keys, values, scale=scale).reshape(b, h, g, lq, d)
    mask = valid[None, :, :, None].expand(h, g, m, lk).reshape(h * g, 1, m * lk)
    out = F.scaled_dot_product_attention(q4, keys, values, attn_mask=mask, scale=scale).reshape(b, h, g, lq, d)
    return torch.where(valid.any(1)[:, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


if triton is not None:

    @triton.jit
    def online_softmax_block(q, kt, vt, col_ok, m_i, l_i, acc):
        """One key block of flash attention in base 2: q is pre-scaled by scale·log2(e); kt (D, N),
        vt (N, D); returns the updated running max, normaliser and accumulator."""
        s = tl.where(col_ok[None, :], tl.dot(q, kt), -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        return m_new, l_i, acc

    @triton.jit
    def _neighbour_fwd(Q, QH, W, K, V, O, IDX, scale_log2,
                       s_qb, s_qh, s_qg, s_qn, s_kb, s_kh, s_kg, s_kn, s_vb, s_vh, s_vg, s_vn,
                       s_ob, s_oh, s_og, s_on, s_wb, s_wh, s_wg, s_wn,
                       H, G, LQ, LK, M, D,
                       HAS_BLEND: tl.constexpr, W_IS_TENSOR: tl.constexpr, W_SCALAR: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_m = tl.program_id(0)
        pid = tl.program_id(1)
        g = pid % G
        h = (pid // G) % H
        b = pid // (G * H)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < LQ
        d_ok = offs_d < D
        q_off = b * s_qb + h * s_qh + g * s_qg + offs_m[:, None] * s_qn + offs_d[None, :]
        q = tl.load(Q + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        if HAS_BLEND:
            q_hat = tl.load(QH + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            if W_IS_TENSOR:
                w = tl.load(W + b * s_wb + h * s_wh + g * s_wg + offs_m * s_wn, mask=row_ok, other=0.0).to(tl.float32)
                q = q + (q_hat - q) * w[:, None]
            else:
                q = q + (q_hat - q) * W_SCALAR
        q = (q * scale_log2).to(K.dtype.element_ty)  # fold the scale and log2(e) into q once
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a fully masked row must not give NaN
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for slot in range(M):
            j = tl.load(IDX + g * M + slot)
            if j >= 0:
                k_base = K + b * s_kb + h * s_kh + j * s_kg
                v_base = V + b * s_vb + h * s_vh + j * s_vg
                for start in range(0, LK, BLOCK_N):
                    cols = start + offs_n
                    col_ok = cols < LK
                    kt = tl.load(k_base + cols[None, :] * s_kn + offs_d[:, None], mask=col_ok[None, :] & d_ok[:, None], other=0.0)
                    vt = tl.load(v_base + cols[:, None] * s_vn + offs_d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                    m_i, l_i, acc = online_softmax_block(q, kt, vt, col_ok, m_i, l_i, acc)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_off = b * s_ob + h * s_oh + g * s_og + offs_m[:, None] * s_on + offs_d[None, :]
        tl.store(O + o_off, out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def triton_path(q, k, v, index, scale=None, q_hat=None, w=0.0, block_m: int = 64, block_n: int = 64):
    """The fused kernel: K/V groups read in place through index, no concatenated copy."""
    if triton is None:
        raise RuntimeError("triton is not installed; use the 'torch' backend")
    b, h, g, lq, d = q.shape
    lk = k.shape[3]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    index = index.to(device=q.device, dtype=torch.int32).contiguous()
    out = torch.empty_like(q)
    scale = d ** -0.5 if scale is None else scale
    has_blend = q_hat is not None
    w_is_tensor = has_blend and torch.is_tensor(w)
    if w_is_tensor:
        w_full = torch.broadcast_to(w.to(torch.float32), (b, h, g, lq, 1))[..., 0]
        w_strides = w_full.stride()
    else:
        w_full, w_strides = q, (0, 0, 0, 0)
    q_hat = q_hat.contiguous() if has_blend else q
    block_d = max(16, triton.next_power_of_2(d))
    block_m = min(block_m, max(16, triton.next_power_of_2(lq)))
    block_n = min(block_n, max(16, triton.next_power_of_2(lk)))
    grid = (triton.cdiv(lq, block_m), b * h * g)
    _neighbour_fwd[grid](q, q_hat, w_full, k, v, out, index, scale * math.log2(math.e),
                         *q.stride()[:4], *k.stride()[:4], *v.stride()[:4], *out.stride()[:4], *w_strides,
                         h, g, lq, lk, index.shape[1], d,
                         HAS_BLEND=has_blend, W_IS_TENSOR=w_is_tensor, W_SCALAR=float(w) if has_blend and not w_is_tensor else 0.0,
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    return out
