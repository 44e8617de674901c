"""Region cross-attention: query token n attends only to the key segment of its region.

Keys are R prompts of T tokens each, concatenated (MQD's per-layer prompts, DrivingDiffusion's
per-class local prompts). region[n] ∈ [0, R) picks the segment; -1 means no region covers the
token, and its output is zero (defined, never NaN).

Shapes: q (B, H, N, D); k, v (B, H, R·T, D); region (N,) shared by the batch, or (B, N).
Output (B, H, N, D).

The torch and triton paths use a `RegionPlan`: tokens sorted by segment and padded to chunks of C
rows that all share one segment, so each chunk is a small dense attention against one T-token
segment (the fused CPU loop, `kernels.region_cpp`, reads the same plan's unpadded token order).
The cost is (N + R·C)·T instead of R·N·T for a masked full product. A plan depends only on the
region map, so a caller that keeps the map across steps builds it once; a caller whose keys stay
the same too (MQD's prompts) also gathers each chunk's segment once (`gather_segments`).

A packed plan (`make_plan(..., packed=True)`, Triton only) pads nothing between segments: chunk i is
sorted rows [i·C, (i+1)·C), which may span several segments; the kernel visits each segment the
chunk touches and masks each row to its own. ⌈N/C⌉ chunks instead of up to ⌈N/C⌉ + R, for a few
programs that read two segments: on a GPU, the difference between one wave of programs and two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels._triton import check_triton_inputs, split_head_dim, tl, triton

if triton is not None:
    from kernels._triton import online_softmax_block

    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # Triton before 3.4
        TensorDescriptor = None


def _check(q, k, region, segment_length, key_mask=None):
    b, _, n, _ = q.shape
    if k.shape[2] % segment_length:
        raise ValueError(f"k: key length {k.shape[2]} is not a multiple of segment_length {segment_length}")
    if region.shape not in ((n,), (b, n)):
        raise ValueError(f"region: expected shape ({n},) or ({b}, {n}), got {tuple(region.shape)}")
    if key_mask is not None:
        if key_mask.shape != (b, k.shape[2]) or key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask: expected a ({b}, {k.shape[2]}) boolean mask, got {tuple(key_mask.shape)} "
                             f"{key_mask.dtype}")
        if not bool(key_mask.view(b, -1, segment_length).any(-1).all()):
            raise ValueError("key_mask: every segment needs at least one key to attend to")
    return k.shape[2] // segment_length


def reference(q, k, v, region, segment_length: int, scale=None, key_mask=None):
    """The spec: a boolean mask over all keys and a masked softmax (use float64 in tests).
    key_mask: (B, R·T) bool, False for keys no query may attend to (a prompt's padding)."""
    n_regions = _check(q, k, region, segment_length, key_mask)
    b, _, n, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    region = region.expand(b, n) if region.dim() == 1 else region
    key_segment = torch.arange(n_regions * segment_length, device=q.device) // segment_length
    allowed = region[:, :, None] == key_segment[None, None, :]  # (B, N, R·T)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :]
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    weights = torch.softmax(scores, -1).nan_to_num(0.0)  # uncovered rows: all -inf → zeros
    return weights @ v


def naive(q, k, v, region, segment_length: int, scale=None):
    """What a careful user writes today: for each batch row and region, gather that region's query rows,
    SDPA on that region's prompt, scatter them back (every query attends once, as in the fused kernels;
    the first sessions' naive path ran every region's attention on every token, R times the work)."""
    n_regions = _check(q, k, region, segment_length)
    b, _, n, _ = q.shape
    region = region.expand(b, n) if region.dim() == 1 else region
    out = torch.zeros_like(q)
    for row in range(b):
        for r in range(n_regions):
            rows = torch.nonzero(region[row] == r).flatten()
            if rows.numel() == 0:
                continue
            seg = slice(r * segment_length, (r + 1) * segment_length)
            out[row, :, rows] = F.scaled_dot_product_attention(q[row:row + 1, :, rows], k[row:row + 1, :, seg],
                                                               v[row:row + 1, :, seg], scale=scale)[0]
    return out


@dataclass(frozen=True)
class RegionPlan:
    """Tokens grouped by segment. rows: (n_chunks·C,) flat token index b·N + n, or -1 for padding;
    chunk_segment: (n_chunks,) flat segment index b·R + r (packed: the chunk's first segment);
    inverse: (B·N,) each token's position in rows, or n_chunks·C (one past the end, a zero row) for
    uncovered tokens. order: (covered tokens,) flat token indices sorted by segment, no padding, and
    segment_offsets (B·R + 1,) where each segment starts in it (the fused CPU path reads these).
    Packed plans only: row_segment (n_chunks·C,) each row's segment (-1: padding) and chunk_last
    (n_chunks,) the chunk's last segment."""

    rows: torch.Tensor
    chunk_segment: torch.Tensor
    inverse: torch.Tensor
    all_covered: bool
    chunk: int
    batch: int
    tokens: int
    n_regions: int
    order: torch.Tensor
    segment_offsets: torch.Tensor
    row_segment: torch.Tensor | None = None
    chunk_last: torch.Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.row_segment is not None


GPU_MAX_CHUNK = 64  # the Triton kernel's best on an H100 (benchmarks/attention_configs.py, RESULTS.md)


def default_chunk(n_tokens: int, n_regions: int, device: torch.device | str = "cpu") -> int:
    """Rows per chunk: large enough for efficient products, small enough that padding each region to
    a whole chunk stays a small fraction of the tokens (16 for a 16 × 16 latent, 128 at 64 × 64 on the
    CPU; at most GPU_MAX_CHUNK on a GPU, where more, smaller programs fill the card better)."""
    target = max(1, n_tokens // (4 * max(1, n_regions)))
    largest = GPU_MAX_CHUNK if torch.device(device).type == "cuda" else 128
    return int(min(largest, max(16, 1 << (target.bit_length() - 1))))


def make_plan(region: torch.Tensor, batch: int, n_regions: int, chunk: int | None = None,
              packed: bool = False) -> RegionPlan:
    """Sort tokens by (batch, region) and pad each group to a multiple of chunk rows (all on device);
    packed: pad only the end, chunks may span segments (see the module's docstring)."""
    n = region.shape[-1]
    chunk = chunk or default_chunk(n, n_regions, region.device)
    region = region.expand(batch, n) if region.dim() == 1 else region
    if bool(((region < -1) | (region >= n_regions)).any()):
        raise ValueError(f"region: values must be -1 or in [0, {n_regions}), got {region.min().item()}..{region.max().item()}")
    device = region.device
    flat = region.reshape(-1).long()
    covered = flat >= 0
    segment = torch.where(covered, torch.arange(batch, device=device).repeat_interleave(n) * n_regions + flat,
                          torch.full_like(flat, batch * n_regions))  # uncovered tokens sort last, dropped
    order = torch.argsort(segment, stable=True)
    counts = torch.bincount(segment, minlength=batch * n_regions + 1)[:-1]
    padded = (counts + chunk - 1) // chunk * chunk
    start_padded = torch.cumsum(padded, 0) - padded
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])  # where each segment starts, sorted
    start_sorted = offsets[:-1]
    n_covered = int(offsets[-1])
    sorted_segment = segment[order[:n_covered]]
    if packed:
        return _packed_plan(order[:n_covered], sorted_segment, batch, n, n_regions, chunk, offsets)
    rank = torch.arange(n_covered, device=device) - start_sorted[sorted_segment]
    total = int(padded.sum())
    position = start_padded[sorted_segment] + rank
    rows = torch.full((total,), -1, dtype=torch.long, device=device)
    rows[position] = order[:n_covered]
    inverse = torch.full((batch * n,), total, dtype=torch.long, device=device)
    inverse[order[:n_covered]] = position
    chunk_segment = torch.repeat_interleave(torch.arange(batch * n_regions, device=device), padded // chunk)
    return RegionPlan(rows, chunk_segment, inverse, n_covered == batch * n, chunk, batch, n, n_regions,
                      order[:n_covered].contiguous(), offsets)


def _packed_plan(order, sorted_segment, batch, n, n_regions, chunk, offsets) -> RegionPlan:
    device, n_covered = order.device, len(order)
    total = -(-n_covered // chunk) * chunk
    rows = torch.full((total,), -1, dtype=torch.long, device=device)
    rows[:n_covered] = order
    row_segment = torch.full((total,), -1, dtype=torch.long, device=device)
    row_segment[:n_covered] = sorted_segment
    inverse = torch.full((batch * n,), total, dtype=torch.long, device=device)
    inverse[order] = torch.arange(n_covered, device=device)
    by_chunk = row_segment.view(-1, chunk)  # sorted, padding (-1) only at the very end
    return RegionPlan(rows, by_chunk[:, 0], inverse, n_covered == batch * n, chunk, batch, n, n_regions,
                      order.contiguous(), offsets, row_segment=row_segment, chunk_last=by_chunk.max(1).values)


@dataclass(frozen=True)
class RegionSegments:
    """Each chunk's key and value segment, gathered for the torch path: what a caller whose keys stay
    the same across calls (MQD's prompts over a whole denoising loop) gathers once instead of on every
    call. k, v: (n_chunks, H, T, D) for token-major queries, (H, n_chunks, T, D) for head-major ones."""

    k: torch.Tensor
    v: torch.Tensor
    plan: RegionPlan
    token_major: bool


def gather_segments(k, v, plan: RegionPlan, segment_length: int, token_major_q: bool = True) -> RegionSegments:
    """k, v (B, H, R·T, D) → each chunk's segment, for `torch_path(..., segments=…)` with queries of
    that layout (token_major_q: the processors' (B, N, H, D) memory, see `token_major`)."""
    b, h, _, d = k.shape
    if plan.packed:
        raise ValueError("region torch path: a packed plan is for the Triton kernel; use make_plan(..., packed=False)")
    if b != plan.batch or k.shape[2] != plan.n_regions * segment_length or v.shape != k.shape:
        raise ValueError(f"k, v: expected ({plan.batch}, H, {plan.n_regions * segment_length}, D) for this plan, "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")

    def gather(x):
        if token_major_q:  # (B, H, R·T, D) → (n_chunks, H, T, D)
            x = x.unflatten(2, (plan.n_regions, segment_length)).transpose(1, 2)
            return x.reshape(b * plan.n_regions, h, segment_length, d).index_select(0, plan.chunk_segment)
        x = x.transpose(0, 1).reshape(h, b * plan.n_regions, segment_length, d)  # → (H, n_chunks, T, D)
        return x.index_select(1, plan.chunk_segment)
    return RegionSegments(gather(k), gather(v), plan, token_major_q)


def token_major(x: torch.Tensor) -> bool:
    """True when a (B, H, N, D) tensor is a view of (B, N, H, D) memory, as attention processors make
    it (`to_q(x).view(B, N, H, D).transpose(1, 2)`)."""
    return x.shape[1] > 1 and x.transpose(1, 2).is_contiguous()


def torch_path(q, k, v, region, segment_length: int, scale=None, plan: RegionPlan | None = None,
               segments: RegionSegments | None = None, key_mask: torch.Tensor | None = None):
    """Chunked dense attention: one batched SDPA over (chunk of same-region queries, its segment).

    The output keeps q's memory layout: head-major q gathers per head; token-major q (the processors'
    layout) gathers whole token rows of H·D values, and its output is token-major too, so the caller's
    `transpose(1, 2).reshape(B, N, H·D)` is free. segments: each chunk's keys and values from
    `gather_segments(k, v, plan, …)` for this plan and q's layout, when k and v stay the same across
    calls (k and v are then not read). key_mask: (B, R·T) bool, the keys each segment may attend to
    (a T5 prompt's padding is False): each chunk gets its segment's row, (chunks, T), not a dense
    (B, H, N, R·T) bias."""
    n_regions = _check(q, k, region, segment_length, key_mask)
    b, h, n, d = q.shape
    plan = plan or make_plan(region, b, n_regions)
    chunk_mask = None
    if key_mask is not None:  # (n_chunks, 1, 1, T): broadcast over heads and each chunk's rows
        chunk_mask = key_mask.reshape(b * n_regions, segment_length).index_select(0, plan.chunk_segment)[:, None, None]
    if segments is None:  # (refuses a packed plan)
        segments = gather_segments(k, v, plan, segment_length, token_major(q))
    elif segments.plan is not plan or segments.token_major != token_major(q):
        raise ValueError("region torch path: segments were gathered for another plan or query layout; "
                         "use gather_segments(k, v, plan, segment_length, token_major(q))")
    if segments.token_major:
        return _token_rows(q, segments, plan, scale, chunk_mask)
    c = plan.chunk
    n_chunks = len(plan.chunk_segment)
    # index_select, not advanced indexing: the same gathers, 3–5× faster on CPU (measured alone).
    q_rows = q.transpose(0, 1).reshape(h, b * n, d)
    q_chunks = q_rows.index_select(1, plan.rows.clamp(min=0)).reshape(h, n_chunks, c, d)
    out_chunks = F.scaled_dot_product_attention(q_chunks, segments.k, segments.v, scale=scale,
                                                attn_mask=None if chunk_mask is None else chunk_mask[:, 0])
    out_chunks = out_chunks.reshape(h, n_chunks * c, d)
    # One gather back to token order; uncovered tokens (none under MQD) read an appended zero row.
    if not plan.all_covered:
        out_chunks = torch.cat([out_chunks, out_chunks.new_zeros(h, 1, d)], 1)
    return out_chunks.index_select(1, plan.inverse).reshape(h, b, n, d).transpose(0, 1)


def _token_rows(q, segments: RegionSegments, plan: RegionPlan, scale, chunk_mask=None):
    """torch_path for token-major q: rows of (B·N, H·D) in, SDPA on strided chunk views, rows out."""
    b, h, n, d = q.shape
    c, n_chunks = plan.chunk, len(plan.chunk_segment)
    q_chunks = q.transpose(1, 2).reshape(b * n, h * d).index_select(0, plan.rows.clamp(min=0))
    q_chunks = q_chunks.view(n_chunks, c, h, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q_chunks, segments.k, segments.v, scale=scale, attn_mask=chunk_mask)
    out = out.transpose(1, 2).reshape(n_chunks * c, h * d)  # SDPA keeps q's token-major layout: a view
    if not plan.all_covered:
        out = torch.cat([out, out.new_zeros(1, h * d)])
    return out.index_select(0, plan.inverse).view(b, n, h, d).transpose(1, 2)


if triton is not None:

    @triton.jit
    def _region_fwd(Q, K, V, O, ROWS, SEG, ROW_SEG, SEG_LAST, KD, VD, KD2, VD2, scale_log2, H, N, R, T, D,
                    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
                    SPLIT: tl.constexpr, USE_DESC: tl.constexpr, PACKED: tl.constexpr):
        # Q, O contiguous (B, H, N, D); K, V contiguous (B, H, R·T, D). With USE_DESC, K/V tiles come
        # through tensor descriptors (KD, VD over (B·H·R·T, D); KD2, VD2 the second head-dim tile)
        # instead of per-element pointer tiles. PACKED: the chunk's rows span segments SEG..SEG_LAST,
        # each row masked to its own (ROW_SEG).
        pid_c = tl.program_id(0)
        h = tl.program_id(1)
        rows = tl.load(ROWS + pid_c * CHUNK + tl.arange(0, CHUNK))
        row_ok = rows >= 0
        rows = tl.where(row_ok, rows, 0)
        qb = rows // N
        qn = rows % N
        seg_first = tl.load(SEG + pid_c)
        row_seg = tl.zeros([CHUNK], tl.int64)
        if PACKED:
            row_seg = tl.load(ROW_SEG + pid_c * CHUNK + tl.arange(0, CHUNK))
        offs_d = tl.arange(0, BLOCK_D)
        offs_d2 = BLOCK_D + tl.arange(0, BLOCK_D2)  # the second head-dim tile (unused unless SPLIT)
        offs_t = tl.arange(0, BLOCK_T)
        d_ok = offs_d < D
        d2_ok = offs_d2 < D
        q_rows = ((qb * H + h) * N + qn) * D
        dtype = K.dtype.element_ty
        q = tl.load(Q + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        q = (q.to(tl.float32) * scale_log2).to(dtype)
        q2 = tl.zeros([CHUNK, BLOCK_D2], dtype)
        if SPLIT:
            q2 = tl.load(Q + q_rows[:, None] + offs_d2[None, :], mask=row_ok[:, None] & d2_ok[None, :], other=0.0)
            q2 = (q2.to(tl.float32) * scale_log2).to(dtype)
        m_i = tl.full([CHUNK], -1.0e30, tl.float32)
        l_i = tl.zeros([CHUNK], tl.float32)
        acc = tl.zeros([CHUNK, BLOCK_D], tl.float32)
        acc2 = tl.zeros([CHUNK, BLOCK_D2], tl.float32)
        if PACKED:
            # A row masked out of a whole block keeps m_i = -1e30 and gathers p = 1 terms; its own
            # segment's first block then scales them by exp2(-1e30 - max) = 0 (every row has one).
            for seg in range(seg_first, tl.load(SEG_LAST + pid_c) + 1):
                m_i, l_i, acc, acc2 = _segment(K, V, KD, VD, KD2, VD2, q, q2, seg, row_seg, m_i, l_i, acc, acc2, h, H,
                                               R, T, D, offs_t, offs_d, offs_d2, d_ok, d2_ok, BLOCK_T, BLOCK_D, SPLIT,
                                               USE_DESC, PACKED)
        else:  # one segment, no loop: the kernel as it was measured
            m_i, l_i, acc, acc2 = _segment(K, V, KD, VD, KD2, VD2, q, q2, seg_first, row_seg, m_i, l_i, acc, acc2, h, H,
                                           R, T, D, offs_t, offs_d, offs_d2, d_ok, d2_ok, BLOCK_T, BLOCK_D, SPLIT,
                                           USE_DESC, PACKED)
        tl.store(O + q_rows[:, None] + offs_d[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
        if SPLIT:
            tl.store(O + q_rows[:, None] + offs_d2[None, :], (acc2 / l_i[:, None]).to(O.dtype.element_ty),
                     mask=row_ok[:, None] & d2_ok[None, :])

    @triton.jit
    def _segment(K, V, KD, VD, KD2, VD2, q, q2, seg, row_seg, m_i, l_i, acc, acc2, h, H, R, T, D, offs_t, offs_d,
                 offs_d2, d_ok, d2_ok, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr,
                 USE_DESC: tl.constexpr, PACKED: tl.constexpr):
        """Every key block of segment seg (flat b·R + r) into the running softmax of the chunk's rows."""
        kb = seg // R
        kr = seg % R
        k_base = K + ((kb * H + h) * R + kr) * T * D
        v_base = V + ((kb * H + h) * R + kr) * T * D
        row0 = (((kb * H + h) * R + kr) * T).to(tl.int32)  # descriptor coordinates are 32-bit
        for start in range(0, T, BLOCK_T):
            cols = start + offs_t
            col_ok = cols < T
            if USE_DESC:  # keys past the segment are the next segment's (or zeros): masked via col_ok
                kt = tl.trans(KD.load([row0 + start, 0]))
                vt = VD.load([row0 + start, 0])
            else:
                kt = tl.load(k_base + cols[None, :] * D + offs_d[:, None], mask=col_ok[None, :] & d_ok[:, None], other=0.0)
                vt = tl.load(v_base + cols[:, None] * D + offs_d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            kt2 = kt
            vt2 = vt
            if SPLIT:
                if USE_DESC:
                    kt2 = tl.trans(KD2.load([row0 + start, BLOCK_D]))
                    vt2 = VD2.load([row0 + start, BLOCK_D])
                else:
                    kt2 = tl.load(k_base + cols[None, :] * D + offs_d2[:, None], mask=col_ok[None, :] & d2_ok[:, None],
                                  other=0.0)
                    vt2 = tl.load(v_base + cols[:, None] * D + offs_d2[None, :], mask=col_ok[:, None] & d2_ok[None, :],
                                  other=0.0)
            ok = col_ok[None, :]
            if PACKED:
                ok = ok & (row_seg[:, None] == seg)
            m_i, l_i, acc, acc2 = online_softmax_block(q, kt, vt, q2, kt2, vt2, ok, m_i, l_i, acc, acc2, SPLIT)
        return m_i, l_i, acc, acc2


# Launch configuration (block_t, num_warps, num_stages) for head dims up to 80 and above: the fastest
# on an H100, bf16, 5 × 77 tokens, at 4096 queries × 40 and 256 × 160 (benchmarks/attention_configs.py).
CONFIG, WIDE_CONFIG = (32, 2, 1), (32, 4, 1)


def triton_path(q, k, v, region, segment_length: int, scale=None, plan: RegionPlan | None = None, chunk: int | None = None,
                block_t: int | None = None, num_warps: int | None = None, num_stages: int | None = None, split: bool = True,
                maxnreg: int | None = None, kv_descriptors: bool = False, packed: bool = False):
    """The fused kernel: queries gathered and outputs scattered in place, segments read in place
    (kv_descriptors: K/V tiles through tensor descriptors, where the head dim's rows are 16-byte aligned).
    packed: build a packed plan when none is given (a given plan says for itself)."""
    check_triton_inputs(q, k, v)
    n_regions = _check(q, k, region, segment_length)
    b, h, n, d = q.shape
    plan = plan or make_plan(region, b, n_regions, chunk, packed=packed)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q) if plan.all_covered else torch.zeros_like(q)  # uncovered tokens stay zero
    scale = d ** -0.5 if scale is None else scale
    block_d, block_d2 = split_head_dim(d) if split else (max(16, triton.next_power_of_2(d)), 0)
    cfg_t, cfg_warps, cfg_stages = CONFIG if block_d + block_d2 <= 80 else WIDE_CONFIG
    block_t = min(block_t or cfg_t, max(16, triton.next_power_of_2(segment_length)))
    grid = (len(plan.chunk_segment), h)
    use_desc = kv_descriptors and TensorDescriptor is not None and (d * k.element_size()) % 16 == 0
    if use_desc:
        k2d, v2d = k.view(-1, d), v.view(-1, d)
        descs = [TensorDescriptor.from_tensor(t, [block_t, width]) for width in (block_d, max(16, block_d2)) for t in (k2d, v2d)]
    else:
        descs = [k, v, k, v]  # unused
    if grid[0]:
        # Unpacked plans pass placeholders for the two packed-only arguments (never read).
        row_segment, chunk_last = (plan.row_segment, plan.chunk_last) if plan.packed else (plan.rows, plan.chunk_segment)
        _region_fwd[grid](q, k, v, out, plan.rows, plan.chunk_segment, row_segment, chunk_last, *descs,
                          scale * 1.4426950408889634, h, n, n_regions, segment_length, d, CHUNK=plan.chunk,
                          BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_D2=max(16, block_d2), SPLIT=block_d2 > 0,
                          USE_DESC=use_desc, PACKED=plan.packed,
                          num_warps=num_warps or cfg_warps, num_stages=num_stages or cfg_stages,
                          **({"maxnreg": maxnreg} if maxnreg else {}))
    return out
