"""Every implementation of every pattern against the float64 reference, on fresh random inputs.

Tolerances (max abs error, unit-variance inputs): float64 paths 1e-10; float32 2e-5; float16 5e-3;
bfloat16 (torch path only on CPU; Triton bf16 is checked on a GPU, `tl.dot` on bf16 is wrong
under the interpreter) 3e-2.
"""

import pytest
import torch

from kernels import (backend_for, blended_attention, last_backend, make_plan, neighbour_attention,
                     region_attention, triton_available, use_backend)
from kernels import blended, neighbour, region

TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def ring_index(groups: int, with_gap: bool = False) -> torch.Tensor:
    """Self, right and left ring neighbours; optionally a first group with only itself (-1 slots)."""
    g = torch.arange(groups)
    index = torch.stack([g, (g + 1) % groups, (g - 1) % groups], 1)
    if with_gap:
        index[0, 1:] = -1
    return index


def _rand(*shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _close(out, ref, dtype):
    assert torch.isfinite(out).all()
    err = (out.double().cpu() - ref).abs().max().item()
    assert err <= TOL[dtype], f"max abs error {err:.2e} > {TOL[dtype]:.0e} for {dtype}"


# ---- neighbour ----

@pytest.mark.parametrize("head_dim", [40, 64, 80, 160])
@pytest.mark.parametrize("path, dtype", [("naive", torch.float64), ("torch", torch.float64), ("torch", torch.float32),
                                         ("torch", torch.bfloat16), ("triton", torch.float32), ("triton", torch.float16)])
def test_neighbour_matches_reference(head_dim, path, dtype):
    if path == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    b, h, groups, lq, lk = 1, 2, 6, 24, 17
    seed = head_dim * 7 + len(path)
    q, k, v = _rand(b, h, groups, lq, head_dim, seed=seed), _rand(b, h, groups, lk, head_dim, seed=seed + 1), _rand(b, h, groups, lk, head_dim, seed=seed + 2)
    index = ring_index(groups, with_gap=head_dim == 80)
    ref = neighbour.reference(q, k, v, index)
    kwargs = dict(block_m=16, block_n=16) if path == "triton" else {}
    fn = {"naive": neighbour.naive, "torch": neighbour.torch_path, "triton": neighbour.triton_path}[path]
    out = fn(*(t.to(DEVICE, dtype) for t in (q, k, v)), index, **kwargs)
    _close(out, ref, dtype)


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_neighbour_with_blended_query(path):
    if path == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    q, q_hat = _rand(2, 2, 3, 20, 40, seed=1), _rand(2, 2, 3, 20, 40, seed=2)
    k, v = _rand(2, 2, 3, 12, 40, seed=3), _rand(2, 2, 3, 12, 40, seed=4)
    index = ring_index(3)
    for w in (0.35, torch.rand(2, 1, 3, 20, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)):
        ref = neighbour.reference(q, k, v, index, q_hat=q_hat, w=w)
        if path == "torch":
            out = neighbour.torch_path(q, k, v, index, q_hat=q_hat, w=w)
            _close(out, ref, torch.float64)
        else:
            f = lambda t: t.to(DEVICE, torch.float32)  # noqa: E731
            out = neighbour.triton_path(f(q), f(k), f(v), index, q_hat=f(q_hat), w=f(w) if torch.is_tensor(w) else w,
                                        block_m=16, block_n=16)
            _close(out, ref, torch.float32)


def test_neighbour_query_with_no_groups_is_zero_not_nan():
    q, k, v = _rand(1, 1, 2, 8, 16, seed=0), _rand(1, 1, 2, 8, 16, seed=1), _rand(1, 1, 2, 8, 16, seed=2)
    index = torch.tensor([[0, 1], [-1, -1]])
    for backend in ("reference", "torch") + (("triton",) if triton_available() else ()):
        dtype = torch.float32 if backend == "triton" else torch.float64
        out = neighbour_attention(q.to(dtype), k.to(dtype), v.to(dtype), index, backend=backend)
        assert torch.isfinite(out).all() and out[:, :, 1].abs().max() == 0


# ---- region ----

@pytest.mark.parametrize("head_dim", [40, 64, 80, 160])
@pytest.mark.parametrize("path, dtype", [("naive", torch.float64), ("torch", torch.float64), ("torch", torch.float32),
                                         ("torch", torch.bfloat16), ("triton", torch.float32), ("triton", torch.float16)])
def test_region_matches_reference(head_dim, path, dtype):
    if path == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    b, h, n, regions, tokens = 2, 2, 45, 3, 11
    seed = head_dim * 5 + len(path)
    q = _rand(b, h, n, head_dim, seed=seed)
    k, v = _rand(b, h, regions * tokens, head_dim, seed=seed + 1), _rand(b, h, regions * tokens, head_dim, seed=seed + 2)
    gen = torch.Generator().manual_seed(seed)
    region_map = torch.randint(-1, regions, (n,) if head_dim != 64 else (b, n), generator=gen)
    ref = region.reference(q, k, v, region_map, tokens)
    fn = {"naive": region.naive, "torch": region.torch_path, "triton": region.triton_path}[path]
    kwargs = dict(chunk=16) if path == "triton" else {}
    out = fn(*(t.to(DEVICE, dtype) for t in (q, k, v)), region_map.to(DEVICE), tokens, **kwargs)
    _close(out, ref, dtype)


def test_region_plan_groups_tokens_by_segment():
    region_map = torch.tensor([2, 0, 0, -1, 2, 1, 0])
    plan = make_plan(region_map, batch=1, n_regions=3, chunk=2)
    rows = plan.rows.view(-1, 2)
    for chunk_rows, segment in zip(rows, plan.chunk_segment):
        real = chunk_rows[chunk_rows >= 0]
        assert (region_map[real] == segment).all()
    assert sorted(plan.rows[plan.rows >= 0].tolist()) == [0, 1, 2, 4, 5, 6]  # token 3 is uncovered


def test_region_rejects_bad_maps():
    q, k = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 6, 8)
    with pytest.raises(ValueError, match="region"):
        region_attention(q, k, k, torch.tensor([0, 1, 5, 0]), 3)
    with pytest.raises(ValueError, match="region"):
        region_attention(q, k, k, torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="segment_length"):
        region_attention(q, k, k, torch.tensor([0, 1, 0, 0]), 4)


# ---- blended ----

@pytest.mark.parametrize("path, dtype", [("naive", torch.float64), ("torch", torch.float64), ("triton", torch.float32),
                                         ("triton", torch.float16)])
def test_blended_matches_reference(path, dtype):
    if path == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    q, q_hat, k, v = (_rand(1, 2, 33, 80, seed=s) for s in range(4))
    w = torch.rand(1, 1, 33, 1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = blended.reference(q, k, v, q_hat, w)
    fn = {"naive": blended.naive, "torch": blended.torch_path, "triton": blended.triton_path}[path]
    out = fn(*(t.to(DEVICE, dtype) for t in (q, k, v, q_hat)), w.to(DEVICE, dtype))
    _close(out, ref, dtype)


# ---- dispatcher ----

def test_dispatcher_picks_by_device_and_can_be_forced():
    assert backend_for("cpu") == "torch"
    q, k, v = _rand(1, 1, 2, 4, 8, seed=0), _rand(1, 1, 2, 4, 8, seed=1), _rand(1, 1, 2, 4, 8, seed=2)
    index = ring_index(2)[:, :2]
    auto = neighbour_attention(q, k, v, index)
    assert last_backend("neighbour") == "torch"
    with use_backend("reference"):
        assert backend_for("cpu") == "reference"
        forced = neighbour_attention(q, k, v, index)
        assert last_backend("neighbour") == "reference"
    assert backend_for("cpu") == "torch"
    _close(auto, forced, torch.float64)
    blended_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], q[:, :, 0], 0.5, backend="naive")
    assert last_backend("blended") == "naive" and last_backend("neighbour") == "reference"
    with pytest.raises(ValueError, match="backend"):
        neighbour_attention(q, k, v, index, backend="cuda-magic")


def test_dispatcher_validates_shapes():
    q = torch.zeros(1, 1, 3, 4, 8)
    with pytest.raises(ValueError, match="index"):
        neighbour_attention(q, q, q, torch.tensor([[0, 3], [1, 0], [2, 1]]))
    with pytest.raises(ValueError, match="q, k, v"):
        neighbour_attention(q, q[:, :, :2], q[:, :, :2], torch.tensor([[0], [1], [2]]))


def test_region_plan_is_reused_by_the_dispatcher():
    q, k, v = _rand(1, 2, 30, 16, seed=0), _rand(1, 2, 2 * 5, 16, seed=1), _rand(1, 2, 2 * 5, 16, seed=2)
    region_map = torch.randint(0, 2, (30,), generator=torch.Generator().manual_seed(3))
    plan = make_plan(region_map, 1, 2)
    _close(region_attention(q, k, v, region_map, 5, plan=plan), region.reference(q, k, v, region_map, 5), torch.float64)
