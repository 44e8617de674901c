"""What one edit is asked to do (`EditSettings`) and what the memory keeps of it (`Layer`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

REPLAY_MODES = ("memory", "seed")
OVERLAYS = ("object", "mask")
# "prompt" (generated), "image" (DDIM inversion), "noise" (forward noising): backgrounds; "object": the rest
KINDS = ("prompt", "image", "noise", "object")
MAX_SEED = 2**63 - 1


def check_seed(seed) -> int:
    """seed as an int, or a ValueError naming it: an integer (Python or numpy) in 0..2^63 − 1."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed: expected an integer in 0..{MAX_SEED}, got {seed!r}")
    return int(seed)


@dataclass(frozen=True)
class EditSettings:
    """What every edit of a session is asked to do. height/width None: the model's default size
    (`sized_for`)."""

    height: int | None = None
    width: int | None = None
    steps: int = 20
    guidance: float = 4.0
    harmonize: float = 0.2  # last fraction of steps run without BCG, so the seam settles
    negative_prompt: str = ""
    mqd: bool = True
    bcg: bool = True
    dilate_px: int | None = None  # pixels outside the mask dilated by this much (plus feathering) never
    #                              change; None: half a latent cell, at least 2 (2 px at 64 px, 4 px for SD)
    protect: float = 0.5  # an earlier object a new rough mask covers by at most this fraction is kept
    #                       (its pixels leave the edit region); above it the new layer may occlude it.
    #                       0 protects nothing.
    overlay: str = "object"  # what of a new layer is laid over the scene: "object", only the pixels its
    #                         generation visibly changed (feathered; the background it redrew inside the
    #                         rough mask is not shown, and its latents keep the scene's); "mask", the whole
    #                         dilated rough mask (which showed a halo of new background around the object)
    overlay_threshold: float = 80.0  # the RGB distance from the scene above which a pixel counts as the new
    #                                  object for the "object" overlay (lower: more of the redrawn
    #                                  background around the object is laid over the scene with it; 80
    #                                  keeps success and shows less of it: RESULTS.md, "Sixteenth session").
    #                                  Also what later layers take as this layer's object (object_mask)
    tighten: float | None = None  # harmonize steps keep the background outside the object (see
    #                               LayeredEditPipeline.__call__); None: they run free inside the mask
    strength: float = 1.0  # below 1, a new layer starts from the scene's own latents after the first
    #                        (1 − strength) of the steps, inside the rough mask too (image-to-image): less
    #                        halo, but fewer objects made on held-out scenes (RESULTS.md, "Fifteenth
    #                        session"), so off by default
    replay: str = "memory"  # how a later layer that sees a removal/re-edit below it is brought up to date:
    #                         "memory": its own latents inside its object (from memory) spliced onto the new
    #                         scene, then only the last `harmonize` steps re-run, and that result kept only
    #                         near what changed below (farther than 2·dilate_px its pixels stay exact);
    #                         "seed": re-run in full from its seed, prompt and mask (a new draw of the object)

    def __post_init__(self):
        if self.replay not in REPLAY_MODES:
            raise ValueError(f"replay: expected one of {REPLAY_MODES}, got {self.replay!r}")
        if self.overlay not in OVERLAYS:
            raise ValueError(f"overlay: expected one of {OVERLAYS}, got {self.overlay!r}")
        if not 0 <= self.harmonize <= 1:
            raise ValueError(f"harmonize: expected a fraction in [0, 1], got {self.harmonize!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: expected a positive integer, got {self.steps!r}")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance):
            raise ValueError(f"guidance: expected a finite number, got {self.guidance!r}")
        if self.dilate_px is not None and (not isinstance(self.dilate_px, int) or self.dilate_px < 0):
            raise ValueError(f"dilate_px: expected a non-negative integer, got {self.dilate_px!r}")
        if self.tighten is not None and (not isinstance(self.tighten, (int, float)) or not self.tighten > 0
                                         or not math.isfinite(self.tighten)):
            raise ValueError(f"tighten: expected a positive latent distance or None, got {self.tighten!r}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not 0 < self.strength <= 1:
            raise ValueError(f"strength: expected a fraction in (0, 1], got {self.strength!r}")
        if isinstance(self.overlay_threshold, bool) or not isinstance(self.overlay_threshold, (int, float)) \
                or not 0 < self.overlay_threshold < 442:
            raise ValueError(f"overlay_threshold: expected an RGB distance in (0, 442), got {self.overlay_threshold!r}")
        if not 0 <= self.protect <= 1:
            raise ValueError(f"protect: expected a fraction in [0, 1], got {self.protect!r}")

    def sized_for(self, pipe) -> "EditSettings":
        """These settings with what is unset taken from the pipeline: its default height and width, and
        a dilation of half its latent cell (at least 2 px), so a rough mask's border means the same at
        every size."""
        height, width = pipe.default_size
        dilate = self.dilate_px if self.dilate_px is not None else max(2, pipe.vae_scale_factor // 2)
        return replace(self, height=self.height or height, width=self.width or width, dilate_px=dilate)


@dataclass(frozen=True)
class Layer:
    """One layer of the memory. trajectory: (steps + 1, C, h, w) latents of the composite scene after
    this layer, trajectory[k] after k steps; image: (H, W, 3) uint8 composite; rough_mask: (H, W) bool,
    as the user drew it; edit_mask: the part of it the layer was allowed to repaint (the rough mask
    minus protected earlier objects); object_mask: the pixels the layer visibly changed (its object).
    The memory keeps the prompt's words, and the pipeline encodes them whenever the layer is a region
    of a later edit (milliseconds, next to a denoising loop)."""

    prompt: str
    seed: int
    rough_mask: np.ndarray
    kind: str  # one of KINDS
    trajectory: torch.Tensor
    image: np.ndarray
    edit_mask: np.ndarray
    object_mask: np.ndarray

    def __post_init__(self):
        # A layer is memory: its arrays are read-only, so no caller can change a session (or its undo
        # history) by writing into an array it was given or handed back.
        for array in (self.rough_mask, self.image, self.edit_mask, self.object_mask):
            array.setflags(write=False)

