"""Region cross-attention on the CPU as one fused C++ loop (`kernels/csrc/region_cpp.cpp`).

Per (segment, block of up to `BLOCK` of its query rows, head): gather the rows, attend to the
segment's T keys read in place (BLAS products, a vectorized softmax), write the rows back. Unlike the
torch path (SDPA over chunks of same-region rows), nothing is padded and no K/V is copied, and its
products are as large as one plain cross-attention's: PyTorch's CPU flash kernel takes small query
blocks for short sequences, which is what kept the torch path at 1.3–1.4× a plain cross-attention.

The extension is compiled on first use with `torch.utils.cpp_extension` (a C++ compiler and ninja;
about 30 s, cached under TORCH_EXTENSIONS_DIR). Where it cannot be built or loaded, `available()`
is False, `unavailable_reason()` says why, and the dispatcher keeps the torch path. float32 only.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from kernels.region import RegionPlan, _check, make_plan

BLOCK = 256  # query rows per product: 64–512 measured alike (benchmarks/RESULTS.md); 256 keeps a block in L2
SOURCE = Path(__file__).parent / "csrc" / "region_cpp.cpp"
_CAPABILITY_FLAGS = {  # ATen's vector types follow CPU_CAPABILITY; the flags let the compiler emit them
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512",
               "-DCPU_CAPABILITY=AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}
_lock = threading.Lock()
_state: dict = {}  # "module" (None where it cannot be built) and "reason", once tried


def _extension():
    with _lock:  # one build per process, whichever thread asks first (the app starts it in the background)
        if "module" not in _state:
            _state["module"], _state["reason"] = _build()
        return _state["module"]


def _build():
    if os.environ.get("STRATA_NO_CPU_EXTENSION"):
        return None, "STRATA_NO_CPU_EXTENSION is set"
    try:
        from torch.utils.cpp_extension import load
        capability = torch.backends.cpu.get_cpu_capability()
        flags = ["-O3", "-fopenmp", *_CAPABILITY_FLAGS.get(capability, [])]
        module = load(f"strata_region_cpp_{capability.lower()}", [str(SOURCE)], extra_cflags=flags,
                      extra_ldflags=["-fopenmp"], verbose=False)
        return module, None
    except Exception as exc:  # no compiler, no ninja, no BLAS symbol: the torch path serves instead
        lines = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"


def available() -> bool:
    """True when the extension is built (building it now if it was not: ~30 s the first time)."""
    return _extension() is not None


def unavailable_reason() -> str | None:
    """Why the extension could not be built or loaded (None when it is available)."""
    return None if available() else _state["reason"]


def cpp_path(q, k, v, region, segment_length: int, scale=None, plan: RegionPlan | None = None,
             block: int = BLOCK):
    """Same contract as `kernels.region.reference` (q (B, H, N, D), k/v (B, H, R·T, D), region (N,) or
    (B, N), -1 → a zero row); float32 CPU tensors. The output keeps q's layout (token-major q, as
    attention processors pass it, gives token-major output). plan: a cached `make_plan` (its token
    order and segment offsets are used; chunk size and packing do not matter here)."""
    n_regions = _check(q, k, region, segment_length)
    if q.device.type != "cpu" or q.dtype != torch.float32 or k.dtype != torch.float32 or v.dtype != torch.float32:
        raise ValueError(f"region cpp path: float32 CPU tensors only, got {q.dtype} on {q.device}")
    ext = _extension()
    if ext is None:
        raise RuntimeError(f"region cpp path: the C++ extension is unavailable ({unavailable_reason()}); "
                           "use the torch path")
    b, _, n, d = q.shape
    plan = plan or make_plan(region, b, n_regions)
    if plan.batch != b or plan.tokens != n or plan.n_regions != n_regions:
        raise ValueError(f"plan: built for batch {plan.batch}, {plan.tokens} tokens, {plan.n_regions} regions; "
                         f"the call has {b}, {n}, {n_regions}")
    # BLAS reads keys and values as matrices: unit stride in D, and rows at least D apart
    q, k, v = (x if x.stride(-1) == 1 and x.stride(-2) >= d else x.contiguous() for x in (q, k, v))
    return ext.region_forward(q, k, v, plan.order, plan.segment_offsets, segment_length,
                              d ** -0.5 if scale is None else float(scale), block)
