"""Pool several runs of benchmarks.layered_edit (different seeds) into one paired comparison.

    python -m benchmarks.layered_edit_pool out/le_seed7.json out/le_seed8.json ... [--json pooled.json]

Each run's JSON holds every edit's outcome (per_edit). This prints, for Strata (full) against each
other method found in every run: edit success of both and the paired margin (full minus the method;
mean over scenes and its standard error), retention the same way, and the seam PSNR; then the same
success margin split by the rough mask's area, below and above the median over all edits (paired by
edit, standard error over edits). Scenes from different seeds never overlap (see layered_edit), so
pooling N seeds gives N times the scenes of one.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import print_table, write_json
from benchmarks.layered_edit import paired_margin, scene_values

FULL = "Strata (full)"


def _mean_se(values) -> tuple[float | None, float | None]:
    """Mean and standard error, NaNs left out; None where there is nothing (mean) or one value (error)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return None, None
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None


def pool(runs: list[dict]) -> dict:
    """runs: the JSON results of benchmarks.layered_edit. Returns, per method paired with Strata
    (full): success / retention / seam of both, the paired margins and the margin by mask size."""
    for i, run in enumerate(runs):
        if "per_edit" not in run or FULL not in run["per_edit"]:
            raise ValueError(f"run {i}: no per-edit results for {FULL!r} (written by an older layered_edit?)")
    methods = [m for m in runs[0]["per_edit"] if m not in ("mask_area", FULL) and all(m in r["per_edit"] for r in runs)]
    areas = [a for r in runs for scene in r["per_edit"]["mask_area"] for a in scene]
    median = float(np.median(areas)) if areas else float("nan")
    out = {"runs": len(runs), "seeds": [r.get("seed") for r in runs], "mask_area_median": median, "methods": {}}
    full_scenes = [s for r in runs for s in r["per_edit"][FULL]]
    area = [scene for r in runs for scene in r["per_edit"]["mask_area"]]
    for method in methods:
        scenes = [s for r in runs for s in r["per_edit"][method]]
        row = {"scenes": len(scenes), "edits": sum(len(s) for s in scenes)}
        for name, key in (("success", "success"), ("retention", "kept")):  # per scene, as layered_edit scores
            row[name] = {"full": _mean_se(scene_values(full_scenes, key)), "method": _mean_se(scene_values(scenes, key)),
                         "margin": paired_margin(full_scenes, scenes, key)}
        row["seam_psnr_db"] = {"full": _mean_se([e["seam_psnr_db"] for s in full_scenes for e in s]),
                               "method": _mean_se([e["seam_psnr_db"] for s in scenes for e in s])}
        for part, keep in (("small", lambda a: a <= median), ("large", lambda a: a > median)):
            diff = [float(f["success"]) - float(m["success"])
                    for fs, ms, areas_s in zip(full_scenes, scenes, area)
                    for f, m, a in zip(fs, ms, areas_s) if keep(a)]
            row[f"success_margin_{part}_masks"] = {"edits": len(diff), "margin": _mean_se(diff)}
        out["methods"][method] = row
    return out


def _pm(pair) -> str:
    mean, se = pair  # None: nothing to score (mean), or a single value (no spread)
    return "-" if mean is None else f"{mean:+.3f}" + ("" if se is None else f" ± {se:.3f}")


def _both(values: dict, digits: int = 3) -> str:
    return " / ".join("-" if values[side][0] is None else f"{values[side][0]:.{digits}f}" for side in ("full", "method"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="JSON files written by benchmarks.layered_edit --json")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    runs = []
    for path in args.runs:
        with open(path) as f:
            runs.append(json.load(f))
    result = pool(runs)
    table = []
    for method, row in result["methods"].items():
        s, r = row["success"], row["retention"]
        table.append([method, row["scenes"], _both(s), _pm(s["margin"]), _both(r), _pm(r["margin"]),
                      _both(row["seam_psnr_db"], digits=1),
                      _pm(row["success_margin_small_masks"]["margin"]), _pm(row["success_margin_large_masks"]["margin"])])
    print_table(f"Strata (full) against each method, {result['runs']} runs pooled (seeds {result['seeds']}); "
                f"masks split at the median area {result['mask_area_median']:.3f}",
                ["method", "scenes", "success full / method", "success margin", "retention full / method",
                 "retention margin", "seam dB full / method", "margin, small masks", "margin, large masks"], table)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
