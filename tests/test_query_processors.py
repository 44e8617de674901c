"""Query recording, query injection (blend and guidance) and source key/value injection, on tiny
models: the processors multi-view editing installs (attention_processors/multiview.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from attention_processors import AttentionController, installed_processors
from attention_processors.cross_view import ViewState, ring_neighbours
from attention_processors.multiview import MultiViewProcessor
from attention_processors.query_inject import guidance_step, query_distance
from attention_processors.query_record import QueryState, default_query_layers, from_views, to_views
from attention_processors.source_kv import SourceKV


def _processors(model, controller):
    return lambda name, original: (MultiViewProcessor(controller, name, original)
                                   if name.endswith("attn1.processor") else None)


def _unet_call(unet, latents, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(latents.shape[0], 5, unet.config.cross_attention_dim, generator=g)
    return unet(latents, 10, encoder_hidden_states=text).sample


def test_recorded_query_shapes_on_a_unet(sd1_components):
    """Guards: recording the wrong layers (cross-attention, down blocks) or a reshaped record."""
    unet = sd1_components["unet"]
    layers = default_query_layers(unet)
    assert layers and all(".attn1." in n and n.startswith("up_blocks.") for n in layers)
    controller = AttentionController(queries=QueryState(tuple(layers), recording=True))
    latents = torch.randn(6, 4, 8, 8)  # 2 branches × 3 views
    with installed_processors(unet, _processors(unet, controller)):
        _unet_call(unet, latents)
    assert set(controller.queries.recorded) == set(layers)
    for name, q in controller.queries.recorded.items():
        attn = unet.get_submodule(name.removesuffix(".processor"))
        assert q.shape == (6, 64, attn.to_q.out_features), name
        maps = to_views(q, 3, (8, 8))
        assert maps.shape == (3, 8, 8, 2 * attn.to_q.out_features)
        assert torch.equal(from_views(maps, 2), q)  # the view maps and the batch rows are the same numbers


class _TokenCount:
    """A processor that notes its layer's token count, then runs the one it replaced."""

    def __init__(self, counts: dict, name: str, original):
        self.counts, self.name, self.original = counts, name, original

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.counts[self.name] = hidden_states.shape[1]
        return self.original(attn, hidden_states, *args, **kwargs)


def test_default_query_layers_are_the_up_blocks_at_the_two_highest_token_resolutions():
    """Guards: the levels counted from the coarse end, one level or every attention up block recorded. The
    tiny SD-1-like UNet has a single attention up block and cannot tell these apart; this one has three,
    and the token counts measured in a forward pass say which are the two highest resolutions."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16, 32), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 3,
                                up_block_types=("CrossAttnUpBlock2D",) * 3, cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    counts = {}
    with installed_processors(unet, lambda name, original: (_TokenCount(counts, name, original)
                                                            if name.endswith("attn1.processor") else None)):
        _unet_call(unet, torch.randn(1, 4, 16, 16))
    up = {name: n for name, n in counts.items() if name.startswith("up_blocks.")}
    highest = sorted(set(up.values()))[-2:]
    assert highest == [64, 256]  # 8×8 and 16×16 tokens; the third attention up block has 4×4
    chosen = default_query_layers(unet)
    assert sorted(chosen) == sorted(name for name, n in up.items() if n in highest)
    assert chosen == [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1.processor" for b in (1, 2)
                      for a in range(2)]  # layers_per_block + 1 per up block


def test_recorded_query_shapes_on_a_transformer(pixart_components):
    transformer = pixart_components["transformer"]
    layers = default_query_layers(transformer)
    assert layers == ["transformer_blocks.1.attn1.processor"]
    controller = AttentionController(queries=QueryState(tuple(layers), recording=True))
    with installed_processors(transformer, _processors(transformer, controller)):
        transformer(torch.randn(2, 4, 8, 8), encoder_hidden_states=torch.randn(2, 5, 32), timestep=torch.tensor([10, 10]),
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    (q,) = controller.queries.recorded.values()
    assert q.shape == (2, 16, 24)  # 8×8 latent, patch 2 → 4×4 tokens; 3 heads × 8


def test_installing_changes_nothing_until_a_mechanism_is_on(sd1_components):
    """Guards: the processor altering a model that no mechanism asked it to change."""
    unet = sd1_components["unet"]
    latents = torch.randn(2, 4, 8, 8)
    plain = _unet_call(unet, latents)
    with installed_processors(unet, _processors(unet, AttentionController())):
        assert torch.allclose(_unet_call(unet, latents), plain, atol=1e-5)
    controller = AttentionController(queries=QueryState(tuple(default_query_layers(unet)), recording=True))
    with installed_processors(unet, _processors(unet, controller)):  # recording alone: same output
        assert torch.allclose(_unet_call(unet, latents), plain, atol=1e-5)


def test_blend_with_weight_one_attends_with_exactly_the_rendered_queries(sd1_components):
    """Guards: a blend that mixes the wrong way round or reads the rendered queries of another layer."""
    unet = sd1_components["unet"]
    name = default_query_layers(unet)[0]
    attn = unet.get_submodule(name.removesuffix(".processor"))
    hidden = torch.randn(2, 64, attn.to_q.in_features)
    rendered = torch.randn(2, 64, attn.to_q.out_features)
    controller = AttentionController(queries=QueryState((name,), mode="blend", weight=1.0, rendered={name: rendered}))
    out = MultiViewProcessor(controller, name)(attn, hidden)
    # the layer computed by hand with q̂ in place of to_q(hidden)
    heads, d = attn.heads, attn.to_q.out_features // attn.heads
    split = lambda x: x.view(2, -1, heads, d).transpose(1, 2)  # noqa: E731
    expected = F.scaled_dot_product_attention(split(rendered), split(attn.to_k(hidden)), split(attn.to_v(hidden)))
    expected = attn.to_out[0](expected.transpose(1, 2).reshape(2, 64, -1)) / attn.rescale_output_factor
    assert torch.allclose(out, expected, atol=1e-5)
    controller.queries.weight = 0.0  # w = 0: the layer as it was
    plain = MultiViewProcessor(AttentionController(), name)(attn, hidden)
    assert torch.allclose(MultiViewProcessor(controller, name)(attn, hidden), plain, atol=1e-5)


def test_guidance_step_lowers_the_query_distance(sd1_components):
    """Guards: a gradient step of the wrong sign, or one that never reaches the latent."""
    unet = sd1_components["unet"]
    layers = tuple(default_query_layers(unet))
    controller = AttentionController(queries=QueryState(layers, recording=True))
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 8, 8)
    with installed_processors(unet, _processors(unet, controller)):
        _unet_call(unet, latents + 0.5 * torch.randn_like(latents))  # targets: the queries of a nearby latent
        controller.queries.rendered = {n: q.clone() for n, q in controller.queries.recorded.items()}
        controller.queries.recording = False

        def denoise(z):
            return _unet_call(unet, z)
        moved, before = guidance_step(denoise, latents, controller.queries, alpha=0.05)
        controller.queries.recording = True
        _unet_call(unet, moved)
        after = float(query_distance(controller.queries))
    assert after < before
    assert not moved.requires_grad and moved.shape == latents.shape
    assert controller.queries.mode is None and not controller.queries.keep_graph  # the state as it was


def test_source_kv_injection_reads_the_source_views(sd1_components):
    """Guards: edited views reading their own keys (no injection) or another view's source."""
    unet = sd1_components["unet"]
    layers = default_query_layers(unet)
    source, edited = torch.randn(3, 4, 8, 8), torch.randn(6, 4, 8, 8)
    kv = SourceKV(frozenset(layers), start_step=0, mode="record")
    controller = AttentionController(source_kv=kv)
    with installed_processors(unet, _processors(unet, controller)):
        g = torch.Generator().manual_seed(1)
        text = torch.randn(3, 5, 32, generator=g)
        unet(source, 10, encoder_hidden_states=text)
        kv.mode = "inject"
        out = unet(torch.cat([source, source]), 10, encoder_hidden_states=torch.cat([text, text])).sample
        with_edit = unet(edited, 10, encoder_hidden_states=torch.cat([text, text])).sample
        kv.mode = None
        plain_edit = unet(edited, 10, encoder_hidden_states=torch.cat([text, text])).sample
    plain_source = unet(source, 10, encoder_hidden_states=text).sample
    # the source views reading their own stored keys: their plain output, in both branches
    assert torch.allclose(out[:3], plain_source, atol=1e-5) and torch.allclose(out[3:], plain_source, atol=1e-5)
    assert not torch.allclose(with_edit, plain_edit, atol=1e-3)  # the edit reads the source's keys
    controller.step = 0
    kv.start_step, kv.mode = 5, "inject"  # before start_step: the edit's own keys
    with installed_processors(unet, _processors(unet, controller)):
        early = unet(edited, 10, encoder_hidden_states=torch.cat([text, text])).sample
    assert torch.allclose(early, plain_edit, atol=1e-5)


def test_extended_attention_baseline_reads_neighbours(sd1_components):
    """The extended-attention baseline through the same processor: with no neighbours it is the plain
    layer, with ring neighbours the views change."""
    unet = sd1_components["unet"]
    latents = torch.randn(8, 4, 8, 8)  # 2 branches × 4 views
    plain = _unet_call(unet, latents)
    alone = torch.arange(4)[:, None]
    for index, same in ((alone, True), (torch.cat([alone, torch.tensor(ring_neighbours(4))], 1), False)):
        controller = AttentionController(views=ViewState(index.long()))
        with installed_processors(unet, _processors(unet, controller)):
            out = _unet_call(unet, latents)
        assert torch.allclose(out, plain, atol=1e-4) == same


def test_processors_restored_after_a_call_that_raises(sd1_components):
    unet = sd1_components["unet"]
    before = dict(unet.attn_processors)
    controller = AttentionController(queries=QueryState(tuple(default_query_layers(unet)), mode="blend",
                                                        rendered={default_query_layers(unet)[0]: torch.randn(1, 3, 3)}))
    with pytest.raises(ValueError, match="rendered queries"):
        with installed_processors(unet, _processors(unet, controller)):
            _unet_call(unet, torch.randn(2, 4, 8, 8))
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}


def test_state_checks_its_fields():
    with pytest.raises(ValueError, match="mode"):
        QueryState(("a",), mode="paste")
    with pytest.raises(ValueError, match="weight"):
        QueryState(("a",), weight=1.5)
    with pytest.raises(ValueError, match="layers"):
        QueryState(())
    with pytest.raises(ValueError, match="mode"):
        SourceKV(frozenset({"a"}), mode="swap")
