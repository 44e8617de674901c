"""Fused attention for Strata's three attention patterns: neighbour, region and query-blended.

Each pattern module has `reference` (the spec), `naive` (what users write today), `torch_path`
(CPU / fallback) and `triton_path` (GPU). Call them through the dispatcher below.
"""

from kernels.dispatch import (BACKENDS, backend_for, blended_attention, last_backend, neighbour_attention,
                              region_attention, triton_available, use_backend)
from kernels.region import RegionPlan, RegionSegments, gather_segments, make_plan

__all__ = ["BACKENDS", "RegionPlan", "RegionSegments", "backend_for", "blended_attention", "gather_segments",
           "last_backend", "make_plan", "neighbour_attention", "region_attention", "triton_available", "use_backend"]
