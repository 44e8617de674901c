"""MQD's state for one pipeline call: which region each image token belongs to, and the keys of the
region prompts, which are fixed for a call and so projected once per layer.

Region maps live at latent resolution and are resampled to each attention layer's token grid on
first use (any resolution, UNet or patchified transformer), then cached with their kernel plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from attention_processors.tokens import token_grid
from kernels import RegionPlan, RegionSegments, make_plan


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
class CachedKeys:
    """One layer's projected prompt keys and values for a call, valid while its encoder states are
    the same tensor (the entry holds a reference, so the identity cannot pass to another tensor).
    shared: the first segment of the leading `shared_rows` rows ((k, v), or None); rest: every
    segment of the other rows; segments: the torch path's per-chunk gather of `rest` (or None)."""

    encoder_states: torch.Tensor
    shared_rows: int
    shared: tuple[torch.Tensor, torch.Tensor] | None
    rest: tuple[torch.Tensor, torch.Tensor]
    segments: RegionSegments | None = None


@dataclass
class RegionState:
    """Regions for one call.

    labels: (h, w) long region per latent pixel, values in [0, n_regions), shared by the batch; or
    (B, h, w), one map per batch row after the shared rows (the driving pipeline's cameras and frames
    each have their own boxes); segment_length: tokens per
    prompt in the concatenated encoder states (77 for CLIP); shared_rows: how many leading batch rows
    carry one prompt repeated in every segment (the classifier-free-guidance negative half): they get
    plain attention on the first segment; front_min_area: see token_regions (regions with higher
    labels are in front). keys: each layer's CachedKeys, by the layer's install name.
    """

    labels: torch.Tensor
    n_regions: int
    segment_length: int = 77
    shared_rows: int = 0
    front_min_area: float = 0.25
    keys: dict[str, CachedKeys] = field(default_factory=dict, repr=False)
    _token_maps: dict = field(default_factory=dict, repr=False)
    _plans: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not 0 < self.front_min_area <= 1:
            raise ValueError(f"front_min_area: expected a fraction in (0, 1], got {self.front_min_area!r}")
        if self.labels.dim() not in (2, 3):
            raise ValueError(f"labels: expected an (h, w) or (B, h, w) map, got shape {tuple(self.labels.shape)}")
        if int(self.labels.max()) >= self.n_regions or int(self.labels.min()) < 0:
            raise ValueError(f"labels: values must be in [0, {self.n_regions}), got "
                             f"{int(self.labels.min())}..{int(self.labels.max())}")

    @property
    def latent_size(self) -> tuple[int, int]:
        return tuple(self.labels.shape[-2:])

    def token_regions(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        """(n_tokens,) (or (B, n_tokens) for per-row labels) region of each token: the frontmost region
        (highest label) that covers at least
        `front_min_area` of the token's area, else the region covering most of it. On the latent grid
        itself this is the label map; on coarser grids a small front layer keeps its tokens instead of
        vanishing under the region it sits on (later layers are in front)."""
        key = (n_tokens, str(device))
        if key not in self._token_maps:
            h, w = token_grid(self.latent_size, n_tokens)
            labels = self.labels if self.labels.dim() == 3 else self.labels[None]
            one_hot = F.one_hot(labels, self.n_regions).permute(0, 3, 1, 2).float()
            area = F.adaptive_avg_pool2d(one_hot, (h, w))  # the identity on the latent grid itself
            index = torch.arange(self.n_regions, device=area.device).view(1, -1, 1, 1).expand_as(area)
            front = torch.where(area >= self.front_min_area, index, -1).amax(1)
            regions = torch.where(front >= 0, front, area.argmax(1)).reshape(len(labels), -1).to(device)
            self._token_maps[key] = regions if self.labels.dim() == 3 else regions[0]
        return self._token_maps[key]

    def region_plan(self, n_tokens: int, batch: int, device: torch.device) -> RegionPlan:
        key = (n_tokens, batch, str(device))
        if key not in self._plans:
            self._plans[key] = make_plan(self.token_regions(n_tokens, device), batch, self.n_regions)
        return self._plans[key]
