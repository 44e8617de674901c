"""Fused attention for Strata's three attention patterns: neighbour, region and query-blended.

Each pattern module has `reference` (the spec), `naive` (what users write today), `torch_path`
(CPU / fallback) and `triton_path` (GPU); `region_cpp` a fused CPU loop; `peers` the implementations a
user could pick instead (xformers, FlexAttention, SDPA with a mask). `registry` lists them all with the
checks that say when each can run; call them through the dispatcher below.
"""

from kernels.dispatch import (BACKENDS, backend_for, blended_attention, choice_for, last_backend, last_choice,
                              needs_grad, neighbour_attention, region_attention, triton_available, use_backend)
from kernels.region import RegionPlan, RegionSegments, gather_segments, make_plan

__all__ = ["BACKENDS", "RegionPlan", "RegionSegments", "backend_for", "blended_attention", "choice_for",
           "gather_segments", "last_backend", "last_choice", "make_plan", "needs_grad", "neighbour_attention", "region_attention",
           "triton_available", "use_backend"]
