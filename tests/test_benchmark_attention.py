"""The attention benchmark runs end to end at its smoke size and reports what its docstring promises."""

import json

import pytest

from benchmarks import attention


def test_quick_attention_benchmark_writes_every_table(tmp_path, capsys):
    out = tmp_path / "attention.json"
    result = attention.main(["--quick", "--no-flex", "--repeats", "1", "--breakdown", "--json", str(out)])
    assert json.loads(out.read_text())["patterns"].keys() == {"neighbour", "region", "blended"}
    for pattern, data in result["patterns"].items():
        for row in data["rows"]:  # every implementation that ran agrees with the float64 reference
            if row["name"].startswith("xformers") and not attention.CUDA:  # the registry says why not
                assert row["ms"] is None and "no CPU kernels" in row["note"], row
                continue
            assert row["ms"] and row["max_abs_err"] < 1e-4, (pattern, row)
    region = result["patterns"]["region"]
    assert region["torch_vs_plain_ratio"] > 0 and region["torch_vs_plain_ratio_processor_layout"] > 0
    assert region["torch_cached_segments_vs_plain_ratio_processor_layout"] > 0
    from kernels import region_cpp
    if not attention.CUDA and region_cpp.available():  # the fused CPU loop: a row and its ratios
        assert any(row["name"].startswith("cpp") for row in region["rows"])
        assert region["cpp_vs_plain_ratio"] > 0 and region["cpp_vs_plain_ratio_processor_layout"] > 0
    assert result["region_breakdown"]["plain"]["ratio_to_plain"] == 1.0
    assert result["region_breakdown"]["plain, 4 calls in a row"]["ratio_to_plain"] == 1.0
    if not attention.CUDA:  # fault counts are the CPU's (on a GPU the calls are timed by do_bench)
        assert all(piece["minor_page_faults"] >= 0 for piece in result["region_breakdown"].values())
        faults = region["minor_page_faults_per_call"]
        assert faults.keys() >= {"plain, processor layout", "torch, processor layout"}
    assert result["sdpa_rows_by_length"]["1536"] == 1.0 and len(result["sdpa_rows_by_length"]) == 8
    assert "piece by piece" in capsys.readouterr().out


@pytest.mark.skipif(attention.CUDA, reason="on a GPU, interleaved hands each fn to do_bench")
def test_interleaved_times_the_last_call_of_each_block_and_reports_faults():
    calls = {"a": 0, "b": 0}

    def touch(name, megabytes):
        def fn():
            calls[name] += 1
            bytearray(megabytes << 20)
        return fn
    faults: dict = {}
    ms = attention.interleaved({"a": touch("a", 0), "b": touch("b", 8)}, repeats=3, faults=faults, block=4)
    assert calls == {"a": 1 + 3 * 4, "b": 1 + 3 * 4}  # one warm-up call, then 3 blocks of 4
    assert ms.keys() == faults.keys() == {"a", "b"}
    assert all(t >= 0 for t in ms.values()) and all(f >= 0 for f in faults.values())


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_sdpa_and_flex_rows_get_region_sorted_tokens_and_agree_with_the_reference():
    """The masked SDPA and FlexAttention rows are fed what Strata's kernels get (the cached plan's
    region-sorted queries, the mask built once) and put the result back in raster order. Guards against
    the peers run on the unsorted raster map (the review's finding) and against a sort that is not undone
    (each query must get its own region's attention). FlexAttention runs eagerly here (compiling needs a
    C++ toolchain); the benchmark compiles it."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from kernels import make_plan, region
    tokens, regions, n = 7, 5, 64
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, n, 16, generator=gen)
    k, v = (torch.randn(1, 2, regions * tokens, 16, generator=gen) for _ in range(2))
    region_map = attention.box_map(n)
    plan = make_plan(region_map, 1, regions)
    assert not torch.equal(plan.order, torch.arange(n))  # the sort does something to undo
    ref = region.reference(q.double(), k.double(), v.double(), region_map, tokens)
    sdpa = attention.region_sorted_sdpa(q, k, v, region_map, tokens, plan.order)
    flex = attention.region_sorted_flex(q, k, v, region_map, tokens, plan.order, flex_attention, create_block_mask)
    for fn in (sdpa, flex):
        assert (fn().double() - ref).abs().max() < 1e-5  # float32 against float64
