"""The layered-editing benchmark's statistics: per-scene values and paired margins."""

import numpy as np
import pytest

from benchmarks.layered_edit import paired_margin, scene_values, summarise


def scene(successes, kept=(), psnr=100.0):
    edits = [{"success": s, "kept": [], "psnr": psnr} for s in successes]
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
