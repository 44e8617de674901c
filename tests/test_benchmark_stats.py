"""The layered-editing benchmark's statistics: per-scene values and paired margins."""

import numpy as np
import pytest

from types import SimpleNamespace

from benchmarks.layered_edit import paired_margin, score_edit, scene_values, summarise


def scene(successes, kept=(), psnr=100.0):
    edits = [{"success": s, "kept": [], "psnr": psnr, "seam": psnr} for s in successes]
    edits[-1]["kept"] = list(kept)
    return edits


def test_scene_values_mark_scenes_without_retention_as_nan():
    scenes = [scene([True, False], kept=[True, False]), scene([True])]
    assert scene_values(scenes, "success").tolist() == [0.5, 1.0]
    kept = scene_values(scenes, "kept")
    assert kept[0] == 0.5 and np.isnan(kept[1])
    assert summarise(scenes, [1.0, 3.0])["retention"] == 0.5  # the scene with nothing to retain is left out


def test_paired_margin_is_the_mean_and_standard_error_of_per_scene_differences():
    rng = np.random.default_rng(0)
    ours, theirs = [], []
    for _ in range(12):
        a, b = rng.random(4) < 0.7, rng.random(4) < 0.4
        ours.append(scene(a.tolist()))
        theirs.append(scene(b.tolist()))
    diff = scene_values(ours, "success") - scene_values(theirs, "success")
    mean, se = paired_margin(ours, theirs, "success")
    assert mean == pytest.approx(diff.mean())
    assert se == pytest.approx(diff.std(ddof=1) / np.sqrt(len(diff)))
    # Identical methods: no margin, no spread; scenes scored by only one side are skipped.
    assert paired_margin(ours, ours, "success") == (0.0, 0.0)
    assert paired_margin([scene([True], kept=[True])] * 3, [scene([True])] * 3, "kept") == (None, None)


def test_seam_psnr_reads_only_the_ring_just_outside_the_rough_mask():
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:20, 8:20] = True
    scenario = SimpleNamespace(layers=[SimpleNamespace(rough_mask=mask)])
    before = np.full((32, 32, 3), 90, dtype=np.uint8)
    inside = before.copy()
    inside[mask] = 200  # an object filling the mask: the ring is untouched
    ring = inside.copy()
    ring[6:8, 8:20] = 120  # the edit leaked two rows above the mask
    far = inside.copy()
    far[28:, 28:] = 0  # a change far from the mask is the background column's business, not the seam's
    score = lambda image: score_edit(image, None, scenario, 0, [True], before, before, dilate_px=2)
    assert score(inside)["seam"] == 100.0 and score(far)["seam"] == 100.0 and score(far)["psnr"] < 100.0
    assert score(ring)["seam"] < 40.0


def test_methods_flag_refuses_an_unknown_method_before_loading_anything(capsys):
    from benchmarks.layered_edit import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--scenes", "1", "--methods", "full,no-bcg,bcg-only", "--model", "/nonexistent"])
    assert exit_info.value.code == 2
    assert "unknown bcg-only" in capsys.readouterr().err


def test_pooling_runs_pairs_scenes_and_splits_by_mask_area():
    from benchmarks.layered_edit_pool import pool

    def edits(successes, kept=()):
        return [{"success": s, "kept": list(kept) if i == len(successes) - 1 else [], "seam_psnr_db": 30.0}
                for i, s in enumerate(successes)]

    run_a = {"seed": 7, "per_edit": {"mask_area": [[0.1, 0.3], [0.2]],
                                     "Strata (full)": [edits([True, True], kept=[True]), edits([False])],
                                     "Strata w/o BCG": [edits([False, True], kept=[False]), edits([True])]}}
    run_b = {"seed": 8, "per_edit": {"mask_area": [[0.05, 0.4]],
                                     "Strata (full)": [edits([True, False])],
                                     "Strata w/o BCG": [edits([False, False])],
                                     "Strata w/o MQD": [edits([True, True])]}}  # only in one run: left out
    result = pool([run_a, run_b])
    assert list(result["methods"]) == ["Strata w/o BCG"]
    row = result["methods"]["Strata w/o BCG"]
    assert row["scenes"] == 3 and row["edits"] == 5
    margin, se = row["success"]["margin"]  # per scene: (1 - 0.5), (0 - 1), (0.5 - 0)
    assert margin == pytest.approx(0.0) and se == pytest.approx(np.std([0.5, -1, 0.5], ddof=1) / np.sqrt(3))
    assert row["retention"]["margin"][0] == pytest.approx(1.0)  # only the first scene has something to retain
    assert result["mask_area_median"] == pytest.approx(0.2)
    small, large = row["success_margin_small_masks"], row["success_margin_large_masks"]
    assert small["edits"] == 3 and small["margin"][0] == pytest.approx((1 - 1 + 1) / 3)  # areas 0.1, 0.2, 0.05
    assert large["edits"] == 2 and large["margin"][0] == pytest.approx(0.0)  # areas 0.3, 0.4
    with pytest.raises(ValueError, match="no per-edit results"):
        pool([{"seed": 0, "rows": {}}])
