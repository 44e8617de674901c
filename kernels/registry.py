"""Every implementation of every attention pattern, registered with the checks that say when it can
run (device, dtype, the extension or library it needs, whether it has a gradient, where it measured
slower), in the order the dispatcher tries them.

`choose(call)` returns the first backend whose checks pass, with the reason each one before it was
skipped; a backend asked for by name (per call, per block, or for the process) must pass its checks
or the call fails with the reason. Backends marked `automatic=False` run only when asked for: the
reference and the naive loop (for tests and benchmarks), and the peers (xformers, FlexAttention, SDPA
with a mask), which no measurement here has shown faster than the automatic choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from kernels import blended, neighbour, peers, region, region_cpp
from kernels._triton import triton

PATTERNS = ("neighbour", "region", "blended")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class Call:
    """What the checks see of one call. queries, head_dim: per group / per head, for shape rules."""

    pattern: str
    device: torch.device
    dtype: torch.dtype | None = None
    queries: int | None = None
    head_dim: int | None = None
    needs_grad: bool = False
    key_mask: bool = False  # region attention with padded prompts (some keys masked)


# A check returns why the backend cannot run this call, or None. forced: the backend was asked for
# by name (shape rules that only pick the faster path then step aside).
Check = Callable[[Call, bool], "str | None"]


@dataclass(frozen=True)
class Backend:
    name: str
    run: Callable
    checks: tuple[Check, ...] = ()
    differentiable: bool = True  # False: forward only (no autograd through it)
    automatic: bool = True  # False: runs only when asked for by name
    key_mask: bool = False  # takes a key padding mask (region attention)

    def refusal(self, call: Call, forced: bool = False) -> str | None:
        """Why this backend will not run the call (None: it will)."""
        if call.needs_grad and not self.differentiable:
            return "forward only, and this call needs gradients"
        if call.key_mask and not self.key_mask:
            return "takes no key padding mask, and this call's prompts are padded"
        for check in self.checks:
            if (reason := check(call, forced)) is not None:
                return reason
        if not forced and not self.automatic:
            return "runs only when asked for by name"
        return None


@dataclass(frozen=True)
class Choice:
    """The backend that runs a call, and why each backend tried before it was skipped."""

    backend: str
    skipped: dict[str, str] = field(default_factory=dict)


# ---- checks

def _triton_device(call: Call, forced: bool) -> str | None:
    if triton is None:
        return "triton is not installed"
    if call.device.type == "cuda":
        return None
    if forced and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "needs a CUDA device (or TRITON_INTERPRET=1, when asked for by name)"


def _float_dtype(call: Call, forced: bool) -> str | None:
    if call.dtype is not None and call.dtype not in FLOAT_DTYPES:
        return f"float16, bfloat16 or float32 only, got {call.dtype}"
    return None


def _sdpa_measured_faster(call: Call, forced: bool) -> str | None:
    if not forced and sdpa_wins(call.pattern, call.queries, call.head_dim):
        return f"SDPA measured faster at this shape ({call.queries} queries, head dim {call.head_dim})"
    return None


def sdpa_wins(pattern: str, queries: int | None, head_dim: int | None) -> bool:
    """Where the torch path beat the fused kernel on an H100 (benchmarks/RESULTS.md). Neighbour: 4096
    queries per group at head dims 40, 64 and 160, where the gather is cheap next to the attention and
    SDPA's kernel is faster than ours (at ≤ 2048 queries, and at head dim 80, the fused kernel won).
    Blended: lerp + SDPA ran 1.06–1.30× the naive path at every measured shape, the fused kernel
    0.50–1.44× (ahead at one or two of twelve shapes per run), so SDPA always; the fused kernel saves
    only the blended-query tensor (force it with backend="triton")."""
    if pattern == "blended":
        return True
    return pattern == "neighbour" and queries is not None and queries >= 4096 and head_dim != 80


def _cpu_float32(call: Call, forced: bool) -> str | None:
    if call.device.type != "cpu":
        return f"CPU only, the call is on {call.device.type}"
    if call.dtype is not None and call.dtype != torch.float32:
        return f"float32 only, got {call.dtype}"
    return None


def _cpp_built(call: Call, forced: bool) -> str | None:
    """Asking builds the extension if it is not built yet (~30 s once per machine)."""
    return None if region_cpp.available() else f"the C++ extension is unavailable ({region_cpp.unavailable_reason()})"


def _xformers_cuda(call: Call, forced: bool) -> str | None:
    if peers.xformers_ops() is None:
        return "xformers is not installed"
    if call.device.type != "cuda":
        return f"xformers has no {call.device.type.upper()} kernels"
    return None


def _flex_importable(call: Call, forced: bool) -> str | None:
    return None if peers.flex_available() else "this torch has no torch.nn.attention.flex_attention"


TRITON = (_triton_device, _float_dtype, _sdpa_measured_faster)
XFORMERS = (_xformers_cuda, _float_dtype)
FLEX = (_flex_importable, _float_dtype)


REGISTRY: dict[str, tuple[Backend, ...]] = {
    "neighbour": (
        Backend("triton", neighbour.triton_path, TRITON, differentiable=False),
        Backend("torch", neighbour.torch_path),
        Backend("xformers", peers.neighbour_xformers, XFORMERS, automatic=False),
        Backend("flex", peers.neighbour_flex, FLEX, automatic=False),
        Backend("sdpa_mask", peers.neighbour_sdpa_mask, automatic=False),
        Backend("naive", neighbour.naive, automatic=False),
        Backend("reference", neighbour.reference, automatic=False),
    ),
    "region": (
        Backend("triton", region.triton_path, TRITON, differentiable=False),
        Backend("cpp", region_cpp.cpp_path, (_cpu_float32, _cpp_built), differentiable=False),
        Backend("torch", region.torch_path, key_mask=True),
        Backend("xformers", peers.region_xformers, XFORMERS, automatic=False),
        Backend("flex", peers.region_flex, FLEX, automatic=False, key_mask=True),
        Backend("sdpa_mask", peers.region_sdpa_mask, automatic=False, key_mask=True),
        Backend("naive", region.naive, automatic=False),
        Backend("reference", region.reference, automatic=False, key_mask=True),
    ),
    "blended": (
        Backend("triton", blended.triton_path, TRITON, differentiable=False),
        Backend("torch", blended.torch_path),
        Backend("xformers", peers.blended_xformers, XFORMERS, automatic=False),
        Backend("flex", peers.blended_flex, FLEX, automatic=False),
        Backend("naive", blended.naive, automatic=False),
        Backend("reference", blended.reference, automatic=False),
    ),
}
BACKENDS = tuple(dict.fromkeys(b.name for backends in REGISTRY.values() for b in backends))


def backends(pattern: str) -> dict[str, Backend]:
    if pattern not in REGISTRY:
        raise ValueError(f"pattern: expected one of {PATTERNS}, got {pattern!r}")
    return {b.name: b for b in REGISTRY[pattern]}


def choose(call: Call, forced: str | None = None) -> Choice:
    """The backend for this call: `forced` when given and registered for the pattern (its checks must
    pass, else ValueError with the reason), otherwise the first in registry order whose checks pass."""
    registered = backends(call.pattern)
    skipped: dict[str, str] = {}
    if forced is not None:
        if forced not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {forced!r}")
        if forced in registered:
            if (reason := registered[forced].refusal(call, forced=True)) is not None:
                raise ValueError(f"backend {forced!r} cannot run this {call.pattern} call: {reason}; leave the "
                                 f"choice automatic, or pick another (backend='torch' runs everywhere)")
            return Choice(forced)
        skipped[forced] = f"asked for, but it has no {call.pattern} attention"
    for backend in registered.values():
        if (reason := backend.refusal(call)) is None:
            return Choice(backend.name, skipped)
        skipped[backend.name] = reason
    raise RuntimeError(f"no backend can run this {call.pattern} call: {skipped}")  # torch has no checks
