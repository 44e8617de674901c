"""The controller, the install/restore context manager and the MQD cross-attention processor."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attention_processors import (AttentionController, MultiQueryDisentangledProcessor, RegionState,
                                  installed_processors, region_labels, token_grid)
from attention_processors import mqd
from attention_processors.install import is_cross_attention
from kernels import gather_segments, last_backend, triton_available, use_backend


def test_region_labels_put_later_layers_in_front():
    a = torch.zeros(8, 8, dtype=torch.bool)
    a[:4] = True
    b = torch.zeros(8, 8, dtype=torch.bool)
    b[2:6, :4] = True
    labels = region_labels([a, b], 8, 8)
    assert labels[0, 7] == 1 and labels[3, 0] == 2 and labels[7, 7] == 0
    assert set(labels.unique().tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="masks"):
        region_labels([torch.zeros(4, 4)], 8, 8)


def _ctrl(labels, n_regions, **kwargs) -> AttentionController:
    return AttentionController(regions=RegionState(labels, n_regions, **kwargs))


def _mqd(ctrl, name="attn2"):
    return MultiQueryDisentangledProcessor(ctrl, name)


def test_controller_resamples_regions_to_any_token_grid():
    labels = torch.zeros(16, 24, dtype=torch.long)
    labels[:, 12:] = 1
    ctrl = _ctrl(labels, n_regions=2).regions
    assert token_grid((16, 24), 16 * 24) == (16, 24) and token_grid((16, 24), 4 * 6) == (4, 6)
    regions = ctrl.token_regions(4 * 6, torch.device("cpu")).view(4, 6)
    assert (regions[:, :3] == 0).all() and (regions[:, 3:] == 1).all()
    with pytest.raises(ValueError, match="tokens"):
        token_grid((16, 24), 7)
    with pytest.raises(ValueError, match="labels"):
        _ctrl(labels, n_regions=1)


def test_small_front_layer_keeps_its_tokens_on_coarse_grids():
    labels = torch.zeros(16, 16, dtype=torch.long)
    labels[:8, :8] = 1  # an earlier layer
    labels[6:8, 6:8] = 2  # a small later layer in front of it: 4 of coarse token (1, 1)'s 16 latent pixels
    ctrl = _ctrl(labels, n_regions=3).regions
    assert torch.equal(ctrl.token_regions(256, torch.device("cpu")).view(16, 16), labels)  # the latent grid: as is
    coarse = ctrl.token_regions(16, torch.device("cpu")).view(4, 4)
    assert coarse[1, 1] == 2  # a quarter (the default): in front, although region 1 has the rest
    assert coarse[0, 0] == 1 and coarse[3, 3] == 0 and (coarse == 2).sum() == 1
    majority = _ctrl(labels, n_regions=3, front_min_area=0.5).regions
    assert majority.token_regions(16, torch.device("cpu")).view(4, 4)[1, 1] == 1  # the majority rule
    labels[6, 6] = 1  # 3 of 16: below a quarter
    assert _ctrl(labels, n_regions=3).regions.token_regions(16, torch.device("cpu")).view(4, 4)[1, 1] == 1
    with pytest.raises(ValueError, match="front_min_area"):
        _ctrl(labels, n_regions=3, front_min_area=0)


def _attention(cross_dim=32, dim=32, heads=4):
    torch.manual_seed(0)
    return Attention(query_dim=dim, cross_attention_dim=cross_dim, heads=heads, dim_head=dim // heads)


def test_mqd_tokens_see_only_their_prompt():
    attn = _attention()
    h = w = 6
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[:, 3:] = 1
    labels[4:, :2] = 2
    ctrl = _ctrl(labels, n_regions=3, segment_length=5)
    x = torch.randn(2, h * w, 32)
    prompts = [torch.randn(2, 5, 32) for _ in range(3)]
    out = _mqd(ctrl)(attn, x, torch.cat(prompts, 1))
    flat = labels.reshape(-1)
    for r, prompt in enumerate(prompts):
        expected = AttnProcessor2_0()(attn, x, prompt)
        torch.testing.assert_close(out[:, flat == r], expected[:, flat == r], atol=1e-5, rtol=1e-5)


def test_mqd_shared_negative_rows_and_cached_keys_match_the_plain_computation():
    attn = _attention()
    h = w = 6
    labels = torch.randint(0, 3, (h, w))
    x = torch.randn(2, h * w, 32)
    negative = torch.randn(1, 5, 32)
    states = torch.cat([negative.repeat(1, 3, 1), torch.randn(1, 15, 32)])  # row 0: one prompt, repeated
    full = _mqd(_ctrl(labels, n_regions=3, segment_length=5))
    ctrl = _ctrl(labels, n_regions=3, segment_length=5, shared_rows=1)
    fast = _mqd(ctrl)
    expected = full(attn, x, states)
    torch.testing.assert_close(fast(attn, x, states), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(expected[:1], AttnProcessor2_0()(attn, x[:1], negative), atol=1e-5, rtol=1e-5)
    calls = []
    hook = attn.to_k.register_forward_hook(lambda *a: calls.append(1))
    x2 = torch.randn(2, h * w, 32)
    torch.testing.assert_close(fast(attn, x2, states), full(attn, x2, states), atol=1e-5, rtol=1e-5)
    assert not calls, "same encoder states: both processors reuse their cached keys"
    other = torch.cat([torch.randn(1, 5, 32).repeat(1, 3, 1), torch.randn(1, 15, 32)])  # new states: projected afresh
    torch.testing.assert_close(fast(attn, x2, other), full(attn, x2, other), atol=1e-5, rtol=1e-5)
    assert len(calls) == 3, "fast projects the shared row and the rest, full everything at once"
    hook.remove()


def test_mqd_gathers_each_chunks_keys_once_per_module_and_plan(monkeypatch):
    attn = _attention()
    h = w = 6
    labels = torch.randint(0, 3, (h, w), generator=torch.Generator().manual_seed(5))
    states = torch.randn(2, 15, 32)
    ctrl = _ctrl(labels, n_regions=3, segment_length=5, shared_rows=1)
    processor = _mqd(ctrl)
    gathered = []
    monkeypatch.setattr(mqd, "gather_segments", lambda *a: gathered.append(1) or gather_segments(*a))
    with use_backend("torch"):
        for step in range(3):  # a denoising loop: new queries, the same prompts
            x = torch.randn(2, h * w, 32)
            with use_backend("reference"):
                expected = processor(attn, x, states)
            torch.testing.assert_close(processor(attn, x, states), expected, atol=1e-5, rtol=1e-5)
        assert len(gathered) == 1
        processor(attn, x, torch.randn(2, 15, 32))  # new prompts: new keys, gathered again
        assert len(gathered) == 2


def test_mqd_runs_the_fused_cpp_kernel_by_default_without_gathering_keys(monkeypatch):
    from kernels import region_cpp
    if not region_cpp.available():
        pytest.skip(f"the C++ extension did not build: {region_cpp.unavailable_reason()}")
    attn = _attention()
    labels = torch.randint(0, 3, (6, 6), generator=torch.Generator().manual_seed(6))
    processor = _mqd(_ctrl(labels, n_regions=3, segment_length=5, shared_rows=1))
    monkeypatch.setattr(mqd, "gather_segments", lambda *a: pytest.fail("the fused kernel reads keys in place"))
    x, states = torch.randn(2, 36, 32), torch.randn(2, 15, 32)
    with torch.no_grad():  # as a pipeline runs it: the fused loop is forward only
        out = processor(attn, x, states)
    assert last_backend("region") == "cpp"
    with use_backend("reference"):
        torch.testing.assert_close(out, processor(attn, x, states), atol=1e-5, rtol=1e-5)


def test_mqd_self_attention_is_untouched_and_wrong_prompt_count_is_an_error():
    attn = _attention(cross_dim=None)
    ctrl = _ctrl(torch.zeros(4, 4, dtype=torch.long), n_regions=2, segment_length=5)
    x = torch.randn(1, 16, 32)
    torch.testing.assert_close(_mqd(ctrl)(attn, x), AttnProcessor2_0()(attn, x))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        _mqd(ctrl)(_attention(), x, torch.randn(1, 7, 32))


def _mqd_factory(ctrl):
    return lambda name, original: MultiQueryDisentangledProcessor(ctrl, name, original) if is_cross_attention(name) else None


def test_install_restores_the_original_processors_even_on_error(sd1_components):
    unet = sd1_components["unet"]
    before = dict(unet.attn_processors)
    ctrl = _ctrl(torch.zeros(8, 8, dtype=torch.long), n_regions=1)
    with pytest.raises(RuntimeError, match="boom"):
        with installed_processors(unet, _mqd_factory(ctrl)):
            kinds = {type(p).__name__ for name, p in unet.attn_processors.items() if is_cross_attention(name)}
            assert kinds == {"MultiQueryDisentangledProcessor"}
            raise RuntimeError("boom")
    after = unet.attn_processors
    assert all(after[name] is before[name] for name in before)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_mqd_with_one_region_equals_plain_unet(family, request):
    comps = request.getfixturevalue(f"{family}_components")
    unet = comps["unet"]
    latents = torch.randn(2, 4, 8, 8)
    cond = torch.randn(2, 77, unet.config.cross_attention_dim)
    extra = {}
    if family == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)}
    plain = unet(latents, 10, cond, **extra).sample
    ctrl = _ctrl(torch.zeros(8, 8, dtype=torch.long), n_regions=1)
    with installed_processors(unet, _mqd_factory(ctrl)):
        ours = unet(latents, 10, cond, **extra).sample
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "pixart"])
def test_mqd_runs_on_every_model_family_at_another_resolution(family, request):
    comps = request.getfixturevalue(f"{family}_components")
    model = comps.get("unet") or comps["transformer"]
    size = (12, 16)
    labels = torch.zeros(size, dtype=torch.long)
    labels[:, 8:] = 1
    ctrl = _ctrl(labels, n_regions=2)
    latents = torch.randn(1, 4, *size)
    if family == "pixart":
        dim = model.config.caption_channels
        kwargs = dict(encoder_hidden_states=torch.randn(1, 2 * 77, dim), timestep=torch.tensor([10]),
                      added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    else:
        kwargs = dict(encoder_hidden_states=torch.randn(1, 2 * 77, model.config.cross_attention_dim), timestep=10)
        if family == "sdxl":
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}
    with installed_processors(model, _mqd_factory(ctrl)):
        out = model(latents, **kwargs).sample
    assert out.shape[-2:] == size and torch.isfinite(out).all()
    assert len(ctrl.regions._plans) >= 1  # the region attention ran through the kernel dispatcher


@pytest.mark.skipif(not (torch.cuda.is_available() and triton_available()), reason="needs a CUDA GPU and triton")
def test_mqd_on_a_gpu_runs_the_triton_kernel_and_matches_the_torch_path():
    attn = _attention().cuda()
    h = w = 12
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[2:7, 3:9] = 1
    labels[6:, :5] = 2
    x = torch.randn(2, h * w, 32, device="cuda")
    states = torch.randn(2, 15, 32, device="cuda")
    out = _mqd(_ctrl(labels, n_regions=3, segment_length=5))(attn, x, states)
    assert last_backend("region") == "triton"
    with use_backend("torch"):
        expected = _mqd(_ctrl(labels, n_regions=3, segment_length=5))(
            attn, x, states)
    torch.testing.assert_close(out, expected, atol=5e-3, rtol=5e-3)  # float32 products run as TF32 in Triton


def test_token_grid_follows_the_unet_rounding_odd_sizes_up():
    """Guards against guessing the grid from the aspect ratio: at 33×40, three stride-2 levels give
    17×20, 9×10, 5×5 (the guess said 5×6 and raised)."""
    assert token_grid((33, 40), 17 * 20) == (17, 20)
    assert token_grid((33, 40), 9 * 10) == (9, 10)
    assert token_grid((33, 40), 25) == (5, 5)
    assert token_grid((64, 128), 16 * 32) == (16, 32)  # a transformer's patches of 4
    assert token_grid((30, 45), 6 * 9) == (6, 9)  # patches of 5: by the aspect ratio


def test_mqd_on_a_unet_whose_latent_is_odd_at_a_cross_attention_level():
    """A UNet with cross-attention three levels down, at a size whose latent is odd on the way there
    (66×80 px: latent 33×40 → 17×20 → 9×10 → 5×5)."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 8, 8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
                                down_block_types=("DownBlock2D",) * 3 + ("CrossAttnDownBlock2D",),
                                up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * 3)
    labels = torch.zeros(33, 40, dtype=torch.long)
    labels[:, 20:] = 1
    ctrl = _ctrl(labels, n_regions=2, segment_length=7)
    states = torch.randn(1, 14, 16)
    with installed_processors(unet, _mqd_factory(ctrl)):
        out = unet(torch.randn(1, 4, 33, 40), 10, states).sample
    assert out.shape == (1, 4, 33, 40) and torch.isfinite(out).all()
    assert (25, "cpu") in ctrl.regions._token_maps


def test_mqd_keys_layers_by_install_name_and_falls_back_to_the_processor_it_replaced(sd1_components):
    """Guards against caching by id(attn) (ids are reused once a module is freed) and against a
    hard-coded fallback that drops a user's processor (e.g. xformers)."""
    unet = sd1_components["unet"]

    class Recording(AttnProcessor2_0):
        calls = 0

        def __call__(self, *args, **kwargs):
            Recording.calls += 1
            return super().__call__(*args, **kwargs)
    unet.set_attn_processor(Recording())
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[:, 4:] = 1
    ctrl = _ctrl(labels, n_regions=2)
    states = torch.randn(1, 2 * 77, unet.config.cross_attention_dim)
    with installed_processors(unet, _mqd_factory(ctrl)):
        unet(torch.randn(1, 4, 8, 8), 10, states)
        cross = sorted(name for name in unet.attn_processors if is_cross_attention(name))
        assert sorted(ctrl.regions.keys) == cross
        self_attention_calls = Recording.calls
        assert self_attention_calls == len(unet.attn_processors) - len(cross)  # untouched layers: the user's
        ctrl.regions = None  # a call without regions: every layer falls back to the user's processor
        unet(torch.randn(1, 4, 8, 8), 10, states[:, :77])
        assert Recording.calls == self_attention_calls + len(unet.attn_processors)
    assert all(isinstance(p, Recording) for p in unet.attn_processors.values())
