"""Pool several runs of benchmarks.layered_edit (different seeds) into one paired comparison.

    python -m benchmarks.layered_edit_pool out/le_seed7.json out/le_seed8.json ... [--json pooled.json]

Each run's JSON holds every edit's scores (per_edit) and which earlier objects later masks cover. This
prints, for Strata (full) against each other method found in every run: the paired margins (full minus
the method; mean over scenes and its standard error) of edit success, retention (on the objects both
made), the in-mask background change, the border step and the halo score, with both methods' means;
then the success margin split by the rough mask's area, below and above the median over all edits
(paired by edit, standard error over edits). Scenes from different seeds never overlap (see
layered_edit), so pooling N seeds gives N times the scenes of one.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import print_table, write_json
from benchmarks.layered_edit import MARGINS, mean_se, paired_margin, scene_values

FULL = "Strata (full)"


def pool(runs: list[dict]) -> dict:
    """runs: the JSON results of benchmarks.layered_edit. Returns, per method paired with Strata
    (full): each score of both, the paired margins and the success margin by mask size."""
    for i, run in enumerate(runs):
        if "per_edit" not in run or FULL not in run["per_edit"] or "covered" not in run:
            raise ValueError(f"run {i}: no per-edit results for {FULL!r} (written by an older layered_edit?)")
    methods = [m for m in runs[0]["per_edit"] if m not in ("mask_area", FULL) and all(m in r["per_edit"] for r in runs)]
    areas = [a for r in runs for scene in r["per_edit"]["mask_area"] for a in scene]
    median = float(np.median(areas)) if areas else float("nan")
    out = {"runs": len(runs), "seeds": [r.get("seed") for r in runs], "mask_area_median": median, "methods": {}}
    full_scenes = [s for r in runs for s in r["per_edit"][FULL]]
    covered = [c for r in runs for c in r["covered"]]
    area = [scene for r in runs for scene in r["per_edit"]["mask_area"]]
    for method in methods:
        scenes = [s for r in runs for s in r["per_edit"][method]]
        row = {"scenes": len(scenes), "edits": sum(len(s) for s in scenes)}
        for key in MARGINS:
            row[key] = {"full": mean_se(scene_values(full_scenes, key, covered)),
                        "method": mean_se(scene_values(scenes, key, covered)),
                        "margin": paired_margin(full_scenes, scenes, key, covered)}
        for part, keep in (("small", lambda a: a <= median), ("large", lambda a: a > median)):
            diff = [float(f["success"]) - float(m["success"])
                    for fs, ms, areas_s in zip(full_scenes, scenes, area)
                    for f, m, a in zip(fs, ms, areas_s) if keep(a)]
            row[f"success_margin_{part}_masks"] = {"edits": len(diff), "margin": mean_se(diff)}
        out["methods"][method] = row
    return out


def _pm(pair, digits=3) -> str:
    mean, se = pair  # None: nothing to score (mean), or a single value (no spread)
    return "-" if mean is None else f"{mean:+.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


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
        cells = [method, row["scenes"]]
        for key in MARGINS:
            digits = 3 if key in ("success", "retention") else 1
            cells += [_both(row[key], digits), _pm(row[key]["margin"], digits)]
        cells += [_pm(row["success_margin_small_masks"]["margin"]), _pm(row["success_margin_large_masks"]["margin"])]
        table.append(cells)
    header = ["method", "scenes"]
    for key in MARGINS:
        header += [f"{key} full / method", f"{key} margin"]
    print_table(f"Strata (full) against each method, {result['runs']} runs pooled (seeds {result['seeds']}); "
                f"masks split at the median area {result['mask_area_median']:.3f}",
                header + ["success margin, small masks", "success margin, large masks"], table)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
