"""The layered-editing benchmark's scores and statistics: what each edit score reads, per-scene
values, paired margins (retention on the same objects), pooling. Each test names the mistake it
guards against."""

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.edit_scores import bg_change, border_step, halo, retention_pairs, score_edit
from benchmarks.layered_edit import paired_margin, scene_values
from world.flat import FlatObject, FlatSpec, render_flat
from world.oracle import read_image


def edit(success=True, found=(), **scores):
    return {"success": success, "found": list(found), "bg_change": scores.get("bg_change", 1.0),
            "border_step": scores.get("border_step", 1.0), "border_step_before": 1.0, "texture_step": 0.0,
            "halo": scores.get("halo", 1.0), "seam_psnr_db": 30.0}


def _box(y0, y1, x0, x1, size=64):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def _layer(colour, shape, center, size, mask):
    return SimpleNamespace(target=SimpleNamespace(colour=colour, shape=shape, center=center, size=size),
                           rough_mask=mask)


def test_scores_read_the_pictures_not_the_methods_masks():
    """Guards against figures true by construction: the in-mask background change, border step and
    halo see a regenerated background inside the rough mask, whatever mask the method pasted with."""
    before = render_flat(FlatSpec("sand", ())).image
    spec = FlatSpec("sand", (FlatObject("red", "circle", (0.3, 0.3), 0.25),))
    after = render_flat(spec).image.copy()
    mask = _box(6, 34, 6, 34)
    layer = _layer("red", "circle", (0.3, 0.3), 0.25, mask)
    clean = score_edit(before, after, read_image(before), read_image(after), layer, [])
    assert clean["success"] and clean["bg_change"] == 0 and clean["halo"] < 3
    assert clean["border_step"] == pytest.approx(clean["border_step_before"])
    haloed = after.copy()
    haloed[mask & (read_image(after).labels >= 7)] = (190, 170, 120)  # another sand inside the mask
    scored = score_edit(before, haloed, read_image(before), read_image(haloed), layer, [])
    assert scored["bg_change"] > 10 and scored["halo"] > 20 and scored["border_step"] > 2 * scored["border_step_before"]


def test_success_ignoring_the_mask_would_fail_here():
    """Guards against success that ignores the mask: the asked object elsewhere is not a success."""
    before = render_flat(FlatSpec("grass", ())).image
    after = render_flat(FlatSpec("grass", (FlatObject("red", "square", (0.75, 0.75), 0.25),))).image
    layer = _layer("red", "square", (0.3, 0.3), 0.25, _box(6, 34, 6, 34))
    assert not score_edit(before, after, read_image(before), read_image(after), layer, [])["success"]


def test_retention_is_read_from_the_picture():
    """Guards against retention always "kept": an earlier object painted over is not found."""
    first = FlatObject("blue", "square", (0.25, 0.25), 0.25)
    spec = FlatSpec("snow", (first, FlatObject("red", "circle", (0.75, 0.75), 0.25)))
    with_both = render_flat(spec).image
    without_first = render_flat(FlatSpec("snow", spec.objects[1:])).image
    earlier = [_layer("blue", "square", first.center, first.size, _box(4, 28, 4, 28))]
    layer = _layer("red", "circle", (0.75, 0.75), 0.25, _box(36, 60, 36, 60))
    reading = read_image(with_both)
    assert score_edit(with_both, with_both, reading, reading, layer, earlier)["found"] == [True]
    gone = read_image(without_first)
    assert score_edit(with_both, without_first, reading, gone, layer, earlier)["found"] == [False]


def test_pixel_scores_on_constructed_images():
    image = np.full((16, 16, 3), 100, np.uint8)
    mask = _box(4, 12, 4, 12, 16)
    bg = np.ones((16, 16), bool)
    assert border_step(image, mask, bg) == 0 and halo(image, mask, bg) is None  # no ring at 8–12 px in 16 px
    stepped = image.copy()
    stepped[mask] = 130
    assert border_step(stepped, mask, bg) == 30
    assert bg_change(image, stepped, mask, bg, bg) == 30
    assert bg_change(image, stepped, mask, bg, ~bg) is None  # nothing read as background after: no score


def test_retention_is_paired_on_the_objects_both_methods_made():
    """Guards against "paired" retention margins that compared different objects: an object only one
    method made does not count for either."""
    a = [edit(True), edit(True, found=[True]), edit(True, found=[True, True])]
    b = [edit(False), edit(True, found=[False]), edit(True, found=[False, False])]
    both = retention_pairs(a, b, lambda j, i: True)
    assert both == [(True, False)]  # only object 1 (at edit 2): object 0 was never made by b
    covered = [[[], [], []]]
    assert paired_margin([a], [b], "retention", covered) == (1.0, None)
    assert scene_values([a], "retention", covered).tolist() == [1.0]
    assert scene_values([b], "retention", covered).tolist() == [0.0]  # b made object 1 only, and lost it


def test_paired_margin_is_the_mean_and_standard_error_of_per_scene_differences():
    rng = np.random.default_rng(0)
    ours, theirs = [], []
    for _ in range(12):
        a, b = rng.random(4) < 0.7, rng.random(4) < 0.4
        ours.append([edit(bool(x), halo=float(h)) for x, h in zip(a, rng.random(4))])
        theirs.append([edit(bool(x), halo=float(h)) for x, h in zip(b, rng.random(4))])
    for key in ("success", "halo"):
        diff = scene_values(ours, key) - scene_values(theirs, key)
        mean, se = paired_margin(ours, theirs, key)
        assert mean == pytest.approx(diff.mean()) and se == pytest.approx(diff.std(ddof=1) / np.sqrt(len(diff)))
    assert paired_margin(ours, ours, "success") == (0.0, 0.0)


def test_methods_flag_refuses_an_unknown_method_before_loading_anything(capsys):
    from benchmarks.layered_edit import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--scenes", "1", "--methods", "full,no-bcg,bcg-only", "--model", "/nonexistent"])
    assert exit_info.value.code == 2
    assert "unknown bcg-only" in capsys.readouterr().err


def test_set_flag_parses_settings_and_names_a_bad_one(capsys):
    """--set FIELD=VALUE (development runs) takes each field's type; an unknown field or a bad value is a
    usage error naming --set, before any model loads. A table with no rows (only "full" run: no margins)
    prints its header instead of crashing after the run."""
    from benchmarks.common import print_table
    from benchmarks.layered_edit import _settings_overrides, main
    assert _settings_overrides(["strength=0.8", "bcg=false", "tighten=None", "steps=12"]) == {
        "strength": 0.8, "bcg": False, "tighten": None, "steps": 12}
    for bad in ("strenght=0.8", "strength=1.5"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--scenes", "1", "--set", bad, "--model", "/nonexistent"])
        assert exit_info.value.code == 2 and "--set" in capsys.readouterr().err
    print_table("empty", ["method", "margin"], [])
    assert "| method | margin |" in capsys.readouterr().out


def test_pooling_runs_pairs_scenes_and_splits_by_mask_area():
    from benchmarks.layered_edit_pool import pool

    def scene(successes, found_last=()):
        return [edit(s, found=list(found_last) if i == len(successes) - 1 and found_last else [False] * i)
                for i, s in enumerate(successes)]

    run_a = {"seed": 7, "covered": [[[], []], [[]]],
             "per_edit": {"mask_area": [[0.1, 0.3], [0.2]],
                          "Strata (full)": [scene([True, True], [True]), scene([False])],
                          "Strata w/o BCG": [scene([True, True], [False]), scene([True])]}}
    run_b = {"seed": 8, "covered": [[[], []]],
             "per_edit": {"mask_area": [[0.05, 0.4]],
                          "Strata (full)": [scene([True, False])],
                          "Strata w/o BCG": [scene([False, False])],
                          "Strata w/o MQD": [scene([True, True])]}}  # only in one run: left out
    result = pool([run_a, run_b])
    assert list(result["methods"]) == ["Strata w/o BCG"]
    row = result["methods"]["Strata w/o BCG"]
    assert row["scenes"] == 3 and row["edits"] == 5
    margin, se = row["success"]["margin"]  # per scene: (1 - 1), (0 - 1), (0.5 - 0)
    assert margin == pytest.approx(-1 / 6) and se == pytest.approx(np.std([0, -1, 0.5], ddof=1) / np.sqrt(3))
    assert row["retention"]["margin"][0] == pytest.approx(1.0)  # only the first scene: object 0 made by both
    assert result["mask_area_median"] == pytest.approx(0.2)
    small, large = row["success_margin_small_masks"], row["success_margin_large_masks"]
    assert small["edits"] == 3 and large["edits"] == 2
    with pytest.raises(ValueError, match="no per-edit results"):
        pool([{"seed": 0, "rows": {}}])


def test_model_quality_seeds_draw_disjoint_sets_with_intervals():
    """Guards against seeds that score the same specs (seeds 0, 1 and 2 scored the same 200 before)."""
    from benchmarks.model_quality import controlnet_cases, held_out_captions, wilson
    a, b = held_out_captions(30, 0), held_out_captions(30, 1)
    assert len(set(a)) == 30 and not set(a) & set(b)
    first, second = controlnet_cases(6, 0), controlnet_cases(6, 1)
    assert not any(np.array_equal(x[1].rgb, y[1].rgb) for x in first for y in second)
    low, high = wilson(90, 100)
    assert low < 0.9 < high and 0.82 < low and high < 0.95


def test_multiview_rows_keep_what_defines_them():
    """A development --set reaches the Strata rows only: the baselines never get the overlap sync (they
    would stop being the baselines), and the sync row keeps the sync it is defined by."""
    from benchmarks.multiview_edit import BASELINE, method_options
    rows = method_options(None, {"overlap_sync": 0.5, "sync_space": "image", "blend_weight": 0.8})
    assert rows["Strata, overlap sync (no QNeRF)"] == {"injection": None, "overlap_sync": 0.9, "sync_space": "latent",
                                                       "blend_weight": 0.8}
    assert rows["Strata, QNeRF guidance"]["overlap_sync"] == 0.5
    assert rows[BASELINE] == {"injection": None, "overlap_sync": 0.0}
    assert rows["extended attention"]["overlap_sync"] == 0.0 and "sync_space" not in rows["extended attention"]
    assert list(method_options({"Strata, QNeRF blend"}, {})) == ["Strata, QNeRF blend", BASELINE]


def test_multiview_fits_can_run_without_a_clock():
    """Guards: a benchmark whose QNeRF fits stop at a time budget, so that its guidance rows change with
    the machine's load (RESULTS.md, "Nineteenth session"): --fit-iterations gives exactly that many steps."""
    from types import SimpleNamespace

    from benchmarks.multiview_edit import fit_settings
    timed = fit_settings(SimpleNamespace(fit_seconds=2.0, fit_iterations=None))
    assert timed.max_seconds == 2.0
    counted = fit_settings(SimpleNamespace(fit_seconds=2.0, fit_iterations=7))
    assert counted.iterations == 7 and counted.max_seconds == float("inf")


def test_blended_latent_diffusion_runs_as_its_authors_would(sd1_components):
    """The fair baseline (`run_blended`), with the model's output replaced by a white picture so the
    composite is known. Guards against the handicaps the review found: no paste-back (pixels outside the
    feathered mask must be the previous picture's, bit for bit), a sampled VAE posterior (the clean latent
    it blends toward must be the posterior mean, the same for any noise), no blending at the last step
    (harmonize 0), and no protection of earlier objects (layer 2's mask leaves layer 1's object out and
    its pixels stay)."""
    import torch

    from benchmarks.layered_edit import run_blended
    from pipelines.layered_edit import EditSettings, LayeredEditPipeline
    from pipelines.layered_edit.geometry import overlay_alpha

    pipe = LayeredEditPipeline(**sd1_components)
    pipe.set_progress_bar_config(disable=True)
    white = np.full((32, 32, 3), 255, np.uint8)

    class Spy:  # the pipeline, whose generation always draws white
        calls = []

        def forward_noise(self, *args, **kwargs):
            return pipe.forward_noise(*args, **kwargs)

        def __call__(self, prompt, **kwargs):
            self.calls.append(kwargs)
            return SimpleNamespace(images=[white])

    background = render_flat(FlatSpec("grass", ()), 32).image
    first, second = _box(4, 14, 4, 14, 32), _box(10, 28, 10, 28, 32)  # the second covers a corner of the first
    scenario = SimpleNamespace(layers=[SimpleNamespace(prompt="a red square", rough_mask=first),
                                       SimpleNamespace(prompt="a blue circle", rough_mask=second)])
    settings = EditSettings(height=32, width=32, steps=3, dilate_px=1)
    spy = Spy()
    images, _ = run_blended(spy, background, scenario, 7, settings)
    assert [c["harmonize"] for c in spy.calls] == [0.0, 0.0] and all(c.get("bcg", True) for c in spy.calls)
    clean = pipe.encode_image(background)[0]
    assert torch.equal(spy.calls[0]["background"][-1], clean)  # the posterior mean
    again = pipe.forward_noise(background, 3, torch.Generator().manual_seed(99))
    assert torch.equal(again[-1], clean)
    for previous, image, mask in ((background, images[0], first), (images[0], images[1], second)):
        outside = overlay_alpha(mask, settings.dilate_px) == 0
        assert outside.any() and np.array_equal(image[outside], previous[outside])  # the paste-back
    # layer 1's object (the white square) is protected from layer 2: left out of its mask, kept as it was
    edit = spy.calls[1]["mask"]
    kept = first & second & ~edit
    assert kept.sum() >= 16 and not (edit & first).any()
    assert np.array_equal(images[1][kept], images[0][kept])
    assert (images[1][edit] == 255).all()
