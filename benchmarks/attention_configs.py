"""Sweep the Triton kernels' launch configurations on a GPU and print the fastest per head dim.

    python -m benchmarks.attention_configs --json out.json [--dims 40 64 80 160]
    python -m benchmarks.attention_configs --crossover    # fused kernel vs torch path, 1024…4096 queries
    python -m benchmarks.attention_configs --waves        # region kernel: 64…68 chunks of 64 rows

The tables in kernels/neighbour.py (CONFIGS) and kernels/region.py (CONFIG, WIDE_CONFIG, GPU_MAX_CHUNK)
come from this script, and kernels.registry.sdpa_wins from --crossover.
Neighbour: 6 groups × 1024 queries (--length), 8 heads, 3 neighbours, bf16, every (block_m, block_n,
num_warps, num_stages) below with the head dim split into two tiles, then the fastest of them
again with one padded tile.
Region: 4096 queries, 8 heads, 5 prompts of 77 tokens, every (chunk, block_t, num_warps,
num_stages) below. Times are medians of triton.testing.do_bench (milliseconds, L2 flushed between calls);
a configuration that does not fit the card's shared memory is listed as failed.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from benchmarks.common import machine, print_table, write_json
from kernels import make_plan, neighbour, region


def bench(fn) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def try_config(fn):
    try:
        return bench(fn), ""
    except Exception as exc:  # out of shared memory or registers: a fact about the card, listed
        return None, f"{type(exc).__name__}"


def sweep_neighbour(d: int, dtype, length: int) -> list[dict]:
    b, h, groups = 1, 8, 6
    q, k, v = (torch.randn(b, h, groups, length, d, device="cuda", dtype=dtype) for _ in range(3))
    index = neighbour.ring_index(groups).cuda()
    ref = neighbour.torch_path(q.float(), k.float(), v.float(), index)
    flops = 4 * b * h * groups * length * 3 * length * d
    rows = []

    def run(bm, bn, warps, stages, split):
        fn = lambda: neighbour.triton_path(q, k, v, index, block_m=bm, block_n=bn, num_warps=warps,  # noqa: E731
                                           num_stages=stages, split=split)
        ms, note = try_config(fn)
        err = (fn().float() - ref).abs().max().item() if ms else None
        rows.append(dict(head_dim=d, length=length, block_m=bm, block_n=bn, num_warps=warps, num_stages=stages, split=split, ms=ms,
                         tflops=flops / (ms * 1e-3) / 1e12 if ms else None, max_abs_err=err, note=note))
    for config in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3)):
        run(*config, split=True)
    best = min((r for r in rows if r["ms"]), key=lambda r: r["ms"])  # the same launch, one padded tile
    run(best["block_m"], best["block_n"], best["num_warps"], best["num_stages"], split=False)
    return rows


def sweep_region(d: int, dtype) -> list[dict]:
    b, h, n, regions, tokens = 1, 8, 4096, 5, 77
    q = torch.randn(b, h, n, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(b, h, regions * tokens, d, device="cuda", dtype=dtype) for _ in range(2))
    region_map = torch.randint(0, regions, (n,), device="cuda")
    ref = region.torch_path(q.float(), k.float(), v.float(), region_map, tokens)
    rows = []
    for chunk, bt, warps, stages in itertools.product((16, 32, 64, 128), (16, 32, 64, 128), (1, 2, 4), (1, 2)):
        plan = make_plan(region_map, b, regions, chunk)
        fn = lambda: region.triton_path(q, k, v, region_map, tokens, plan=plan, block_t=bt, num_warps=warps,  # noqa: E731
                                        num_stages=stages)
        ms, note = try_config(fn)
        err = (fn().float() - ref).abs().max().item() if ms else None
        rows.append(dict(head_dim=d, chunk=chunk, block_t=bt, num_warps=warps, num_stages=stages, ms=ms,
                         max_abs_err=err, note=note))
    plain = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :tokens], v[:, :, :tokens]))
    for r in rows:
        r["ratio_to_plain"] = r["ms"] / plain if r["ms"] else None
    return rows


def crossover(dtype) -> dict:
    """Neighbour (6 groups, 3 neighbours) at 2048 and 4096 queries and blended (one group) at 1024,
    2048 and 4096: torch path and fused kernel, each × faster than the naive path. The data behind
    kernels.registry.sdpa_wins."""
    from kernels import blended
    index_cpu = neighbour.ring_index(6)
    index = index_cpu.cuda()
    rows = []
    for d in (40, 64, 80, 160):
        for length in (2048, 4096):
            q, k, v = (torch.randn(1, 8, 6, length, d, device="cuda", dtype=dtype) for _ in range(3))
            naive = bench(lambda: neighbour.naive(q, k, v, index_cpu))
            rows.append(dict(pattern="neighbour", head_dim=d, queries=length,
                             torch=naive / bench(lambda: neighbour.torch_path(q, k, v, index)),
                             triton=naive / bench(lambda: neighbour.triton_path(q, k, v, index))))
        for length in (1024, 2048, 4096):
            q, q_hat, k, v = (torch.randn(1, 8, length, d, device="cuda", dtype=dtype) for _ in range(4))
            naive = bench(lambda: blended.naive(q, k, v, q_hat, 0.4))
            rows.append(dict(pattern="blended", head_dim=d, queries=length,
                             torch=naive / bench(lambda: blended.torch_path(q, k, v, q_hat, 0.4)),
                             triton=naive / bench(lambda: blended.triton_path(q, k, v, q_hat, 0.4))))
    print_table("fused kernel and torch path, × faster than naive", ["pattern", "head_dim", "queries", "torch ×", "triton ×"],
                [[r["pattern"], r["head_dim"], r["queries"], r["torch"], r["triton"]] for r in rows])
    return {"crossover": rows}


def _occupancy(kernel) -> int | None:
    """Resident programs per SM for a compiled Triton kernel, from the CUDA driver's calculator."""
    import ctypes
    try:
        blocks = ctypes.c_int()
        status = ctypes.CDLL("libcuda.so.1").cuOccupancyMaxActiveBlocksPerMultiprocessor(
            ctypes.byref(blocks), ctypes.c_void_p(kernel.function), ctypes.c_int(32 * kernel.metadata.num_warps),
            ctypes.c_size_t(kernel.metadata.shared))
        return blocks.value if status == 0 else None
    except (OSError, AttributeError):
        return None


def waves(dtype) -> dict:
    """The region kernel on region maps built to need 64…68 chunks of 64 rows (× 8 heads = 512…544
    programs) and at batch 2, plain, with K/V tensor descriptors, with a register cap (maxnreg), and with
    a packed plan (no padding between segments: 64 chunks on every map): time / one plain 77-token
    cross-attention, and the compiled kernels' registers and programs per SM."""
    regions, tokens, n, d = 5, 77, 4096, 40
    q = torch.randn(1, 8, n, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(1, 8, regions * tokens, d, device="cuda", dtype=dtype) for _ in range(2))
    k_plain, v_plain = k[:, :, :tokens].contiguous(), v[:, :, :tokens].contiguous()
    plain = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k_plain, v_plain))
    rows = []
    # A register cap lets more programs share an SM; tensor descriptors drop the K/V pointer tiles.
    for maxnreg, descriptors, packed in ((None, False, False), (None, True, False), (200, False, False),
                                         (168, False, False), (128, False, False), (None, False, True)):
        for extra in range(5):  # regions 1…4 hold 12 chunks each; `extra` of them one token more (a 13th chunk)
            counts = [64 * 12 + 1] * extra + [64 * 12] * (4 - extra)
            counts = [n - sum(counts)] + counts
            region_map = torch.cat([torch.full((c,), r) for r, c in enumerate(counts)]).cuda()
            plan = make_plan(region_map, 1, regions, 64, packed=packed)
            ms = bench(lambda: region.triton_path(q, k, v, region_map, tokens, plan=plan, maxnreg=maxnreg,
                                                  kv_descriptors=descriptors))
            rows.append(dict(maxnreg=maxnreg, descriptors=descriptors, packed=packed, batch=1, chunks=len(plan.chunk_segment),
                             programs=8 * len(plan.chunk_segment), ratio_to_plain=ms / plain))
        q2, k2, v2 = (torch.cat([t, t]) for t in (q, k, v))  # batch 2 (classifier-free guidance's two halves)
        plain2 = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q2, torch.cat([k_plain] * 2),
                                                                               torch.cat([v_plain] * 2)))
        plan = make_plan(region_map, 2, regions, 64, packed=packed)
        ms = bench(lambda: region.triton_path(q2, k2, v2, region_map, tokens, plan=plan, maxnreg=maxnreg,
                                              kv_descriptors=descriptors))
        rows.append(dict(maxnreg=maxnreg, descriptors=descriptors, packed=packed, batch=2, chunks=len(plan.chunk_segment), programs=8 * len(plan.chunk_segment),
                         ratio_to_plain=ms / plain2))
    compiled = []
    for cache in region._region_fwd.device_caches.values():  # Triton 3.x: (kernel cache, …) per device
        for kernel in (cache[0] if isinstance(cache, tuple) else cache).values():
            compiled.append(dict(registers=kernel.n_regs, spills=kernel.n_spills, shared=kernel.metadata.shared,
                                 warps=kernel.metadata.num_warps, programs_per_sm=_occupancy(kernel)))
    print_table(f"region kernel by grid size ({torch.cuda.get_device_properties(0).multi_processor_count} SMs)",
                ["maxnreg", "K/V descriptors", "packed", "batch", "chunks", "programs", "region / plain"],
                [[r["maxnreg"] or "-", r["descriptors"], r["packed"], r["batch"], r["chunks"], r["programs"], r["ratio_to_plain"]]
                 for r in rows])
    print("compiled region kernels:", compiled)
    return {"waves": rows, "compiled": compiled}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--dims", type=int, nargs="*", default=[40, 64, 80, 160], help="none: --dims with no value")
    parser.add_argument("--length", type=int, default=1024, help="neighbour queries per group")
    parser.add_argument("--region-dims", type=int, nargs="*", default=[40], help="none: --region-dims with no value")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--crossover", action="store_true", help="only the fused-kernel vs torch-path table")
    parser.add_argument("--waves", action="store_true", help="only the region kernel's grid-size table")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("attention_configs: needs a CUDA GPU (the configurations are GPU launch settings)")
    dtype = getattr(torch, args.dtype)
    if args.crossover or args.waves:
        result = {"machine": machine(), "dtype": args.dtype}
        result.update(crossover(dtype) if args.crossover else {})
        result.update(waves(dtype) if args.waves else {})
        write_json(args.json, result)
        return result
    result = {"machine": machine(), "dtype": args.dtype, "neighbour": [], "region": []}
    for d in args.dims:
        rows = sweep_neighbour(d, dtype, args.length)
        result["neighbour"] += rows
        ok = sorted((r for r in rows if r["ms"]), key=lambda r: r["ms"])
        print_table(f"neighbour, head_dim {d}, {args.length} queries per group: five fastest of {len(rows)} ({len(ok)} ran)",
                    ["block_m", "block_n", "warps", "stages", "split", "ms", "TFLOP/s", "max abs err"],
                    [[r["block_m"], r["block_n"], r["num_warps"], r["num_stages"], r["split"], r["ms"], r["tflops"],
                      f"{r['max_abs_err']:.1e}"] for r in ok[:5]])
        write_json(args.json, result)
    for d in args.region_dims:
        rows = sweep_region(d, dtype)
        result["region"] += rows
        ok = sorted((r for r in rows if r["ms"]), key=lambda r: r["ms"])
        print_table(f"region, head_dim {d}: five fastest of {len(rows)} ({len(ok)} ran)",
                    ["chunk", "block_t", "warps", "stages", "ms", "/ plain", "max abs err"],
                    [[r["chunk"], r["block_t"], r["num_warps"], r["num_stages"], r["ms"], r["ratio_to_plain"],
                      f"{r['max_abs_err']:.1e}"] for r in ok[:5]])
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
