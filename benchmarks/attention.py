"""Side-by-side speed and memory of every implementation of Strata's attention patterns.

    python -m benchmarks.attention --json out.json [--quick] [--no-flex] [--shapes] [--breakdown]

One table per pattern, a row per implementation, all measured in one run on the same inputs:
reference (the spec), naive (loop over groups/regions, concatenate, SDPA), torch (our CPU and
fallback path), cpp (the fused C++ loop for region attention on the CPU in float32, where its
extension builds), FlexAttention (compiled, where it runs; region attention on region-sorted tokens, as
Strata's kernels get them), xformers (block-diagonal packed sequences; on a GPU, else the registry's
reason it cannot run), triton (on a GPU). Columns: time ratio to the naive path (> 1 is faster), median milliseconds, TFLOP/s (beside
the machine's own rate on one large matrix product, printed at the end), peak extra memory beyond
inputs and output (MiB), and max abs error against the float64 reference on the same inputs. On a
GPU, "ms" is the GPU's time per call (triton's do_bench, L2 flushed) and "ms back-to-back" the time
per call when calls follow each other, CPU launch overhead included; ratios and TFLOP/s use the first.

Shapes (SD-1.x at 512 px unless --quick): neighbour: 6 views × 1024 queries, 8 heads × 80, each
view attends to itself and its two ring neighbours; region: 4096 queries, 8 heads × 40, 5 prompts
of 77 tokens, compared with one plain 77-token cross-attention; blended: 4096 queries, 8 × 40.
--shapes (GPU) adds head dims 40/64/80/160 × 64…4096 queries per group, and region at SD-1's levels.

JSON keys: machine, dtype, patterns.<pattern>.shape, patterns.<pattern>.rows[] with name, ms,
ms_back_to_back (GPU), ratio_to_naive, tflops, peak_extra_mib, max_abs_err (null where not
measured), plus patterns.neighbour.sdpa_core_ms and sdpa_core_ratio_to_naive (SDPA alone on
pre-gathered keys: the ceiling of any SDPA-based path), patterns.region.plain_cross_attention_ms,
torch_vs_plain_ratio and triton_vs_plain_ratio (+ _back_to_back variants on GPU; on the CPU plain and
torch alternate call by call), triton_packed_vs_plain_ratio (GPU; a packed plan: no padding between
segments), plain_cross_attention_ms_processor_layout and torch_vs_plain_ratio_processor_layout (q, k,
v as views of (B, N, H·D) memory, output back to it, as the processors run it),
torch_cached_segments_vs_plain_ratio_processor_layout (the same, each chunk's K/V segment gathered once
beforehand, as the MQD processor keeps them over a denoising loop), cpp_vs_plain_ratio and
cpp_vs_plain_ratio_processor_layout (the fused CPU loop; null where it does not run) and, on the CPU,
minor_page_faults_per_call (mean, for each of the alternating calls); on GPU matmul_bf16_tflops (on
the CPU: matmul_tflops, in the run's dtype), shapes.neighbour[] / shapes.region[] with --shapes; with
--breakdown, region_breakdown.<piece>.{ms, ratio_to_plain, minor_page_faults} (the region torch path's
pieces, timed alone, and the chunks' SDPA with every chunk reading one K/V copy, which prices the
per-chunk copies; plain and the whole path also on the last of 4 calls in a row) and, on the CPU,
sdpa_rows_by_length.<rows per sequence> (SDPA's time per query row, relative to the longest).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

try:
    import resource
except ImportError:  # Windows: no fault counts there
    resource = None

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU profiler's start/stop lines are noise here

import torch
import torch.nn.functional as F

from benchmarks.common import machine, print_table, write_json
from kernels import blended, gather_segments, make_plan, neighbour, peers, region, region_cpp, triton_available
from kernels.registry import Call, backends

CUDA = torch.cuda.is_available()


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of fn(). On a GPU: the GPU's time per call (triton.testing.do_bench: CUDA
    events, L2 flushed before each call, so the CPU's launch work hides behind the flush)."""
    if CUDA and triton_available():
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=max(50, 10 * repeats), return_mode="median")
    return back_to_back(fn, repeats, warmup)


def back_to_back(fn, repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of fn() called as a pipeline calls it. On a GPU: CUDA events around 20
    back-to-back calls, so the CPU's launch overhead counts wherever it outlasts the kernels."""
    for _ in range(warmup):
        fn()
    times = []
    if CUDA:
        calls = 20
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
        return statistics.median(times)
    for _ in range(repeats):
        if CUDA:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if CUDA:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def minor_faults() -> int:
    """Page faults this process has taken without disk I/O: each is a fresh page of memory that the
    kernel zeroes and maps (on the CPU, what a freshly allocated multi-MB buffer costs on first touch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def interleaved(fns: dict, repeats: int, faults: dict | None = None, block: int = 1) -> dict:
    """Median milliseconds of each fn, the calls alternating (on the CPU: a drift of the machine's speed
    during the run, which is large on a shared VM, then reaches every fn alike). On a GPU: `timed`.
    faults (CPU): filled with each fn's mean minor page faults per call (a few calls fault thousands of
    pages, most none: the mean is what they cost). block: calls of one fn in a row before the next
    fn's, the last one timed; each timed call then finds at hand the memory its own previous call
    freed, instead of memory the other fns' calls freed or gave back to the system."""
    if CUDA:
        return {name: timed(fn, repeats) for name, fn in fns.items()}
    times, faulted = {name: [] for name in fns}, {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(block - 1):
                fn()
            before, start = minor_faults(), time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
            faulted[name].append(minor_faults() - before)
    if faults is not None and resource:  # without getrusage (Windows) no counts, rather than zeros
        faults.update({name: statistics.mean(f) for name, f in faulted.items()})
    return {name: statistics.median(t) for name, t in times.items()}


def peak_extra_mib(fn) -> float:
    """Peak memory allocated while fn runs, beyond what was allocated before (its output included)."""
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:  # self memory of each op, in time order: the running sum is live memory
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def matmul_tflops(dtype=torch.bfloat16, n: int = 8192, device: str = "cuda") -> float:
    """The machine's rate on one large square matrix product: the hardware limit, as we can reach it."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timed(lambda: a @ b, repeats=20 if device == "cuda" else 7, warmup=5 if device == "cuda" else 2)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def _flex():
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    return torch.compile(flex_attention, dynamic=False), create_block_mask


def flash(fn):
    """fn with SDPA restricted to the FlashAttention backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return fn()
    return run


def measure(rows: list, name: str, fn, flops: float, ref: torch.Tensor, repeats: int) -> None:
    try:
        out = fn()
        err = (out.double() - ref).abs().max().item()
        ms = timed(fn, repeats)
        ms_b2b = back_to_back(fn, repeats) if CUDA else None
        mem = peak_extra_mib(fn)
    except Exception as exc:  # a backend that does not run here says why, in the table
        rows.append({"name": name, "ms": None, "ms_back_to_back": None, "ratio_to_naive": None, "tflops": None,
                     "peak_extra_mib": None, "max_abs_err": None,
                     "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"})
        return
    rows.append({"name": name, "ms": ms, "ms_back_to_back": ms_b2b, "ratio_to_naive": None,
                 "tflops": flops / (ms * 1e-3) / 1e12, "peak_extra_mib": mem, "max_abs_err": err,
                 "note": ""})


def peer(rows: list, pattern: str, backend: str, name: str, fn, flops: float, ref: torch.Tensor, repeats: int,
         device, dtype) -> None:
    """A registered peer's row: measured where its checks pass, else the registry's reason as the note."""
    reason = backends(pattern)[backend].refusal(Call(pattern, torch.device(device), dtype), forced=True)
    if reason is not None:
        rows.append({"name": name, "ms": None, "ms_back_to_back": None, "ratio_to_naive": None, "tflops": None,
                     "peak_extra_mib": None, "max_abs_err": None, "note": reason})
        return
    measure(rows, name, fn, flops, ref, repeats)


def finish(rows: list) -> list:
    naive_ms = next(r["ms"] for r in rows if r["name"] == "naive")
    for r in rows:
        if r["ms"]:
            r["ratio_to_naive"] = naive_ms / r["ms"]
    return rows


def bench_neighbour(args, dtype, device) -> dict:
    b, h, groups, length, d = 1, 8, 6, args.neighbour_length, args.neighbour_dim
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, h, groups, length, d, generator=gen).to(device, dtype) for _ in range(3))
    index = neighbour.ring_index(groups).to(device)
    ref = neighbour.reference(q.double().cpu(), k.double().cpu(), v.double().cpu(), index.cpu()).to(device)
    flops = 4 * b * h * groups * length * 3 * length * d
    rows: list = []
    measure(rows, "reference", lambda: neighbour.reference(q, k, v, index), flops, ref, max(2, args.repeats // 3))
    index_cpu = index.cpu()  # the naive loop reads its neighbour lists on the CPU, as user code would
    measure(rows, "naive", lambda: neighbour.naive(q, k, v, index_cpu), flops, ref, args.repeats)
    if CUDA:
        measure(rows, "naive, SDPA forced to flash", flash(lambda: neighbour.naive(q, k, v, index_cpu)), flops, ref,
                args.repeats)
    measure(rows, "torch", lambda: neighbour.torch_path(q, k, v, index), flops, ref, args.repeats)
    if args.flex and (flex := _flex()):
        flex_attention, create_block_mask = flex
        allowed = torch.zeros(groups, groups, dtype=torch.bool, device=device)
        allowed[torch.arange(groups).repeat_interleave(3), index.cpu().reshape(-1)] = True

        def mask_mod(bb, hh, qi, ki):
            return allowed[qi // length, ki // length]
        block_mask = create_block_mask(mask_mod, None, None, groups * length, groups * length, device=device)
        qf, kf, vf = (t.reshape(b, h, groups * length, d) for t in (q, k, v))
        measure(rows, "flex (compiled)", lambda: flex_attention(qf, kf, vf, block_mask=block_mask).reshape(q.shape),
                flops, ref, args.repeats)
    peer(rows, "neighbour", "xformers", "xformers (block-diagonal, gathered K/V)",
         lambda: peers.neighbour_xformers(q, k, v, index_cpu), flops, ref, args.repeats, device, dtype)
    if CUDA and triton_available():
        measure(rows, "triton", lambda: neighbour.triton_path(q, k, v, index), flops, ref, args.repeats)
    # The ceiling of any SDPA-based path: the attention product alone on keys gathered beforehand
    # (no gather, no loop; the same FLOPs). On a CPU this is most of the naive path's time.
    keys, values = (t[:, :, index].reshape(b, h * groups, 3 * length, d) for t in (k, v))
    q4 = q.reshape(b, h * groups, length, d)
    core_ms = timed(lambda: F.scaled_dot_product_attention(q4, keys, values), args.repeats)
    rows = finish(rows)
    naive_ms = next(r["ms"] for r in rows if r["name"] == "naive")
    return {"shape": dict(batch=b, heads=h, groups=groups, length=length, head_dim=d, neighbours=3), "rows": rows,
            "sdpa_core_ms": core_ms, "sdpa_core_ratio_to_naive": naive_ms / core_ms}


def processor_rows(out: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) attention output → (B, N, H·D), as a processor hands it to to_out (a copy unless
    the output is token-major)."""
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def box_map(n: int) -> torch.Tensor:
    """(n,) region map of four boxes in front of a background, as MQD sees them: each token in exactly
    one region (5 regions)."""
    side = int(n**0.5)
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(n // side), indexing="ij")
    region_map = torch.zeros(side, n // side, dtype=torch.long)
    for r, (y0, x0) in enumerate([(0.1, 0.1), (0.1, 0.55), (0.55, 0.1), (0.5, 0.5)], start=1):
        region_map[(ys >= y0 * side) & (ys < (y0 + 0.35) * side) & (xs >= x0 * side) & (xs < (x0 + 0.35) * side)] = r
    return region_map.reshape(-1)


def region_breakdown(args, dtype, device) -> dict:
    """Where the region torch path's time goes, in the processors' layout, each piece timed alone with
    the calls alternating, as a fraction of one plain 77-token cross-attention (its output copy back
    to (B, N, H·D) included, as a processor makes it)."""
    b, h, n, d, regions, tokens = 1, 8, args.region_length, args.region_dim, 5, 77
    gen = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randn(b, length, h, d, generator=gen).to(device, dtype).transpose(1, 2)
               for length in (n, regions * tokens, regions * tokens))
    region_map = box_map(n).to(device)
    fns = {"plain": lambda: processor_rows(F.scaled_dot_product_attention(q, k[:, :, :tokens], v[:, :, :tokens]))}
    for chunk in (128, 256):  # the steps of kernels.region._token_rows, spelled out to time them one by one
        plan = make_plan(region_map, b, regions, chunk=chunk)
        n_chunks, rows = len(plan.chunk_segment), len(plan.rows)

        def gather_q(plan=plan):
            return q.transpose(1, 2).reshape(b * n, h * d).index_select(0, plan.rows.clamp(min=0))

        q_chunks = gather_q().view(n_chunks, chunk, h, d).transpose(1, 2)
        segments = gather_segments(k, v, plan, tokens)
        k_chunks, v_chunks = segments.k, segments.v
        out = F.scaled_dot_product_attention(q_chunks, k_chunks, v_chunks).transpose(1, 2).reshape(rows, h * d)
        q_long = gather_q()[None].view(1, rows, h, d).transpose(1, 2)
        fns.update({
            f"chunks of {chunk}: SDPA over {n_chunks} chunks ({rows} rows)":
                lambda a=(q_chunks, k_chunks, v_chunks): F.scaled_dot_product_attention(*a),
            # not a region attention (every chunk reads region 0's keys): what the per-chunk K/V copies
            # cost in memory traffic, against the row above with the same products
            f"chunks of {chunk}: SDPA over the same chunks, all reading one K/V copy (stride 0)":
                lambda a=(q_chunks, k_chunks[:1].expand_as(k_chunks), v_chunks[:1].expand_as(v_chunks)):
                    F.scaled_dot_product_attention(*a),
            f"chunks of {chunk}: query rows gathered": gather_q,
            f"chunks of {chunk}: K/V segment per chunk": lambda plan=plan: gather_segments(k, v, plan, tokens),
            f"chunks of {chunk}: output rows back": lambda out=out, plan=plan: out.index_select(0, plan.inverse),
            f"chunks of {chunk}: one SDPA over the {rows} rows, one segment (no chunking)":
                lambda q_long=q_long: F.scaled_dot_product_attention(q_long, k[:, :, :tokens], v[:, :, :tokens]),
            f"chunks of {chunk}: whole torch path": lambda plan=plan: processor_rows(
                region.torch_path(q, k, v, region_map, tokens, plan=plan)),
        })
    faults: dict = {}
    ms = interleaved(fns, 6 * args.repeats, faults)
    ratio = {name: t / ms["plain"] for name, t in ms.items()}
    # Plain and the whole path again, each timed on the last of 4 calls in a row: with the memory its
    # own previous call freed at hand, the page faults that alternating calls cause each other are gone.
    in_a_row = {name: fn for name, fn in fns.items() if name == "plain" or name.endswith("whole torch path")}
    row_faults: dict = {}
    row_ms = interleaved(in_a_row, 2 * args.repeats, row_faults, block=4)
    for name, t in row_ms.items():
        ms[f"{name}, 4 calls in a row"] = t
        ratio[f"{name}, 4 calls in a row"] = t / row_ms["plain"]
        if name in row_faults:  # the CPU's
            faults[f"{name}, 4 calls in a row"] = row_faults[name]
    print_table(f"region torch path, piece by piece (processor layout, calls alternating; plain = "
                f"{ms['plain']:.3g} ms)", ["piece", "ms", "/ plain", "page faults / call (mean)"],
                [[name, t, f"{ratio[name]:.3f}", f"{faults[name]:.0f}" if name in faults else "-"]
                 for name, t in ms.items()])
    return {name: {"ms": t, "ratio_to_plain": ratio[name], "minor_page_faults": faults.get(name)}
            for name, t in ms.items()}


def sdpa_rows_by_length(args, dtype, h: int = 8, tokens: int = 77) -> dict:
    """SDPA's time per query row against one T-token segment, by sequence length, the same rows cut
    into sequences of each length (processor layout), relative to the longest: PyTorch's CPU flash
    kernel picks its query block from the sequence length, so short chunks pay for small blocks."""
    lengths = (64, 128, 191, 192, 256, 767, 768, 1536)
    total = 1536 * (1 if args.quick else 4)
    gen = torch.Generator(device="cpu").manual_seed(2)
    fns = {}
    for length in lengths:
        count = total // length
        q, k, v = (torch.randn(count, rows, h, args.region_dim, generator=gen).to(dtype).transpose(1, 2)
                   for rows in (length, tokens, tokens))
        fns[length] = (lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), count * length)
    ms = interleaved({length: fn for length, (fn, _) in fns.items()}, 3 * args.repeats)
    per_row = {length: ms[length] / fns[length][1] for length in lengths}
    longest = per_row[lengths[-1]]
    print_table(f"SDPA per query row by sequence length ({total} rows, {tokens} keys, {h} × {args.region_dim}; "
                f"relative to {lengths[-1]})", ["rows per sequence", "per row"],
                [[length, f"{per_row[length] / longest:.3f}"] for length in lengths])
    return {str(length): per_row[length] / longest for length in lengths}


def region_sorted_sdpa(q, k, v, region_map, tokens: int, order):
    """Region attention as masked SDPA is fed when it is given what Strata's kernels get: the queries
    (batch 1) in the cached plan's region-sorted order and the boolean mask built once, outside the
    timing; the result put back in raster order. Returns the call to time."""
    n_keys = k.shape[2]
    sorted_map = region_map[order]
    mask = sorted_map[:, None] == torch.arange(n_keys, device=q.device)[None] // tokens
    q_sorted = q[:, :, order]
    return lambda: torch.zeros_like(q).index_copy_(2, order, F.scaled_dot_product_attention(q_sorted, k, v,
                                                                                          attn_mask=mask))


def region_sorted_flex(q, k, v, region_map, tokens: int, order, flex_attention, create_block_mask):
    """The same for FlexAttention: tokens sorted by region so whole blocks of the mask are empty or full,
    the block mask built once outside the timing. Returns the call to time."""
    sorted_map = region_map[order]
    q_sorted = q[:, :, order]  # batch 1: the plan's flat token index is the token

    def mask_mod(bb, hh, qi, ki):
        return sorted_map[qi] == ki // tokens
    block_mask = create_block_mask(mask_mod, None, None, q.shape[2], k.shape[2], device=q.device)
    return lambda: torch.zeros_like(q).index_copy_(2, order, flex_attention(q_sorted, k, v, block_mask=block_mask))


def bench_region(args, dtype, device) -> dict:
    b, h, n, d, regions, tokens = 1, 8, args.region_length, args.region_dim, 5, 77
    gen = torch.Generator(device="cpu").manual_seed(1)
    q = torch.randn(b, h, n, d, generator=gen).to(device, dtype)
    k, v = (torch.randn(b, h, regions * tokens, d, generator=gen).to(device, dtype) for _ in range(2))
    region_map = box_map(n).to(device)
    ref = region.reference(q.double().cpu(), k.double().cpu(), v.double().cpu(), region_map.cpu(), tokens).to(device)
    flops = 4 * b * h * n * tokens * d
    plan = make_plan(region_map, b, regions)
    rows: list = []
    measure(rows, "reference", lambda: region.reference(q, k, v, region_map, tokens), flops, ref, max(2, args.repeats // 3))
    measure(rows, "naive", lambda: region.naive(q, k, v, region_map, tokens), flops, ref, args.repeats)
    measure(rows, "torch", lambda: region.torch_path(q, k, v, region_map, tokens), flops, ref, args.repeats)
    measure(rows, "torch (cached plan)", lambda: region.torch_path(q, k, v, region_map, tokens, plan=plan), flops, ref, args.repeats)
    segments = gather_segments(k, v, plan, tokens, region.token_major(q))  # as MQD keeps them over a denoising loop
    measure(rows, "torch (cached plan and K/V segments)",
            lambda: region.torch_path(q, k, v, region_map, tokens, plan=plan, segments=segments), flops, ref, args.repeats)
    measure(rows, "masked SDPA (region-sorted tokens, mask built once)",
            region_sorted_sdpa(q, k, v, region_map, tokens, plan.order), flops, ref, args.repeats)
    if args.flex and (flex := _flex()):
        measure(rows, "flex (compiled, region-sorted tokens)",
                region_sorted_flex(q, k, v, region_map, tokens, plan.order, *flex), flops, ref, args.repeats)
    peer(rows, "region", "xformers", "xformers (block-diagonal, cached plan)",
         lambda: peers.region_xformers(q, k, v, region_map, tokens, plan=plan), flops, ref, args.repeats, device, dtype)
    if CUDA and triton_available():
        measure(rows, "triton", lambda: region.triton_path(q, k, v, region_map, tokens), flops, ref, args.repeats)
        measure(rows, "triton (cached plan)", lambda: region.triton_path(q, k, v, region_map, tokens, plan=plan), flops, ref, args.repeats)
        packed_plan = make_plan(region_map, b, regions, packed=True)  # no padding between segments
        measure(rows, "triton (cached packed plan)",
                lambda: region.triton_path(q, k, v, region_map, tokens, plan=packed_plan), flops, ref, args.repeats)
    # The processors' layout: q, k, v are (B, H, N, D) views of to_q/to_k/to_v's (B, N, H·D) output, and
    # the attention's output goes back to (B, N, H·D) for to_out. Same values as q, k, v.
    qp, kp, vp = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    measure(rows, "torch (cached plan), processor layout", lambda: processor_rows(
        region.torch_path(qp, kp, vp, region_map, tokens, plan=plan)).view(b, n, h, d).transpose(1, 2),
        flops, ref, args.repeats)
    cpp = device == "cpu" and dtype == torch.float32 and region_cpp.available()
    if cpp:  # no padding, no K/V copies; what the dispatcher runs on this CPU
        measure(rows, "cpp (fused C++ loop, cached plan), processor layout", lambda: processor_rows(
            region_cpp.cpp_path(qp, kp, vp, region_map, tokens, plan=plan)).view(b, n, h, d).transpose(1, 2),
            flops, ref, args.repeats)
    k_plain, v_plain = k[:, :, :tokens].contiguous(), v[:, :, :tokens].contiguous()
    kp_plain, vp_plain = kp[:, :, :tokens], vp[:, :, :tokens]
    # Region against plain, calls alternating (the goal's ratio; separate medians drift on a busy CPU).
    segments_p = gather_segments(kp, vp, plan, tokens, region.token_major(qp))
    side_faults: dict = {}
    side_by_side = interleaved({
        "plain": lambda: F.scaled_dot_product_attention(q, k_plain, v_plain),
        "torch": lambda: region.torch_path(q, k, v, region_map, tokens, plan=plan),
        "plain, processor layout": lambda: processor_rows(F.scaled_dot_product_attention(qp, kp_plain, vp_plain)),
        "torch, processor layout": lambda: processor_rows(region.torch_path(qp, kp, vp, region_map, tokens, plan=plan)),
        "torch, processor layout, cached segments": lambda: processor_rows(
            region.torch_path(qp, kp, vp, region_map, tokens, plan=plan, segments=segments_p)),
        **({"cpp": lambda: region_cpp.cpp_path(q, k, v, region_map, tokens, plan=plan),
            "cpp, processor layout": lambda: processor_rows(region_cpp.cpp_path(qp, kp, vp, region_map, tokens, plan=plan))}
           if cpp else {}),
    }, 2 * args.repeats, side_faults)
    plain_ms = side_by_side["plain"]
    rows = finish(rows)
    triton = next((r for r in rows if r["name"] == "triton (cached plan)" and r["ms"]), None)
    packed = next((r for r in rows if r["name"] == "triton (cached packed plan)" and r["ms"]), None)
    result = {"shape": dict(batch=b, heads=h, queries=n, head_dim=d, regions=regions, tokens=tokens), "rows": rows,
              "plain_cross_attention_ms": plain_ms, "torch_vs_plain_ratio": side_by_side["torch"] / plain_ms,
              "plain_cross_attention_ms_processor_layout": side_by_side["plain, processor layout"],
              "torch_vs_plain_ratio_processor_layout":
                  side_by_side["torch, processor layout"] / side_by_side["plain, processor layout"],
              "torch_cached_segments_vs_plain_ratio_processor_layout":
                  side_by_side["torch, processor layout, cached segments"] / side_by_side["plain, processor layout"],
              "cpp_vs_plain_ratio": side_by_side["cpp"] / plain_ms if cpp else None,
              "cpp_vs_plain_ratio_processor_layout":
                  side_by_side["cpp, processor layout"] / side_by_side["plain, processor layout"] if cpp else None,
              "triton_vs_plain_ratio": triton["ms"] / plain_ms if triton else None,
              "triton_packed_vs_plain_ratio": packed["ms"] / plain_ms if packed else None,
              "minor_page_faults_per_call": side_faults or None}
    if triton:  # launch overhead included: what a pipeline issuing one call after another sees
        plain_b2b = back_to_back(lambda: F.scaled_dot_product_attention(q, k_plain, v_plain), args.repeats)
        result["plain_cross_attention_ms_back_to_back"] = plain_b2b
        result["triton_vs_plain_ratio_back_to_back"] = triton["ms_back_to_back"] / plain_b2b
    return result


def bench_blended(args, dtype, device) -> dict:
    b, h, n, d = 1, 8, args.region_length, args.region_dim
    gen = torch.Generator(device="cpu").manual_seed(2)
    q, q_hat, k, v = (torch.randn(b, h, n, d, generator=gen).to(device, dtype) for _ in range(4))
    w = 0.4
    ref = blended.reference(q.double().cpu(), k.double().cpu(), v.double().cpu(), q_hat.double().cpu(), w).to(device)
    flops = 4 * b * h * n * n * d
    rows: list = []
    measure(rows, "reference", lambda: blended.reference(q, k, v, q_hat, w), flops, ref, max(2, args.repeats // 3))
    measure(rows, "naive", lambda: blended.naive(q, k, v, q_hat, w), flops, ref, args.repeats)
    measure(rows, "torch", lambda: blended.torch_path(q, k, v, q_hat, w), flops, ref, args.repeats)
    peer(rows, "blended", "xformers", "xformers", lambda: peers.blended_xformers(q, k, v, q_hat, w), flops, ref,
         args.repeats, device, dtype)
    if CUDA and triton_available():
        measure(rows, "triton", lambda: blended.triton_path(q, k, v, q_hat, w), flops, ref, args.repeats)
    return {"shape": dict(batch=b, heads=h, queries=n, head_dim=d), "rows": finish(rows)}


def bench_shapes(args, dtype, device) -> dict:
    """The issue's shape range on a GPU: neighbour (6 groups, 3 neighbours, 8 heads) for head dims 40,
    64, 80, 160 and 64…4096 queries per group, triton and torch against naive; region (5 × 77
    tokens) at SD-1's three levels, triton and torch against one plain cross-attention."""
    neighbour_rows, region_rows = [], []
    index_cpu = neighbour.ring_index(6)
    index = index_cpu.to(device)
    for d in (40, 64, 80, 160):
        for length in (64, 256, 1024, 4096):
            q, k, v = (torch.randn(1, 8, 6, length, d, device=device, dtype=dtype) for _ in range(3))
            naive_ms = timed(lambda: neighbour.naive(q, k, v, index_cpu), args.repeats)
            torch_ms = timed(lambda: neighbour.torch_path(q, k, v, index), args.repeats)
            triton_ms = timed(lambda: neighbour.triton_path(q, k, v, index), args.repeats)
            flops = 4 * 8 * 6 * length * 3 * length * d
            neighbour_rows.append(dict(head_dim=d, length=length, naive_ms=naive_ms, torch_ratio=naive_ms / torch_ms,
                                       triton_ratio=naive_ms / triton_ms, triton_tflops=flops / (triton_ms * 1e-3) / 1e12))
    for d, n, b in ((40, 4096, 1), (40, 4096, 2), (80, 1024, 1), (160, 256, 1), (64, 4096, 1)):
        q = torch.randn(b, 8, n, d, device=device, dtype=dtype)
        k, v = (torch.randn(b, 8, 5 * 77, d, device=device, dtype=dtype) for _ in range(2))
        region_map = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(d)).to(device)
        plan = make_plan(region_map, b, 5)
        k_plain, v_plain = k[:, :, :77].contiguous(), v[:, :, :77].contiguous()
        plain_ms = timed(lambda: F.scaled_dot_product_attention(q, k_plain, v_plain), args.repeats)
        torch_ms = timed(lambda: region.torch_path(q, k, v, region_map, 77, plan=plan), args.repeats)
        triton_ms = timed(lambda: region.triton_path(q, k, v, region_map, 77, plan=plan), args.repeats)
        region_rows.append(dict(head_dim=d, queries=n, batch=b, plain_ms=plain_ms, torch_vs_plain=torch_ms / plain_ms,
                                triton_vs_plain=triton_ms / plain_ms))
    print_table("neighbour attention across shapes (× faster than naive; 6 groups, 3 neighbours, 8 heads)",
                ["head_dim", "queries / group", "naive ms", "torch ×", "triton ×", "triton TFLOP/s"],
                [[r["head_dim"], r["length"], r["naive_ms"], r["torch_ratio"], r["triton_ratio"], r["triton_tflops"]]
                 for r in neighbour_rows])
    print_table("region attention across shapes (time / one plain 77-token cross-attention; 5 regions)",
                ["head_dim", "queries", "batch", "plain ms", "torch / plain", "triton / plain"],
                [[r["head_dim"], r["queries"], r["batch"], r["plain_ms"], r["torch_vs_plain"], r["triton_vs_plain"]]
                 for r in region_rows])
    return {"neighbour": neighbour_rows, "region": region_rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--no-flex", dest="flex", action="store_false", help="skip compiled FlexAttention")
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--shapes", action="store_true", help="also sweep head dims and lengths (GPU with triton)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the region torch path's pieces against plain (processor layout)")
    args = parser.parse_args(argv)
    device = "cuda" if CUDA else "cpu"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if CUDA else torch.float32)
    args.neighbour_length, args.neighbour_dim = (64, 40) if args.quick else (1024, 80)
    args.region_length, args.region_dim = (256, 40) if args.quick else (4096, 40)
    result = {"machine": machine(), "dtype": str(dtype).replace("torch.", ""), "patterns": {}}
    if CUDA:
        result["matmul_bf16_tflops"] = matmul_tflops()
    else:  # the CPU's own limit in the run's dtype, beside the rows' TFLOP/s
        result["matmul_tflops"] = matmul_tflops(dtype, n=2048, device="cpu")
    for pattern, bench in (("neighbour", bench_neighbour), ("region", bench_region), ("blended", bench_blended)):
        data = bench(args, dtype, device)
        result["patterns"][pattern] = data
        header = ["implementation", "× vs naive", "ms"] + (["ms back-to-back"] if CUDA else []) + [
            "TFLOP/s", "peak extra MiB", "max abs err", "note"]
        table = [[r["name"], r["ratio_to_naive"] or "-", r["ms"] or "-"] + ([r["ms_back_to_back"] or "-"] if CUDA else [])
                 + [r["tflops"] or "-", r["peak_extra_mib"] if r["peak_extra_mib"] is not None else "-",
                    f"{r['max_abs_err']:.1e}" if r["max_abs_err"] is not None else "-", r["note"]] for r in data["rows"]]
        print_table(f"{pattern} attention {data['shape']} on {result['machine']}, {result['dtype']}", header, table)
        if pattern == "neighbour":
            print(f"SDPA alone on pre-gathered keys (the same FLOPs, no gather, no loop): {data['sdpa_core_ms']:.3g} ms, "
                  f"{data['sdpa_core_ratio_to_naive']:.2f}× naive: the most an SDPA-based path can gain here")
        if pattern == "region":
            print(f"plain 77-token cross-attention: {data['plain_cross_attention_ms']:.3g} ms; "
                  f"region (torch, cached plan) / plain = {data['torch_vs_plain_ratio']:.2f}; in the processors' "
                  f"layout (B, N, H·D): {data['torch_vs_plain_ratio_processor_layout']:.2f} "
                  f"(with K/V segments gathered once, as MQD runs it: "
                  f"{data['torch_cached_segments_vs_plain_ratio_processor_layout']:.2f}; "
                  f"plain {data['plain_cross_attention_ms_processor_layout']:.3g} ms; calls alternating"
                  + (f"; mean page faults per call, plain / region: {faults['plain, processor layout']:.0f} / "
                     f"{faults['torch, processor layout']:.0f})" if (faults := data["minor_page_faults_per_call"]) else ")")
                  + (f"; region (cpp, the fused C++ loop) / plain = {data['cpp_vs_plain_ratio']:.2f}, in the "
                     f"processors' layout {data['cpp_vs_plain_ratio_processor_layout']:.2f}"
                     if data["cpp_vs_plain_ratio"] else "")
                  + (f"; region (triton, cached plan) / plain = {data['triton_vs_plain_ratio']:.2f} "
                     f"(back-to-back, launch overhead included: {data['triton_vs_plain_ratio_back_to_back']:.2f}), "
                     f"packed plan {data['triton_packed_vs_plain_ratio']:.2f}"
                     if data["triton_vs_plain_ratio"] else ""))
        write_json(args.json, result)  # after each pattern, so a run cut short keeps what it measured
    if args.breakdown:
        result["region_breakdown"] = region_breakdown(args, dtype, device)
        if device == "cpu":
            result["sdpa_rows_by_length"] = sdpa_rows_by_length(args, dtype)
    if args.shapes and CUDA and triton_available():
        result["shapes"] = bench_shapes(args, dtype, device)
    if CUDA:
        print(f"\nbf16 matmul on this card: {result['matmul_bf16_tflops']:.0f} TFLOP/s")
    else:
        print(f"\n{result['dtype']} matmul (2048²) on this CPU: {result['matmul_tflops']:.3f} TFLOP/s")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
