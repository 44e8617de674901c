"""Neighbour attention with unused slots (the driving pipeline's pattern), before and after the torch path
grouped its rows by how many groups they list.

    python -m benchmarks.neighbour_gaps --repeats 5 --json out.json

The driving pipeline's index (`frame_index(4, 6)`: a window of 4 frames × 6 cameras; rows list 3 to 5
groups — the key frame has no temporal references — padded with −1) at three shapes: the embedded
model's two self-attention widths (256 tokens, 8 heads × 8; 64 tokens, 8 heads × 16) and SD-1.5's
head width at 512 tokens (8 heads × 40; at 1,024 tokens the masked path's attention matrix alone, 24
groups × 5 slots, needs 4 GiB forward and was killed for memory on this 24 GiB machine with its
backward). One guidance branch. Rows, side by side in one run on the same inputs:
  before   the torch path until this change: every row's listed groups gathered to the longest row's
           length and one SDPA call with a padding mask (which SDPA runs on its math kernel)
  torch    the torch path now: rows grouped by how many groups they list, one unmasked SDPA per group
  naive    a loop over groups, concatenation, SDPA (what a user writes)
Times are forward, and forward + backward (the crossview training stage); both paths are checked
against the float64 reference first. On the CPU only ratios mean something.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from attention_processors.temporal import frame_index
from benchmarks.common import machine, print_table, write_json
from kernels import neighbour

SHAPES = ((256, 8, 8), (64, 8, 16), (512, 8, 40))  # tokens, heads, head dim


def before(q, k, v, index, scale=None):
    """The torch path before rows were grouped: one masked SDPA over keys gathered to the longest row."""
    b, h, g, lq, d = q.shape
    m, lk = index.shape[1], k.shape[3]
    valid = index >= 0
    safe = index.clamp(min=0)
    keys = k[:, :, safe].reshape(b, h * g, m * lk, d)
    values = v[:, :, safe].reshape(b, h * g, m * lk, d)
    mask = valid[None, :, :, None].expand(h, g, m, lk).reshape(h * g, 1, m * lk)
    out = F.scaled_dot_product_attention(q.reshape(b, h * g, lq, d), keys, values, attn_mask=mask, scale=scale)
    out = out.reshape(b, h, g, lq, d)
    return torch.where(valid.any(1)[:, None, None], out, torch.zeros((), dtype=out.dtype))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    index = frame_index(4, 6)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for tokens, heads, dim in SHAPES:
        shape = (1, heads, index.shape[0], tokens, dim)
        q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
        ref = neighbour.reference(q.double(), k.double(), v.double(), index)
        paths = {"before": before, "torch": neighbour.torch_path, "naive": neighbour.naive}
        for name, fn in paths.items():
            torch.testing.assert_close(fn(q, k, v, index).double(), ref, atol=1e-4, rtol=1e-4)
        row = {"tokens": tokens, "heads": heads, "head_dim": dim}
        for name, fn in paths.items():
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            row[f"{name}_forward_ms"] = timed(lambda: fn(q, k, v, index), args.repeats)
            row[f"{name}_backward_ms"] = timed(lambda: fn(*leaves, index).sum().backward(), args.repeats)
        rows.append(row)
    print_table(f"Neighbour attention with unused slots (frame_index(4, 6)), {machine()}",
                ["tokens", "heads × dim", "before ms (fwd / fwd+bwd)", "torch ms", "naive ms",
                 "before / torch (fwd / fwd+bwd)"],
                [[r["tokens"], f"{r['heads']} × {r['head_dim']}",
                  f"{r['before_forward_ms']:.1f} / {r['before_backward_ms']:.1f}",
                  f"{r['torch_forward_ms']:.1f} / {r['torch_backward_ms']:.1f}",
                  f"{r['naive_forward_ms']:.1f} / {r['naive_backward_ms']:.1f}",
                  f"{r['before_forward_ms'] / r['torch_forward_ms']:.2f} / "
                  f"{r['before_backward_ms'] / r['torch_backward_ms']:.2f}"] for r in rows])
    result = {"machine": machine(), "index": "frame_index(4, 6)", "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
