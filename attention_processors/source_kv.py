"""Source key/value injection (MasaCtrl, Cao et al. 2023): an edited view's self-attention reads the
keys and values of its own source view, so the edit keeps the source's appearance while its queries
(and the control map) decide the layout.

Per denoising step the pipeline first runs the source views (their inverted latents at that step,
their own control maps) with `mode = "record"`, which stores each listed layer's keys and values;
then the edited views with `mode = "inject"`: from `start_step` on, the listed layers attend to the
stored source keys and values instead of their own. The stored rows are the source views (V rows);
the edited batch has branches·V rows, and branch b's view v reads source view v.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SourceKV:
    layers: frozenset[str]
    start_step: int = 0
    mode: str | None = None  # None, "record" or "inject"
    stored: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self):
        self.layers = frozenset(self.layers)
        if self.mode not in (None, "record", "inject"):
            raise ValueError(f"mode: expected None, 'record' or 'inject', got {self.mode!r}")
        if self.start_step < 0:
            raise ValueError(f"start_step: expected ≥ 0, got {self.start_step}")

    def exchange(self, name: str, step: int, key: torch.Tensor, value: torch.Tensor):
        """key, value: (batch, L, C). Record them, or return the source's in their place."""
        if name not in self.layers or self.mode is None:
            return key, value
        if self.mode == "record":
            self.stored[name] = (key.detach(), value.detach())
            return key, value
        if step < self.start_step or name not in self.stored:
            return key, value
        source_key, source_value = self.stored[name]
        if key.shape[0] % source_key.shape[0] or key.shape[1:] != source_key.shape[1:]:
            raise ValueError(f"{name}: edited keys {tuple(key.shape)} do not match the source's {tuple(source_key.shape)}")
        repeat = key.shape[0] // source_key.shape[0]
        return (source_key.repeat(repeat, 1, 1).to(key.dtype), source_value.repeat(repeat, 1, 1).to(value.dtype))
