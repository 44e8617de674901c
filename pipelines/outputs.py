"""The output dataclasses of Strata's pipelines (diffusers' `BaseOutput`: attribute, key or tuple access)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class LayeredEditPipelineOutput(BaseOutput):
    """images: the decoded layer, a list of PIL images or a (1, H, W, 3) uint8 array (output_type
    "pil" / "np"), or None for output_type "latent"; trajectory: (steps + 1, C, h, w), entry k the
    latents of the scene after k denoising steps, the last the final latents."""

    images: list[PIL.Image.Image] | np.ndarray | None
    trajectory: torch.Tensor


@dataclass
class DrivingVideoPipelineOutput(BaseOutput):
    """frames: (F, V, H, W, 3) uint8, frame-major, cameras in the rig's order (None for output_type
    "none"); camera_names: the rig's camera names, in that order."""

    frames: np.ndarray | None
    camera_names: list[str]


@dataclass
class MultiViewEditPipelineOutput(BaseOutput):
    """images: the edited views, (V, H, W, 3) uint8 in the cameras' order (None for output_type
    "latent"); latents: (V, C, h, w) the final latents; fits: per QNeRF interval its first and last
    step (step, last_step), the seconds of its query-record pass (record_seconds), of the fit and render
    (seconds) and of its denoising steps without those (generation_seconds), the fit's iterations and
    final loss (empty without query injection); seconds: the call's stages (inversion, generation,
    fitting), in seconds."""

    images: np.ndarray | None
    latents: torch.Tensor
    fits: list[dict]
    seconds: dict[str, float]
