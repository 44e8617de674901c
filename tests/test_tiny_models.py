"""The tiny random models build from configs and run through their diffusers pipelines."""

import numpy as np
import torch
from diffusers import (PixArtAlphaPipeline, StableDiffusionControlNetPipeline, StableDiffusionPipeline,
                       StableDiffusionXLPipeline)

from tests.tiny_models import tiny_controlnet

PROMPT = "a red circle on grass"


def _run(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)
    return out.images


def test_sd1_like_generates_deterministically(sd1_components):
    pipe = StableDiffusionPipeline(**sd1_components)
    a, b = _run(pipe, height=32, width=32), _run(pipe, height=32, width=32)
    assert a.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(a, b)


def test_sdxl_like_generates(sdxl_components):
    images = _run(StableDiffusionXLPipeline(**sdxl_components), height=32, width=32)
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_pixart_like_generates(pixart_components):
    images = _run(PixArtAlphaPipeline(**pixart_components), height=32, width=32, max_sequence_length=77, use_resolution_binning=False)
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_controlnet_generates_from_a_control_map(sd1_components):
    controlnet = tiny_controlnet(sd1_components["unet"])
    pipe = StableDiffusionControlNetPipeline(**sd1_components, controlnet=controlnet)
    control = torch.rand(1, 4, 32, 32)
    images = _run(pipe, image=control, height=32, width=32)
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
