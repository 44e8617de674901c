"""The backend registry: what the dispatcher picks and why, gradients routed to paths that have them,
and the peers (xformers, FlexAttention, SDPA with a mask) against the float64 reference."""

import pytest
import torch

from kernels import (backend_for, blended_attention, choice_for, last_choice, neighbour_attention,
                     region_attention, region_cpp, use_backend)
from kernels import blended, neighbour, peers, region
from kernels.registry import BACKENDS, REGISTRY, Call, choose

TOL = dict(atol=1e-5, rtol=1e-5)  # float32 peers against the float64 reference


def _region_inputs(seed=0, b=2, h=2, n=24, d=16, regions=3, t=5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen, dtype=dtype)
    k, v = (torch.randn(b, h, regions * t, d, generator=gen, dtype=dtype) for _ in range(2))
    region_map = torch.randint(-1, regions, (b, n), generator=gen)  # -1: tokens no region covers
    region_map[:, 0] = 0
    region_map[0, 1:4] = 2
    return q, k, v, region_map, t


def _neighbour_inputs(seed=0, b=1, h=2, g=4, lq=6, lk=5, d=16, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, g, lq, d, generator=gen, dtype=dtype)
    k, v = (torch.randn(b, h, g, lk, d, generator=gen, dtype=dtype) for _ in range(2))
    index = torch.tensor([[0, 1, -1], [1, 2, 0], [-1, -1, -1], [3, 0, 2]])  # group 2 sees nothing
    return q, k, v, index


def test_every_pattern_registers_every_backend_it_can_run():
    names = {pattern: [b.name for b in backends] for pattern, backends in REGISTRY.items()}
    for pattern in names:
        assert {"reference", "naive", "torch", "triton", "xformers", "flex"} <= set(names[pattern])
        assert names[pattern].index("triton") < names[pattern].index("torch")  # fused first, torch the fallback
    assert {"cpp", "sdpa_mask"} <= set(names["region"]) and "sdpa_mask" in names["neighbour"]
    assert set(BACKENDS) == {n for ns in names.values() for n in ns}


def test_the_choice_on_this_cpu_and_why_the_others_were_skipped():
    choice = choice_for("cpu", "region", dtype=torch.float16)
    assert choice.backend == "torch"
    assert "CUDA" in choice.skipped["triton"] and "float32 only" in choice.skipped["cpp"]
    assert "xformers" not in choice.skipped  # after torch: never tried automatically
    choice = choose(Call("neighbour", torch.device("cuda"), torch.bfloat16, 4096, 40))
    assert choice.backend == "torch" and "SDPA measured faster" in choice.skipped["triton"]
    assert choose(Call("neighbour", torch.device("cuda"), torch.bfloat16, 1024, 40)).backend == "triton"
    with pytest.raises(ValueError, match="xformers has no CPU kernels"):
        choose(Call("region", torch.device("cpu"), torch.float32), forced="xformers")
    with pytest.raises(ValueError, match="backend: expected one of"):
        choose(Call("region", torch.device("cpu")), forced="cudnn")
    forced = choose(Call("neighbour", torch.device("cpu"), torch.float32), forced="cpp")  # region only
    assert forced.backend == "torch" and "no neighbour attention" in forced.skipped["cpp"]


def test_a_call_that_needs_gradients_skips_the_forward_only_kernels():
    call = Call("region", torch.device("cuda"), torch.float16, 4096, 64, needs_grad=True)
    choice = choose(call)
    assert choice.backend == "torch" and "forward only" in choice.skipped["triton"]
    assert choose(Call("region", torch.device("cuda"), torch.float16, 4096, 64)).backend == "triton"
    with pytest.raises(ValueError, match="forward only"):
        choose(call, forced="triton")
    assert backend_for("cpu", "region", dtype=torch.float32, needs_grad=True) == "torch"


@pytest.mark.parametrize("pattern", ["region", "neighbour", "blended"])
def test_gradients_flow_through_the_dispatched_attention_and_match_the_reference(pattern):
    """What QNeRF's guidance needs: d(loss)/d(q) through the attention, on whatever path the
    dispatcher picks when a gradient is needed (float32 against the float64 reference)."""
    if pattern == "region":
        q, k, v, region_map, t = _region_inputs()

        def run(q, k, v, backend=None):
            return region_attention(q, k, v, region_map, t, backend=backend)
    elif pattern == "neighbour":
        q, k, v, index = _neighbour_inputs()

        def run(q, k, v, backend=None):
            return neighbour_attention(q, k, v, index, q_hat=q_hat.to(q.dtype), w=0.3, backend=backend)
        q_hat = torch.randn_like(q)
    else:
        gen = torch.Generator().manual_seed(3)
        q, k, v, q_hat = (torch.randn(1, 2, 12, 16, generator=gen, dtype=torch.float64) for _ in range(4))

        def run(q, k, v, backend=None):
            return blended_attention(q, k, v, q_hat.to(q.dtype), 0.3, backend=backend)
    weights = torch.randn_like(q)
    grads, chosen = [], []
    for dtype, backend in ((torch.float32, None), (torch.float64, "reference")):
        x = q.to(dtype).requires_grad_()
        (run(x, k.to(dtype), v.to(dtype), backend) * weights.to(dtype)).sum().backward()
        grads.append(x.grad)
        chosen.append(last_choice(pattern))
    assert chosen[0].backend == "torch" and chosen[1].backend == "reference"
    if pattern == "region" and region_cpp.available():
        assert "forward only" in chosen[0].skipped["cpp"]
    torch.testing.assert_close(grads[0].double(), grads[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("peer", ["sdpa_mask", "flex"])
def test_region_peers_match_the_reference(peer):
    q, k, v, region_map, t = _region_inputs(seed=1)
    expected = region.reference(q, k, v, region_map, t)
    out = region_attention(q.float(), k.float(), v.float(), region_map, t, backend=peer)
    torch.testing.assert_close(out.double(), expected, **TOL)
    assert (out[region_map[:, None, :, None].expand_as(out) < 0] == 0).all()


@pytest.mark.parametrize("peer", ["sdpa_mask", "flex"])
def test_neighbour_peers_match_the_reference(peer):
    q, k, v, index = _neighbour_inputs(seed=2)
    q_hat = torch.randn_like(q)
    expected = neighbour.reference(q, k, v, index, q_hat=q_hat, w=0.25)
    out = neighbour_attention(q.float(), k.float(), v.float(), index, q_hat=q_hat.float(), w=0.25, backend=peer)
    torch.testing.assert_close(out.double(), expected, **TOL)


def test_blended_flex_matches_the_reference():
    gen = torch.Generator().manual_seed(4)
    q, k, v, q_hat = (torch.randn(1, 2, 10, 16, generator=gen, dtype=torch.float64) for _ in range(4))
    out = blended_attention(q.float(), k.float(), v.float(), q_hat.float(), 0.6, backend="flex")
    torch.testing.assert_close(out.double(), blended.reference(q, k, v, q_hat, 0.6), **TOL)


def _materialized_memory_efficient(q, k, v, bias, scale):
    """xformers' op, for the packing: its block-diagonal bias materialized, then a plain softmax
    (xformers has no CPU kernels; the kernel itself is checked on a GPU by the benchmark's error column)."""
    _, _, h, d = q.shape
    mask = 0 if bias is None else bias.materialize((1, h, q.shape[1], k.shape[1]), dtype=torch.float64)
    scale = d ** -0.5 if scale is None else scale
    scores = q.double().transpose(1, 2) @ k.double().transpose(1, 2).transpose(-1, -2) * scale + mask
    return (torch.softmax(scores, -1) @ v.double().transpose(1, 2)).transpose(1, 2)


@pytest.mark.skipif(peers.xformers_ops() is None, reason="xformers is not installed")
def test_xformers_paths_pack_sequences_right(monkeypatch):
    """The packing into block-diagonal sequences (region: tokens sorted by region, empty regions
    dropped; neighbour: each group's neighbours gathered; blended: one sequence), checked with the
    bias materialized, since the CPU has no xformers kernels."""
    monkeypatch.setattr(peers, "_memory_efficient", _materialized_memory_efficient)
    q, k, v, region_map, t = _region_inputs(seed=5, regions=4)
    region_map[region_map == 3] = 1  # region 3 has no token: its sequence is dropped
    torch.testing.assert_close(peers.region_xformers(q, k, v, region_map, t), region.reference(q, k, v, region_map, t))
    q, k, v, index = _neighbour_inputs(seed=6, b=2)
    torch.testing.assert_close(peers.neighbour_xformers(q, k, v, index, scale=0.3),
                               neighbour.reference(q, k, v, index, scale=0.3))
    q_hat = torch.randn_like(q[:, :, 0])
    torch.testing.assert_close(peers.blended_xformers(q[:, :, 0], k[:, :, 0], v[:, :, 0], q_hat, 0.5),
                               blended.reference(q[:, :, 0], k[:, :, 0], v[:, :, 0], q_hat, 0.5))


def test_environment_and_block_overrides_still_win(monkeypatch):
    q, k, v, region_map, t = _region_inputs(dtype=torch.float32)
    monkeypatch.setenv("STRATA_ATTENTION_BACKEND", "sdpa_mask")
    region_attention(q, k, v, region_map, t)
    assert last_choice("region").backend == "sdpa_mask"
    with use_backend("naive"):
        region_attention(q, k, v, region_map, t)
        assert last_choice("region").backend == "naive"
    monkeypatch.setenv("STRATA_ATTENTION_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend: expected one of"):
        region_attention(q, k, v, region_map, t)
