"""Tests written against the mutations an outside review found the suite did not catch (issue 20).
Each was checked by breaking the code on purpose and seeing a test fail:

  mutation                                                   caught by
  BCG switched off in the pipeline                           test_layered_pipeline.py::test_bcg_keeps_the_background_trajectory_outside_the_mask
  MQD switched off in the pipeline                           test_mqd_runs_in_the_pipeline_when_there_are_regions (here)
  MQD's padding-mask branch: every region sees every prompt  test_real_checkpoints.py::test_pixart_mqd_masks_padding_per_segment_without_a_dense_bias
  the neighbour torch path drops its padding mask            test_neighbour_torch_path_honours_empty_slots (here)
  session load keeps only height/width/steps/replay          test_every_setting_survives_save_and_load (here)
  retention always "kept"                                    test_benchmark_stats.py::test_retention_is_read_from_the_picture
  success ignoring the mask                                  test_benchmark_stats.py::test_success_ignoring_the_mask_would_fail_here,
                                                             test_oracle.py::test_success_needs_the_object_in_the_mask_at_a_plausible_size
"""

import numpy as np
import torch

from attention_processors import mqd
from kernels import neighbour
from pipelines.layered_edit import EditSettings, LayeredEditPipeline, LayeredSession


def _box(y0, y1, x0, x1, size=32):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mqd_runs_in_the_pipeline_when_there_are_regions(sd1_components, monkeypatch):
    """With scene prompts, every cross-attention call of the loop is region attention over all the
    scene's regions; without them, none is. (Mutation: the pipeline never installs MQD.)"""
    pipe = LayeredEditPipeline(**sd1_components)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    real = mqd.region_attention
    monkeypatch.setattr(mqd, "region_attention", lambda *a, **k: calls.append(int(a[3].max()) + 1) or real(*a, **k))
    background = pipe("an empty scene of grass", height=32, width=32, num_inference_steps=2).trajectory
    assert calls == []
    pipe("a blue square", mask=_box(16, 30, 16, 30), background=background, height=32, width=32, num_inference_steps=2,
         scene_prompts=["an empty scene of grass", "a red circle"], scene_masks=[_box(2, 14, 2, 14)])
    cross = sum(1 for name in pipe.unet.attn_processors if name.endswith("attn2.processor"))
    assert len(calls) == 2 * cross and set(calls) == {3}  # every step, every cross-attention layer, 3 regions


def test_neighbour_torch_path_honours_empty_slots():
    """-1 slots must not be attended: a path that drops the mask reads group 0's keys in their place
    (clamped index) and gets another answer. (Mutation: the torch path drops its padding mask.)"""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    index = torch.tensor([[1, -1], [2, 1], [-1, -1]])  # group 0: one real neighbour; group 2: none
    expected = neighbour.reference(q, k, v, index)
    torch.testing.assert_close(neighbour.torch_path(q, k, v, index), expected)
    assert expected[:, :, 2].abs().max() == 0
    unmasked = neighbour.reference(q, k, v, index.clamp(min=0))
    assert not torch.allclose(unmasked[:, :, 0], expected[:, :, 0])  # the test can tell the difference


def test_every_setting_survives_save_and_load(sd1_components, tmp_path):
    """Every field of EditSettings, each away from its default, round-trips. (Mutation: load keeps only
    height, width, steps and replay, and the rest silently fall back to defaults.)"""
    pipe = LayeredEditPipeline(**sd1_components)
    pipe.set_progress_bar_config(disable=True)
    settings = EditSettings(height=32, width=32, steps=2, guidance=5.5, harmonize=0.35, negative_prompt="a blue square",
                            mqd=False, bcg=False, dilate_px=3, protect=0.25, overlay="mask", tighten=0.7,
                            strength=0.5, overlay_threshold=60.0, replay="seed")
    defaults = EditSettings()
    assert all(getattr(settings, f) != getattr(defaults, f) for f in settings.__dataclass_fields__)
    session = LayeredSession(pipe, settings)
    session.start_from_prompt("an empty scene of grass", seed=0)
    session.save(tmp_path / "s")
    assert LayeredSession.load(pipe, tmp_path / "s").settings == settings
