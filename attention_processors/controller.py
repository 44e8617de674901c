"""The controller: per-call state that Strata's processors read (the prompt-to-prompt AttentionStore
pattern), built from parts.

The pipeline owns one controller per call. It holds the step and timestep, which every processor
may read, and one small state object per mechanism: `regions` (MQD's region maps, plans and cached
keys, `attention_processors.regions`), `views` (cross-view and temporal attention's groups and
index, `attention_processors.cross_view`), `queries` (recorded and rendered self-attention queries,
`attention_processors.query_record`) and `source_kv` (the source views' keys and values,
`attention_processors.source_kv`).
Processors hold a reference to the controller and their own install name, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from attention_processors.regions import RegionState

if TYPE_CHECKING:
    from attention_processors.cross_view import ViewState
    from attention_processors.query_record import QueryState
    from attention_processors.source_kv import SourceKV


@dataclass
class AttentionController:
    """What the processors read during one pipeline call: the denoising step and timestep, and each
    mechanism's state (None where the call does not use the mechanism)."""

    regions: RegionState | None = None
    views: "ViewState | None" = None
    queries: "QueryState | None" = None
    source_kv: "SourceKV | None" = None
    step: int = 0
    timestep: int | None = None

    def begin_step(self, step: int, timestep: int | None) -> None:
        self.step, self.timestep = step, timestep
