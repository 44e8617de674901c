"""The attention benchmark runs end to end at its smoke size and reports what its docstring promises."""

import json

from benchmarks import attention


def test_quick_attention_benchmark_writes_every_table(tmp_path, capsys):
    out = tmp_path / "attention.json"
    result = attention.main(["--quick", "--no-flex", "--repeats", "1", "--breakdown", "--json", str(out)])
    assert json.loads(out.read_text())["patterns"].keys() == {"neighbour", "region", "blended"}
    for pattern, data in result["patterns"].items():
        for row in data["rows"]:  # every implementation that ran agrees with the float64 reference
            assert row["ms"] and row["max_abs_err"] < 1e-4, (pattern, row)
    region = result["patterns"]["region"]
    assert region["torch_vs_plain_ratio"] > 0 and region["torch_vs_plain_ratio_processor_layout"] > 0
    assert result["region_breakdown"]["plain"]["ratio_to_plain"] == 1.0
    assert result["sdpa_rows_by_length"]["1536"] == 1.0 and len(result["sdpa_rows_by_length"]) == 8
    assert "piece by piece" in capsys.readouterr().out
