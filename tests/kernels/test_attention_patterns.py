"""Every implementation of every pattern against the float64 reference, on fresh random inputs.

Tolerances (max abs error, unit-variance inputs): float64 paths 1e-10; float32 2e-5 (on a GPU the
Triton kernels' float32 products use TF32: 5e-3); float16 5e-3; bfloat16 3e-2 (the torch path
everywhere; Triton bf16 only on a GPU: `tl.dot` on bf16 is wrong under the interpreter).
"""

import pytest
import torch

from kernels import (backend_for, blended_attention, gather_segments, last_backend, make_plan, neighbour_attention,
                     region_attention, triton_available, use_backend)
from kernels import blended, neighbour, region
from kernels._triton import split_head_dim
from kernels.neighbour import window_start

TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_PATHS = [("triton", torch.float32), ("triton", torch.float16)] + (
    [("triton", torch.bfloat16)] if DEVICE == "cuda" else [])


def _tol(path, dtype):
    return 5e-3 if path == "triton" and dtype == torch.float32 and DEVICE == "cuda" else TOL[dtype]


def ring_index(groups: int, with_gap: bool = False) -> torch.Tensor:
    """Self, right and left ring neighbours; optionally a first group with only itself (-1 slots)."""
    index = neighbour.ring_index(groups)
    if with_gap:
        index[0, 1:] = -1
    return index


def _rand(*shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _close(out, ref, dtype, tol=None):
    tol = TOL[dtype] if tol is None else tol
    assert torch.isfinite(out).all()
    err = (out.double().cpu() - ref).abs().max().item()
    assert err <= tol, f"max abs error {err:.2e} > {tol:.0e} for {dtype}"


def test_head_dim_tiles_cover_the_head_dim_with_little_padding():
    assert split_head_dim(40) == (32, 16) and split_head_dim(80) == (64, 16) and split_head_dim(160) == (128, 32)
    assert split_head_dim(64) == (64, 0) and split_head_dim(8) == (16, 0) and split_head_dim(96) == (64, 32)
    assert split_head_dim(100) == (128, 0)  # 64 + 64 is no better than one tile of 128
    for d in range(1, 300):
        first, second = split_head_dim(d)
        assert first + second >= d and first >= 16 and (second == 0 or second >= 16)
        assert first & (first - 1) == 0 and second & (second - 1) == 0


# ---- neighbour ----

@pytest.mark.parametrize("head_dim", [40, 64, 80, 160])
@pytest.mark.parametrize("path, dtype", [("naive", torch.float64), ("torch", torch.float64), ("torch", torch.float32),
                                         ("torch", torch.bfloat16)] + TRITON_PATHS)
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
    _close(out, ref, dtype, _tol(path, dtype))
    if path == "triton" and dtype == torch.float32:  # the one-padded-tile launch too
        _close(fn(*(t.to(DEVICE, dtype) for t in (q, k, v)), index, split=False, **kwargs), ref, dtype, _tol(path, dtype))


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
            _close(out, ref, torch.float32, _tol("triton", torch.float32))


def test_window_patterns_read_overlapping_views_and_match_the_reference():
    g = torch.arange(6)
    ring = ring_index(6)
    assert window_start(ring) == 5 and window_start(ring[:, [2, 0, 1]]) == 5  # any order within a row
    assert window_start(torch.stack([g, (g + 1) % 6], 1)) == 0 and window_start(ring_index(3)) == 0
    assert window_start(torch.stack([g, (g + 2) % 6], 1)) is None  # not contiguous
    assert window_start(ring_index(6, with_gap=True)) is None and window_start(torch.tensor([[0, 1, 1], [1, 0, 0]])) is None
    assert window_start(torch.zeros(6, 0, dtype=torch.long)) is None
    assert window_start(ring.cuda() if torch.cuda.is_available() else ring.to("meta")) is None  # CPU indexes only
    q, k, v = _rand(2, 2, 6, 9, 40, seed=11), _rand(2, 2, 6, 7, 40, seed=12), _rand(2, 2, 6, 7, 40, seed=13)
    for index in (ring[:, [2, 0, 1]], torch.stack([(g + 2) % 6, (g + 3) % 6], 1), torch.stack([g, (g + 2) % 6], 1)):
        _close(neighbour.torch_path(q, k, v, index), neighbour.reference(q, k, v, index), torch.float64)


def test_neighbour_torch_path_with_unused_slots_anywhere_matches_the_reference_and_its_gradients():
    """The torch path sets rows apart by how many groups they list (no masked SDPA). Guards against a
    row read with the wrong groups (−1 slots first or in the middle, rows of 0 … M groups, repeats)
    and against gradients that do not reach q, k and v as the reference's do (the crossview training
    stage runs backward through it). Float64, tolerance 1e-7."""
    gen = torch.Generator().manual_seed(5)
    index = torch.tensor([[0, 1, -1, 2], [-1, -1, 1, -1], [2, 2, 0, 1], [-1, -1, -1, -1], [4, -1, 3, -1]])
    leaves = [torch.randn(2, 3, 5, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    up = torch.randn(2, 3, 5, 6, 8, generator=gen, dtype=torch.float64)
    out = neighbour.torch_path(*leaves, index)
    ref = neighbour.reference(*leaves, index)
    torch.testing.assert_close(out, ref, atol=1e-7, rtol=1e-7)
    grads = torch.autograd.grad((out * up).sum(), leaves)
    expected = torch.autograd.grad((ref * up).sum(), leaves)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-7)


def test_neighbour_query_with_no_groups_is_zero_not_nan():
    q, k, v = _rand(1, 1, 2, 8, 16, seed=0), _rand(1, 1, 2, 8, 16, seed=1), _rand(1, 1, 2, 8, 16, seed=2)
    index = torch.tensor([[0, 1], [-1, -1]])
    for backend in ("reference", "torch") + (("triton",) if triton_available() else ()):
        dtype, device = (torch.float32, DEVICE) if backend == "triton" else (torch.float64, "cpu")
        out = neighbour_attention(*(t.to(device, dtype) for t in (q, k, v)), index, backend=backend)
        assert torch.isfinite(out).all() and out[:, :, 1].abs().max() == 0


# ---- region ----

@pytest.mark.parametrize("head_dim", [40, 64, 80, 160])
@pytest.mark.parametrize("path, dtype", [("naive", torch.float64), ("torch", torch.float64), ("torch", torch.float32),
                                         ("torch", torch.bfloat16)] + TRITON_PATHS)
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
    _close(out, ref, dtype, _tol(path, dtype))
    if path == "triton" and dtype == torch.float32:  # the one-padded-tile launch, and K/V through descriptors
        for variant in (dict(split=False), dict(kv_descriptors=True), dict(packed=True)):
            out = fn(*(t.to(DEVICE, dtype) for t in (q, k, v)), region_map.to(DEVICE), tokens, **variant, **kwargs)
            _close(out, ref, dtype, _tol(path, dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch_map", [False, True])
def test_region_torch_path_in_the_processors_token_major_layout(dtype, batch_map):
    # q, k, v as processors make them: (B, H, N, D) views of (B, N, H, D) memory; the output keeps it.
    b, h, n, d, regions, tokens = 2, 3, 37, 40, 4, 9
    q, k, v = (_rand(b, length, h, d, seed=s).transpose(1, 2) for s, length in ((1, n), (2, regions * tokens),
                                                                                 (3, regions * tokens)))
    # A per-sample map with uncovered tokens (-1: zero rows), or one shared map covering every token.
    region_map = torch.randint(-1 if batch_map else 0, regions, (b, n) if batch_map else (n,),
                               generator=torch.Generator().manual_seed(4))
    assert region.token_major(q) and not region.token_major(q.contiguous())
    ref = region.reference(q, k, v, region_map, tokens)
    for chunk in (8, 16):
        plan = make_plan(region_map, b, regions, chunk=chunk)
        out = region.torch_path(q.to(dtype), k.to(dtype), v.to(dtype), region_map, tokens, plan=plan)
        _close(out, ref, dtype)
        assert region.token_major(out)
        _close(region.torch_path(q.contiguous().to(dtype), k.to(dtype), v.to(dtype), region_map, tokens, plan=plan),
               ref, dtype)


@pytest.mark.parametrize("layout", ["token-major", "head-major"])
def test_region_torch_path_with_segments_gathered_once_matches_the_reference(layout):
    b, h, n, d, regions, tokens = 2, 3, 37, 40, 4, 9
    q, k, v = (_rand(b, length, h, d, seed=s).transpose(1, 2) for s, length in ((21, n), (22, regions * tokens),
                                                                                 (23, regions * tokens)))
    q = q if layout == "token-major" else q.contiguous()
    region_map = torch.randint(-1, regions, (b, n), generator=torch.Generator().manual_seed(24))
    plan = make_plan(region_map, b, regions, chunk=8)
    segments = gather_segments(k, v, plan, tokens, region.token_major(q))
    ref = region.reference(q, k, v, region_map, tokens)
    for _ in range(2):  # the same segments serve every call; k and v are not read again
        _close(region.torch_path(q, k * 0, v * 0, region_map, tokens, plan=plan, segments=segments), ref, torch.float64)
    _close(region_attention(q, k, v, region_map, tokens, plan=plan, segments=segments, backend="torch"), ref,
           torch.float64)
    _close(region_attention(q, k, v, region_map, tokens, plan=plan, segments=segments, backend="reference"), ref,
           torch.float64)  # the other paths read k and v themselves
    other_layout = q.contiguous() if layout == "token-major" else q.transpose(1, 2).contiguous().transpose(1, 2)
    with pytest.raises(ValueError, match="another plan or query layout"):
        region.torch_path(other_layout, k, v, region_map, tokens, plan=plan, segments=segments)
    with pytest.raises(ValueError, match="another plan or query layout"):
        region.torch_path(q, k, v, region_map, tokens, plan=make_plan(region_map, b, regions, chunk=8),
                          segments=segments)
    with pytest.raises(ValueError, match="for this plan"):
        gather_segments(k[:1], v[:1], plan, tokens)
    with pytest.raises(ValueError, match="packed"):
        gather_segments(k, v, make_plan(region_map, b, regions, chunk=8, packed=True), tokens)


def test_region_plan_groups_tokens_by_segment():
    region_map = torch.tensor([2, 0, 0, -1, 2, 1, 0])
    plan = make_plan(region_map, batch=1, n_regions=3, chunk=2)
    rows = plan.rows.view(-1, 2)
    for chunk_rows, segment in zip(rows, plan.chunk_segment):
        real = chunk_rows[chunk_rows >= 0]
        assert (region_map[real] == segment).all()
    assert sorted(plan.rows[plan.rows >= 0].tolist()) == [0, 1, 2, 4, 5, 6]  # token 3 is uncovered


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_region_triton_packed_chunks_span_segments_and_match_the_reference(dtype):
    if not triton_available():
        pytest.skip("triton is not installed")
    # Many small regions, so most chunks span two or more segments; a per-sample map with uncovered tokens.
    b, h, n, d, regions, tokens, chunk = 2, 2, 40, 40, 6, 5, 16
    q = _rand(b, h, n, d, seed=11)
    k, v = _rand(b, h, regions * tokens, d, seed=12), _rand(b, h, regions * tokens, d, seed=13)
    region_map = torch.randint(-1, regions, (b, n), generator=torch.Generator().manual_seed(14))
    plan = make_plan(region_map.to(DEVICE), b, regions, chunk=chunk, packed=True)
    assert int((plan.chunk_last - plan.chunk_segment).max()) >= 2
    out = region.triton_path(*(t.to(DEVICE, dtype) for t in (q, k, v)), region_map.to(DEVICE), tokens, plan=plan)
    _close(out, region.reference(q, k, v, region_map, tokens), dtype, _tol("triton", dtype))


def test_region_packed_plan_pads_only_the_end():
    region_map = torch.tensor([[2, 0, 0, -1, 2, 1, 0], [1, 1, -1, -1, 0, 2, 2]])
    plan = make_plan(region_map, batch=2, n_regions=3, chunk=4, packed=True)
    covered = int((region_map >= 0).sum())
    assert len(plan.chunk_segment) == -(-covered // 4) and (plan.rows[covered:] == -1).all()
    real = plan.rows[:covered]
    assert (plan.row_segment[:covered] == real // 7 * 3 + region_map.reshape(-1)[real]).all()
    assert (plan.row_segment[:covered].diff() >= 0).all()  # sorted by segment
    by_chunk = plan.row_segment.view(-1, 4)
    assert (plan.chunk_segment == by_chunk[:, 0]).all() and (plan.chunk_last == by_chunk.max(1).values).all()
    assert (plan.inverse[real] == torch.arange(covered)).all()
    assert (plan.inverse[region_map.reshape(-1) < 0] == len(plan.rows)).all()  # uncovered: the zero row
    with pytest.raises(ValueError, match="packed"):
        region.torch_path(torch.zeros(2, 1, 7, 4), torch.zeros(2, 1, 6, 4), torch.zeros(2, 1, 6, 4), region_map, 2,
                          plan=plan)


def test_region_rejects_bad_maps():
    q, k = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 6, 8)
    with pytest.raises(ValueError, match="region"):
        region_attention(q, k, k, torch.tensor([0, 1, 5, 0]), 3)
    with pytest.raises(ValueError, match="region"):
        region_attention(q, k, k, torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="segment_length"):
        region_attention(q, k, k, torch.tensor([0, 1, 0, 0]), 4)


# ---- blended ----

@pytest.mark.parametrize("path, dtype", [("naive", torch.float64), ("torch", torch.float64)] + TRITON_PATHS)
def test_blended_matches_reference(path, dtype):
    if path == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    q, q_hat, k, v = (_rand(1, 2, 33, 80, seed=s) for s in range(4))
    w = torch.rand(1, 1, 33, 1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = blended.reference(q, k, v, q_hat, w)
    fn = {"naive": blended.naive, "torch": blended.torch_path, "triton": blended.triton_path}[path]
    out = fn(*(t.to(DEVICE, dtype) for t in (q, k, v, q_hat)), w.to(DEVICE, dtype))
    _close(out, ref, dtype, _tol(path, dtype))


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


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_triton_backend_on_cpu_tensors_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.zeros(1, 1, 2, 4, 16)
    with pytest.raises(ValueError, match="CUDA device.*backend='torch'"):
        neighbour_attention(q, q, q, ring_index(2)[:, :2], backend="triton")
    with pytest.raises(ValueError, match="CUDA device"):
        region_attention(q[:, :, 0], q[:, :, 0], q[:, :, 0], torch.zeros(4, dtype=torch.long), 4, backend="triton")


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_dispatcher_takes_sdpa_where_it_measured_faster_on_a_gpu():
    assert backend_for("cuda") == "triton" and backend_for("cuda", "neighbour", 1024, 40) == "triton"
    assert backend_for("cuda", "neighbour", 4096, 40) == "torch" and backend_for("cuda", "neighbour", 4096, 160) == "torch"
    assert backend_for("cuda", "neighbour", 4096, 80) == "triton"  # the fused kernel won at head dim 80
    assert backend_for("cuda", "region", 4096, 40) == "triton" and backend_for("cuda", "blended", 64, 80) == "torch"
    assert backend_for("cpu", "neighbour", 64, 40) == "torch"
    with use_backend("triton"):
        assert backend_for("cuda", "neighbour", 4096, 40) == "triton"  # forcing wins over the shape rule


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
