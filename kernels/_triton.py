"""What the Triton kernels share: the import (None without triton), the input check, head-dim
tiling and the online-softmax block. Private: the pattern modules import it, nothing else."""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch paths do not need it
    triton = tl = None


def check_triton_inputs(*tensors) -> None:
    """The Triton kernels read raw device pointers: CUDA tensors, or any tensor under the interpreter."""
    if triton is None:
        raise RuntimeError("triton is not installed; use the 'torch' backend")
    if os.environ.get("TRITON_INTERPRET") != "1" and not all(t.is_cuda for t in tensors):
        raise ValueError(f"triton backend: tensors must be on a CUDA device, got {tensors[0].device}; "
                         "use backend='torch' (or TRITON_INTERPRET=1 to run the kernels on the CPU)")
    if any(t.numel() >= 2**31 for t in tensors):
        raise ValueError("triton backend: tensors of 2^31 elements or more are not supported (int32 offsets); "
                         "split the batch")


def split_head_dim(d: int) -> tuple[int, int]:
    """Tile widths (first, second) covering head_dim d; second is 0 when one power of two fits well.

    tl.arange needs powers of two, so d = 80 in one tile pads to 128 (60 % more work in both
    products). Two tiles pad far less: 40 → 32 + 16, 80 → 64 + 16, 160 → 128 + 32 (FlashAttention
    itself pads 80 to 96). Tiles are at least 16 wide (the smallest tl.dot operand)."""
    whole = max(16, 1 << (d - 1).bit_length())
    first = max(16, 1 << (d.bit_length() - 1))
    rest = d - first
    if rest <= 0:
        return whole, 0
    second = max(16, 1 << (rest - 1).bit_length())
    return (first, second) if first + second < whole else (whole, 0)


if triton is not None:

    @triton.jit
    def online_softmax_block(q, kt, vt, q2, kt2, vt2, ok, m_i, l_i, acc, acc2, SPLIT: tl.constexpr):
        """One key block of flash attention in base 2: q is pre-scaled by scale·log2(e); kt (D, N),
        vt (N, D); with SPLIT the head dim is two tiles (q, q2), (kt, kt2), (vt, vt2), (acc, acc2).
        ok masks the scores (broadcast to (rows, keys)). Returns the updated running max, normaliser and
        accumulators."""
        s = tl.dot(q, kt)
        if SPLIT:
            s += tl.dot(q2, kt2)
        s = tl.where(ok, s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        if SPLIT:
            acc2 = acc2 * alpha[:, None] + tl.dot(p.to(vt2.dtype), vt2)
        return m_new, l_i, acc, acc2
