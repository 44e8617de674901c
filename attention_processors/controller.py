"""The controller: per-call state that Strata's processors read (regions, timestep, caches).

The pipeline owns one controller per call; processors hold a reference to it and nothing else.
Region maps live at latent resolution and are resampled to each attention layer's token grid on
first use (any resolution, UNet or patchified transformer: the grid is inferred from the token
count and the latent's aspect ratio), then cached together with their kernel plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kernels import RegionPlan, make_plan


def region_labels(masks: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """(H, W) long labels from layer masks ordered back to front: 0 is the background, mask i is
    label i, and a later mask covers the earlier ones where they overlap (later layers are in front)."""
    labels = torch.zeros(height, width, dtype=torch.long)
    for i, mask in enumerate(masks, start=1):
        if mask.shape[-2:] != (height, width):
            raise ValueError(f"masks[{i - 1}]: expected shape ({height}, {width}), got {tuple(mask.shape)}")
        labels[mask.bool()] = i
    return labels


@dataclass
class AttentionController:
    """Holds what the processors need for one pipeline call.

    labels: (H, W) long region per latent pixel, values in [0, n_regions), or None (no regions);
    segment_length: tokens per prompt in the concatenated encoder states (77 for CLIP);
    shared_rows: how many leading batch rows carry one prompt repeated in every segment (the
    classifier-free-guidance negative half): they get plain attention on the first segment;
    front_min_area: see token_regions (regions with higher labels are in front).
    The encoder states are fixed for a call, so processors may cache their keys and values here.
    """

    latent_size: tuple[int, int]
    labels: torch.Tensor | None = None
    n_regions: int = 1
    segment_length: int = 77
    shared_rows: int = 0
    front_min_area: float = 0.25
    step: int = 0
    timestep: int | None = None
    _token_maps: dict = field(default_factory=dict, repr=False)
    _plans: dict = field(default_factory=dict, repr=False)
    kv_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not 0 < self.front_min_area <= 1:
            raise ValueError(f"front_min_area: expected a fraction in (0, 1], got {self.front_min_area!r}")
        if self.labels is not None:
            if tuple(self.labels.shape) != tuple(self.latent_size):
                raise ValueError(f"labels: expected shape {tuple(self.latent_size)}, got {tuple(self.labels.shape)}")
            if int(self.labels.max()) >= self.n_regions or int(self.labels.min()) < 0:
                raise ValueError(f"labels: values must be in [0, {self.n_regions}), got "
                                 f"{int(self.labels.min())}..{int(self.labels.max())}")

    def begin_step(self, step: int, timestep: int | None) -> None:
        self.step, self.timestep = step, timestep

    def token_grid(self, n_tokens: int) -> tuple[int, int]:
        """The (h, w) grid of an attention layer with n_tokens tokens over this latent."""
        height, width = self.latent_size
        scale = math.sqrt(height * width / n_tokens)
        h, w = round(height / scale), round(width / scale)
        if h * w != n_tokens:
            raise ValueError(f"cannot place {n_tokens} tokens on a grid over a {height}×{width} latent")
        return h, w

    def token_regions(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        """(n_tokens,) region of each token: the frontmost region (highest label) that covers at least
        `front_min_area` of the token's area, else the region covering most of it. On the latent grid
        itself this is the label map; on coarser grids a small front layer keeps its tokens instead of
        vanishing under the region it sits on (later layers are in front)."""
        key = (n_tokens, str(device))
        if key not in self._token_maps:
            h, w = self.token_grid(n_tokens)
            one_hot = F.one_hot(self.labels, self.n_regions).permute(2, 0, 1)[None].float()
            area = F.adaptive_avg_pool2d(one_hot, (h, w))[0]  # the identity on the latent grid itself
            index = torch.arange(self.n_regions, device=area.device).view(-1, 1, 1).expand_as(area)
            front = torch.where(area >= self.front_min_area, index, -1).amax(0)
            self._token_maps[key] = torch.where(front >= 0, front, area.argmax(0)).reshape(-1).to(device)
        return self._token_maps[key]

    def region_plan(self, n_tokens: int, batch: int, device: torch.device) -> RegionPlan:
        key = (n_tokens, batch, str(device))
        if key not in self._plans:
            self._plans[key] = make_plan(self.token_regions(n_tokens, device), batch, self.n_regions)
        return self._plans[key]
