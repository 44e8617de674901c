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

from kernels._triton import check_triton_inputs, split_head_dim, tl, triton

if triton is not None:
    from kernels._triton import online_softmax_block


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
    """What a user writes today: loop over groups, concatenate, SDPA. (index is read once as a list:
    keep it on the CPU, as a user's neighbour lists would be, and no call waits for the GPU.)"""
    q = _blend(q, q_hat, w)
    outs = []
    for g, row in enumerate(index.tolist()):
        groups = [j for j in row if j >= 0]
        if not groups:
            outs.append(torch.zeros_like(q[:, :, g]))
            continue
        keys = torch.cat([k[:, :, j] for j in groups], dim=2)
        values = torch.cat([v[:, :, j] for j in groups], dim=2)
        outs.append(F.scaled_dot_product_attention(q[:, :, g], keys, values, scale=scale))
    return torch.stack(outs, dim=2)


def ring_index(groups: int) -> torch.Tensor:
    """(groups, 3) index of a camera ring: each group, its right and its left neighbour (on the CPU)."""
    g = torch.arange(groups)
    return torch.stack([g, (g + 1) % groups, (g - 1) % groups], 1)


def window_start(index: torch.Tensor) -> int | None:
    """a in [0, G) when every row g of a CPU index lists the groups g + a, …, g + a + M − 1 (mod G), in
    any order and each once (ring neighbours: a = G − 1, M = 3); else None. Attention does not depend on
    the order of its keys, so such rows can read overlapping windows of one padded copy of K/V."""
    if index.device.type != "cpu" or index.dim() != 2 or 0 in index.shape:
        return None
    groups, m = index.shape
    rows = index.tolist()
    if m > groups or min(min(row) for row in rows) < 0:
        return None
    offsets = {frozenset((j - g) % groups for j in row) for g, row in enumerate(rows)}
    if len(offsets) != 1:
        return None
    (window,) = offsets
    if len(window) != m:  # a group listed twice
        return None
    if m == groups:
        return 0
    for a in window:  # the first offset of a cyclic interval is the one whose predecessor is missing
        if (a - 1) % groups not in window:
            return a if window == {(a + i) % groups for i in range(m)} else None
    return None


def _windowed(q, k, v, start: int, m: int, scale):
    """Group g attends to groups start + g … start + g + m − 1 (mod G): one copy of K/V padded to G + m − 1
    groups, and per group a strided window of it (views that overlap, not m copies)."""
    b, h, g, lq, d = q.shape
    lk = k.shape[3]
    order = torch.tensor([(start + j) % g for j in range(g + m - 1)], device=k.device)
    strides = ((g + m - 1) * lk * d, lk * d, d, 1)
    keys, values = (x.index_select(2, order).reshape(b * h, (g + m - 1) * lk, d).as_strided((b * h, g, m * lk, d), strides)
                    for x in (k, v))
    out = F.scaled_dot_product_attention(q.reshape(b * h, g, lq, d), keys, values, scale=scale)
    return out.reshape(b, h, g, lq, d)


def torch_path(q, k, v, index, scale=None, q_hat=None, w=0.0):
    """The CPU and fallback path, in SDPA calls without a mask: on the CPU, when the index is a window
    pattern (window_start), one call on overlapping windows of one padded K/V copy; else on keys gathered
    per group, one call for all rows, or (rows with −1 slots) one per number of groups a row lists."""
    q = _blend(q, q_hat, w)
    b, h, g, lq, d = q.shape
    # Measured on the CPU only (RESULTS.md); on a GPU the gathered path below is the one measured.
    if q.device.type == "cpu" and (start := window_start(index)) is not None:
        return _windowed(q, k.contiguous(), v.contiguous(), start, index.shape[1], scale)
    index = index.to(q.device, torch.long)
    valid = index >= 0
    if bool(valid.all()):
        return _gathered(q, k, v, index, scale)
    # Rows with unused slots: grouped by how many groups they list, each set in one SDPA call without a
    # mask (a masked SDPA falls back to the math kernel: ~3× slower forward and backward on the CPU).
    counts = valid.sum(1)
    compact = index.gather(1, torch.argsort((~valid).to(torch.int8), dim=1, stable=True))  # listed groups first
    outs, order = [], []
    for m in counts.unique().tolist():
        rows = (counts == m).nonzero()[:, 0]
        order.append(rows)
        if m == 0:  # a query that lists no group gets zeros
            outs.append(q.new_zeros(b, h, len(rows), lq, d))
        else:
            outs.append(_gathered(q[:, :, rows], k, v, compact[rows, :m], scale))
    inverse = torch.argsort(torch.cat(order))
    return torch.cat(outs, dim=2)[:, :, inverse]


def _gathered(q, k, v, index, scale):
    """Every query group attends to the groups its row of `index` lists (no −1), in one SDPA call."""
    b, h, g, lq, d = q.shape
    m, lk = index.shape[1], k.shape[3]
    # Groups folded into heads: SDPA's fast CPU kernel takes 4-D tensors only (5-D runs ~3× slower).
    keys = k[:, :, index].reshape(b, h * g, m * lk, d)
    values = v[:, :, index].reshape(b, h * g, m * lk, d)
    out = F.scaled_dot_product_attention(q.reshape(b, h * g, lq, d), keys, values, scale=scale)
    return out.reshape(b, h, g, lq, d)


if triton is not None:

    @triton.jit
    def _load_q(Q, QH, W, q_rows, w_off, offs_d, row_ok, D, scale_log2, dtype,
                HAS_BLEND: tl.constexpr, W_IS_TENSOR: tl.constexpr, W_SCALAR: tl.constexpr):
        """A query tile, blended with q̂ when asked, scaled by scale·log2(e), in the K/V dtype."""
        ok = row_ok[:, None] & (offs_d < D)[None, :]
        q = tl.load(Q + q_rows[:, None] + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
        if HAS_BLEND:
            q_hat = tl.load(QH + q_rows[:, None] + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
            if W_IS_TENSOR:
                w = tl.load(W + w_off, mask=row_ok, other=0.0).to(tl.float32)
                q = q + (q_hat - q) * w[:, None]
            else:
                q = q + (q_hat - q) * W_SCALAR
        return (q * scale_log2).to(dtype)

    @triton.jit
    def _neighbour_fwd(Q, QH, W, K, V, O, IDX, scale_log2, s_wb, s_wh, s_wg, s_wn, H, G, LQ, LK, M, D,
                       HAS_BLEND: tl.constexpr, W_IS_TENSOR: tl.constexpr, W_SCALAR: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
                       SPLIT: tl.constexpr):
        # Q, QH, O are contiguous (B, H, G, LQ, D) and K, V contiguous (B, H, G, LK, D): program pid is the
        # (b, h, g) slab b·H·G + h·G + g of each, and fewer arguments make a cheaper launch.
        pid_m = tl.program_id(0)
        pid = tl.program_id(1)
        g = pid % G
        h = (pid // G) % H
        b = pid // (G * H)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_d2 = BLOCK_D + tl.arange(0, BLOCK_D2)  # the second head-dim tile (unused unless SPLIT)
        row_ok = offs_m < LQ
        d_ok = offs_d < D
        d2_ok = offs_d2 < D
        q_rows = pid * LQ * D + offs_m * D
        w_off = b * s_wb + h * s_wh + g * s_wg + offs_m * s_wn
        dtype = K.dtype.element_ty
        q = _load_q(Q, QH, W, q_rows, w_off, offs_d, row_ok, D, scale_log2, dtype, HAS_BLEND, W_IS_TENSOR, W_SCALAR)
        q2 = tl.zeros([BLOCK_M, BLOCK_D2], dtype)
        if SPLIT:
            q2 = _load_q(Q, QH, W, q_rows, w_off, offs_d2, row_ok, D, scale_log2, dtype, HAS_BLEND, W_IS_TENSOR, W_SCALAR)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a fully masked row must not give NaN
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_D2], tl.float32)
        for slot in range(M):
            j = tl.load(IDX + g * M + slot)
            if j >= 0:
                k_base = K + (pid - g + j) * LK * D
                v_base = V + (pid - g + j) * LK * D
                for start in range(0, LK, BLOCK_N):
                    cols = start + offs_n
                    col_ok = cols < LK
                    kt = tl.load(k_base + cols[None, :] * D + offs_d[:, None], mask=col_ok[None, :] & d_ok[:, None], other=0.0)
                    vt = tl.load(v_base + cols[:, None] * D + offs_d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                    kt2 = kt
                    vt2 = vt
                    if SPLIT:
                        kt2 = tl.load(k_base + cols[None, :] * D + offs_d2[:, None], mask=col_ok[None, :] & d2_ok[:, None], other=0.0)
                        vt2 = tl.load(v_base + cols[:, None] * D + offs_d2[None, :], mask=col_ok[:, None] & d2_ok[None, :], other=0.0)
                    m_i, l_i, acc, acc2 = online_softmax_block(q, kt, vt, q2, kt2, vt2, col_ok[None, :], m_i, l_i, acc, acc2, SPLIT)
        norm = tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_rows = q_rows
        tl.store(O + o_rows[:, None] + offs_d[None, :], (acc / norm).to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        if SPLIT:
            tl.store(O + o_rows[:, None] + offs_d2[None, :], (acc2 / norm).to(O.dtype.element_ty),
                     mask=row_ok[:, None] & d2_ok[None, :])


# Launch configuration (block_m, block_n, num_warps, num_stages) by (padded head dim, the two tiles
# together; queries per group ≥ LONG): the fastest of 24 on an H100, bf16, 6 groups × 1024 and × 4096
# queries, 3 neighbours (benchmarks/attention_configs.py; RESULTS.md). Other GPUs use the same table.
LONG = 2048
CONFIGS = {(48, False): (128, 128, 4, 3), (48, True): (128, 128, 4, 3), (64, False): (64, 64, 4, 3),
           (64, True): (64, 64, 4, 3), (80, False): (64, 64, 4, 3), (80, True): (128, 64, 4, 3),
           (160, False): (128, 64, 8, 3), (160, True): (128, 64, 8, 3)}
DEFAULT_CONFIG = (64, 64, 4, 2)


def triton_path(q, k, v, index, scale=None, q_hat=None, w=0.0, block_m: int | None = None, block_n: int | None = None,
                num_warps: int | None = None, num_stages: int | None = None, split: bool = True):
    """The fused kernel: K/V groups read in place through index, no concatenated copy."""
    check_triton_inputs(q, k, v)
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
    block_d, block_d2 = split_head_dim(d) if split else (max(16, triton.next_power_of_2(d)), 0)
    cfg_m, cfg_n, cfg_warps, cfg_stages = CONFIGS.get((block_d + block_d2, lq >= LONG), DEFAULT_CONFIG)
    block_m = min(block_m or cfg_m, max(16, triton.next_power_of_2(lq)))
    block_n = min(block_n or cfg_n, max(16, triton.next_power_of_2(lk)))
    grid = (triton.cdiv(lq, block_m), b * h * g)
    _neighbour_fwd[grid](q, q_hat, w_full, k, v, out, index, scale * math.log2(math.e), *w_strides,
                         h, g, lq, lk, index.shape[1], d,
                         HAS_BLEND=has_blend, W_IS_TENSOR=w_is_tensor, W_SCALAR=float(w) if has_blend and not w_is_tensor else 0.0,
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_D2=max(16, block_d2), SPLIT=block_d2 > 0,
                         num_warps=num_warps or cfg_warps, num_stages=num_stages or cfg_stages)
    return out
