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
