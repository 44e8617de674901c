"""Pick an implementation per call from the registry (`kernels.registry`): the first backend whose
checks pass. By default that is triton on CUDA (torch wherever SDPA measured faster, `sdpa_wins`), the
fused C++ loop for float32 region attention on the CPU, torch otherwise; a call that needs gradients
(some input requires grad, grad mode on) skips the forward-only kernels.

The choice can be forced for a block of code (`with use_backend("torch"): …`), for the process
(STRATA_ATTENTION_BACKEND=<name>), or per call (backend=…); a forced backend must pass its checks
(else the call fails saying why), and one a pattern does not have (e.g. "cpp" for neighbour attention)
leaves that pattern to the automatic choice. It is visible: `backend_for(…)` says what would run,
every call records what did (`last_backend()`), and `last_choice(pattern)` why the others did not.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import torch

from kernels.registry import BACKENDS, Call, Choice, backends, choose, sdpa_wins  # noqa: F401 (re-exported)

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("strata_attention_backend", default=None)
_last: contextvars.ContextVar[dict] = contextvars.ContextVar("strata_attention_last")


def triton_available() -> bool:
    from kernels._triton import triton
    return triton is not None


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    return name


def forced_backend() -> str | None:
    """The backend asked for by `use_backend` or STRATA_ATTENTION_BACKEND, if any."""
    forced = _forced.get() or os.environ.get("STRATA_ATTENTION_BACKEND")
    return _check_backend(forced) if forced else None


def needs_grad(*tensors) -> bool:
    """Will autograd want a gradient through a call on these tensors (grad mode on, one requires grad)?"""
    return torch.is_grad_enabled() and any(torch.is_tensor(t) and t.requires_grad for t in tensors)


def choice_for(device: torch.device | str, pattern: str = "neighbour", queries: int | None = None,
               head_dim: int | None = None, dtype: torch.dtype | None = None, needs_grad: bool = False,
               backend: str | None = None, key_mask: bool = False) -> Choice:
    """The backend a call with these properties would run now, and why the others were skipped."""
    call = Call(pattern, torch.device(device), dtype, queries, head_dim, needs_grad, key_mask)
    return choose(call, _check_backend(backend) if backend else forced_backend())


def backend_for(device: torch.device | str, pattern: str | None = None, queries: int | None = None,
                head_dim: int | None = None, dtype: torch.dtype | None = None, needs_grad: bool = False,
                key_mask: bool = False) -> str:
    """The name of the backend a call on this device would use now (pattern defaults to neighbour;
    queries, head_dim: the call's shape, for `sdpa_wins`; dtype: the fused CPU loop is float32 only).
    Asking about region attention on the CPU builds the C++ extension if it is not built yet."""
    return choice_for(device, pattern or "neighbour", queries, head_dim, dtype, needs_grad, key_mask=key_mask).backend


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
    record = {p: c.backend for p, c in _last.get({}).items()}
    return record if pattern is None else record.get(pattern)


def last_choice(pattern: str) -> Choice | None:
    """The last call of this pattern: its backend and why each one tried before it was skipped."""
    return _last.get({}).get(pattern)


def _dispatch(pattern: str, backend: str | None, tensors: tuple, shape: tuple, key_mask: bool = False) -> Choice:
    """Choose the backend for a call on these tensors (q first) and record the choice."""
    q = tensors[0]
    choice = choice_for(q.device, pattern, *shape, dtype=q.dtype, needs_grad=needs_grad(*tensors), backend=backend,
                        key_mask=key_mask)
    record = dict(_last.get({}))
    record[pattern] = choice
    _last.set(record)
    return choice


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
    choice = _dispatch("neighbour", backend, (q, k, v, q_hat), (q.shape[3], q.shape[4]))
    return backends("neighbour")[choice.backend].run(q, k, v, index, scale, q_hat=q_hat, w=w)


def region_attention(q, k, v, region, segment_length: int, scale=None, plan=None, backend: str | None = None,
                     segments=None, key_mask=None):
    """Token n of q attends to key segment region[n] only (see kernels.region). plan: a cached
    `make_plan` for the torch, triton, cpp and xformers paths; segments: cached `gather_segments` for
    the torch path (the others read k and v in place); key_mask: (B, R·T) bool, False for padding keys
    (T5 prompts), which only some backends take."""
    name = _dispatch("region", backend, (q, k, v), (q.shape[2], q.shape[3]), key_mask=key_mask is not None).backend
    extra = {"plan": plan} if plan is not None and name in ("torch", "triton", "cpp", "xformers") else {}
    if segments is not None and name == "torch":
        extra["segments"] = segments
    if key_mask is not None:
        extra["key_mask"] = key_mask
    return backends("region")[name].run(q, k, v, region, segment_length, scale, **extra)


def blended_attention(q, k, v, q_hat, w, scale=None, backend: str | None = None):
    """Attention with q' = (1 − w)·q + w·q̂ (see kernels.blended)."""
    choice = _dispatch("blended", backend, (q, k, v, q_hat), (q.shape[2], q.shape[3]))
    return backends("blended")[choice.backend].run(q, k, v, q_hat, w, scale)
