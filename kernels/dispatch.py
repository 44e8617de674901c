"""Pick an implementation per call: triton on CUDA when triton imports, torch otherwise (and on CUDA
wherever SDPA's own kernel measured faster: long neighbour calls and every blended call, `sdpa_wins`).
Region attention on the CPU in float32 runs the fused C++ loop (`kernels.region_cpp`, "cpp") when its
extension builds, else torch.

The choice can be forced for a block of code (`with use_backend("torch"): …`), for the process
(STRATA_ATTENTION_BACKEND=reference|torch|triton|naive|cpp), or per call (backend=…); "cpp" exists for
region attention only, and the other patterns run torch under it. It is visible:
`backend_for(device)` says what would run, and every call records what did (`last_backend()`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import torch

from kernels import blended, neighbour, region, region_cpp

BACKENDS = ("reference", "naive", "torch", "triton", "cpp")
_IMPLEMENTATIONS = {
    "neighbour": {"reference": neighbour.reference, "naive": neighbour.naive, "torch": neighbour.torch_path,
                  "triton": neighbour.triton_path},
    "region": {"reference": region.reference, "naive": region.naive, "torch": region.torch_path,
               "triton": region.triton_path, "cpp": region_cpp.cpp_path},
    "blended": {"reference": blended.reference, "naive": blended.naive, "torch": blended.torch_path,
                "triton": blended.triton_path},
}
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("strata_attention_backend", default=None)
_last: contextvars.ContextVar[dict] = contextvars.ContextVar("strata_attention_last")


def triton_available() -> bool:
    return neighbour.triton is not None


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    return name


def sdpa_wins(pattern: str, queries: int, head_dim: int) -> bool:
    """Where the torch path beat the fused kernel on an H100 (benchmarks/RESULTS.md). Neighbour: 4096
    queries per group at head dims 40, 64 and 160, where the gather is cheap next to the attention and
    SDPA's kernel is faster than ours (at ≤ 2048 queries, and at head dim 80, the fused kernel won).
    Blended: lerp + SDPA ran 1.06–1.30× the naive path at every measured shape, the fused kernel
    0.50–1.44× (ahead at one or two of twelve shapes per run), so SDPA always; the fused kernel saves
    only the blended-query tensor (force it with backend="triton")."""
    if pattern == "blended":
        return True
    return pattern == "neighbour" and queries >= 4096 and head_dim != 80


def backend_for(device: torch.device | str, pattern: str | None = None, queries: int | None = None,
                head_dim: int | None = None, dtype: torch.dtype | None = None) -> str:
    """The backend a call on this device would use now (pattern, queries, head_dim: the call's pattern
    and shape, for the rule `sdpa_wins`; dtype: region attention's fused CPU loop is float32 only).
    Asking about region attention on the CPU builds the C++ extension if it is not built yet."""
    forced = _forced.get() or os.environ.get("STRATA_ATTENTION_BACKEND")
    if forced:
        name = _check_backend(forced)
        return "torch" if name == "cpp" and pattern not in (None, "region") else name
    if triton_available() and torch.device(device).type == "cuda":
        return "torch" if pattern is not None and sdpa_wins(pattern, queries, head_dim) else "triton"
    if (pattern == "region" and torch.device(device).type == "cpu" and dtype == torch.float32
            and region_cpp.available()):
        return "cpp"
    return "torch"


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force a backend inside the block (None: automatic)."""
    token = _forced.set(_check_backend(name) if name else None)
    try:
        yield
    finally:
        _forced.reset(token)


def last_backend(pattern: str | None = None):
    """What the last call ran: {pattern: backend}, or one pattern's backend."""
    record = _last.get({})
    return record if pattern is None else record.get(pattern)


def _run(pattern: str, backend: str | None, device, *args, shape: tuple | None = None, **kwargs):
    name = _check_backend(backend) if backend else backend_for(device, pattern, *(shape or (None, None)))
    if name not in _IMPLEMENTATIONS[pattern]:
        raise ValueError(f"backend {name!r}: no {pattern} attention (it has {', '.join(_IMPLEMENTATIONS[pattern])})")
    record = dict(_last.get({}))
    record[pattern] = name
    _last.set(record)
    return _IMPLEMENTATIONS[pattern][name](*args, **kwargs)


def neighbour_attention(q, k, v, index, scale=None, q_hat=None, w=0.0, backend: str | None = None):
    """Group g of q attends to the groups index[g] of k/v (see kernels.neighbour)."""
    if q.dim() != 5 or k.shape[:3] != q.shape[:3] or k.shape != v.shape:
        raise ValueError(f"q, k, v: expected (B, H, G, L, D) with matching B, H, G; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    # Values are checked on a CPU index only: reading a GPU index back would stall every call. Keep a
    # GPU pipeline's index on the GPU (a CPU index is copied over on each call, which also waits).
    if index.dim() != 2 or index.shape[0] != q.shape[2] or (
            index.device.type == "cpu" and bool(((index >= q.shape[2]) | (index < -1)).any())):
        raise ValueError(f"index: expected ({q.shape[2]}, M) entries in [-1, {q.shape[2]}), got {tuple(index.shape)}")
    return _run("neighbour", backend, q.device, q, k, v, index, scale, q_hat=q_hat, w=w, shape=(q.shape[3], q.shape[4]))


def region_attention(q, k, v, region, segment_length: int, scale=None, plan=None, backend: str | None = None,
                     segments=None):
    """Token n of q attends to key segment region[n] only (see kernels.region). plan: a cached
    `make_plan` for the torch, triton and cpp paths; segments: cached `gather_segments` for the torch
    path (the others read k and v in place)."""
    name = _check_backend(backend) if backend else backend_for(q.device, "region", dtype=q.dtype)  # once per call
    extra = {"plan": plan} if plan is not None and name in ("torch", "triton", "cpp") else {}
    if segments is not None and name == "torch":
        extra["segments"] = segments
    return _run("region", name, q.device, q, k, v, region, segment_length, scale, **extra)


def blended_attention(q, k, v, q_hat, w, scale=None, backend: str | None = None):
    """Attention with q' = (1 − w)·q + w·q̂ (see kernels.blended)."""
    return _run("blended", backend, q.device, q, k, v, q_hat, w, scale, shape=(q.shape[2], q.shape[3]))
