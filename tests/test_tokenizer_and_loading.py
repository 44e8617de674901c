"""The world tokenizer and the one model loader (embedded default, local folder, hub id offline)."""

import pytest
from diffusers import StableDiffusionPipeline

from pipelines.loading import EMBEDDED_MODEL, ModelLoadError, load_pipeline, resolve_model
from world.tokenizer import build_world_tokenizer
from world.vocab import all_words


def test_every_world_word_is_one_token():
    tokenizer = build_world_tokenizer()
    for word in all_words():
        assert len(tokenizer.tokenize(word)) == 1, word


def test_tokenizer_pads_to_77_and_round_trips(tmp_path):
    tokenizer = build_world_tokenizer(tmp_path / "tok")
    ids = tokenizer("an orange triangle , a red circle and a blue square on snow", padding="max_length",
                    max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id
    from transformers import CLIPTokenizer
    again = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert again("a pink square on road").input_ids == tokenizer("a pink square on road").input_ids


def test_unknown_words_still_tokenize():
    tokenizer = build_world_tokenizer()
    assert len(tokenizer.tokenize("a magenta dragon")) > 3


def test_loader_reads_a_local_diffusers_folder(tmp_path, sd1_components):
    StableDiffusionPipeline(**sd1_components).save_pretrained(tmp_path / "model")
    pipe = load_pipeline(tmp_path / "model")
    assert isinstance(pipe, StableDiffusionPipeline)


def test_loader_hub_id_offline_names_the_embedded_default():
    with pytest.raises(ModelLoadError, match="embedded default"):
        load_pipeline("strata-test/definitely-not-cached")


def test_loader_rejects_a_folder_that_is_not_diffusers(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a diffusers folder"):
        load_pipeline(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(str(tmp_path / "missing" / "deeper"))


def test_embedded_default_loads_when_shipped():
    if not (EMBEDDED_MODEL / "model_index.json").exists():
        with pytest.raises(ModelLoadError, match="training.train"):
            load_pipeline("embedded")
        return
    pipe = load_pipeline("embedded")
    assert pipe.unet.dtype.is_floating_point
