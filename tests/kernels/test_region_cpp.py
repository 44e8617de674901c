"""The fused CPU region kernel (kernels/csrc/region_cpp.cpp) against the reference, on fresh random
inputs: float32, max abs error ≤ 2e-5 against the float64 reference (observed ~1e-6)."""

import pytest
import torch

from kernels import backend_for, last_backend, make_plan, region_attention, region_cpp, use_backend
from kernels.region import reference

pytestmark = pytest.mark.skipif(not region_cpp.available(),
                                reason=f"the C++ extension did not build: {region_cpp.unavailable_reason()}")
ATOL = 2e-5


def _inputs(b, h, n, d, regions, tokens, seed, token_major=True):
    gen = torch.Generator().manual_seed(seed)
    if token_major:  # what attention processors pass: a (B, H, N, D) view of (B, N, H, D) memory
        q, k, v = (torch.randn(b, length, h, d, generator=gen).transpose(1, 2)
                   for length in (n, regions * tokens, regions * tokens))
    else:
        q, k, v = (torch.randn(b, h, length, d, generator=gen) for length in (n, regions * tokens, regions * tokens))
    return q, k, v, gen


@pytest.mark.parametrize("b,h,n,d,regions,tokens", [
    (1, 8, 256, 40, 5, 77),    # SD-1's first level, 5 prompts
    (2, 2, 64, 160, 2, 77),    # the deepest level's head dim
    (1, 3, 100, 80, 3, 7),     # odd sizes everywhere: N, T, a head dim that is not a power of two
    (2, 4, 33, 64, 4, 5),      # SDXL's head dim, short segments
])
@pytest.mark.parametrize("token_major", [True, False])
def test_cpp_path_matches_the_reference(b, h, n, d, regions, tokens, token_major):
    q, k, v, gen = _inputs(b, h, n, d, regions, tokens, seed=n + d, token_major=token_major)
    region = torch.randint(-1, regions, (b, n), generator=gen)  # per-batch maps, some tokens uncovered
    out = region_cpp.cpp_path(q, k, v, region, tokens)
    expected = reference(q.double(), k.double(), v.double(), region, tokens)
    assert (out.double() - expected).abs().max().item() <= ATOL
    assert out.stride() == q.stride(), "the output keeps q's layout"
    assert out[(region == -1)[:, None, :, None].expand_as(out)].abs().max() == 0  # uncovered rows are zeros


def test_cpp_path_takes_any_plan_block_and_scale_and_a_shared_map():
    q, k, v, gen = _inputs(1, 2, 300, 40, 3, 77, seed=3)
    region = torch.randint(0, 3, (300,), generator=gen)  # one map for the batch, every token covered
    expected = reference(q.double(), k.double(), v.double(), region, 77, scale=0.3)
    for plan in (None, make_plan(region, 1, 3), make_plan(region, 1, 3, chunk=16, packed=True)):
        for block in (1, 7, 256, 1024):
            out = region_cpp.cpp_path(q, k, v, region, 77, scale=0.3, plan=plan, block=block)
            assert (out.double() - expected).abs().max().item() <= ATOL
    views = q[..., ::2], k[..., :20], v[..., 20:]  # a strided head dim (copied) and sliced ones (read as they are)
    expected = reference(*(x.double() for x in views), region, 77)
    assert (region_cpp.cpp_path(*views, region, 77).double() - expected).abs().max().item() <= ATOL
    views = q, k[:, :, :1].expand_as(k), v  # every key the same row (stride 0 between keys): copied for BLAS
    expected = reference(*(x.double() for x in views), region, 77)
    assert (region_cpp.cpp_path(*views, region, 77).double() - expected).abs().max().item() <= ATOL


def test_cpp_path_refuses_what_it_cannot_run():
    q, k, v, _ = _inputs(1, 2, 16, 8, 2, 4, seed=0)
    region = torch.zeros(16, dtype=torch.long)
    with pytest.raises(ValueError, match="float32 CPU tensors only"):
        region_cpp.cpp_path(q.half(), k.half(), v.half(), region, 4)
    with pytest.raises(ValueError, match="plan: built for"):
        region_cpp.cpp_path(q, k, v, region, 4, plan=make_plan(torch.zeros(8, dtype=torch.long), 1, 2))
    with pytest.raises(ValueError, match="region: expected shape"):
        region_cpp.cpp_path(q, k, v, torch.zeros(15, dtype=torch.long), 4)


def test_dispatcher_runs_the_cpp_kernel_for_float32_region_attention_on_the_cpu():
    assert backend_for("cpu", "region", dtype=torch.float32) == "cpp"
    assert backend_for("cpu", "region", dtype=torch.float16) == "torch"
    assert backend_for("cpu") == "torch" and backend_for("cpu", "neighbour", 64, 40, dtype=torch.float32) == "torch"
    q, k, v, gen = _inputs(1, 2, 40, 16, 2, 5, seed=1)
    region = torch.randint(0, 2, (40,), generator=gen)
    out = region_attention(q, k, v, region, 5)
    assert last_backend("region") == "cpp"
    with use_backend("torch"):
        torch.testing.assert_close(region_attention(q, k, v, region, 5), out, atol=ATOL, rtol=0)
        assert last_backend("region") == "torch"
    with use_backend("cpp"):  # forced: region runs it, the other patterns run torch
        assert backend_for("cpu", "region", dtype=torch.float32) == "cpp"
        assert backend_for("cpu", "neighbour", 64, 40) == "torch"


def test_cpp_kernel_checks_its_own_arguments():
    q, k, v, _ = _inputs(1, 2, 16, 8, 2, 4, seed=0)
    plan = make_plan(torch.zeros(16, dtype=torch.long), 1, 2)
    with pytest.raises(RuntimeError, match="must be positive"):
        region_cpp.cpp_path(q, k, v, torch.zeros(16, dtype=torch.long), 4, plan=plan, block=0)
