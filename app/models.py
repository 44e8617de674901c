"""The models the app runs on: the operator's choice, loaded once on first use, shared by every tab
and session. A client picks one by its label; it can never name a path or a hub id of its own."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path

from diffusers import DiffusionPipeline

from pipelines.loading import EMBEDDED, load_controlnet, load_pipeline, load_view_projections


def model_labels(sources: list[str]) -> dict[str, str]:
    """label → source for the allowed models: "embedded", a folder's name, a hub id as it is
    (labels never show where a folder is on the server)."""
    labels: dict[str, str] = {}
    for source in dict.fromkeys(sources):
        label = source if source == EMBEDDED or not Path(source).expanduser().exists() else Path(source).name
        base, n = label, 2
        while label in labels:
            label, n = f"{base} ({n})", n + 1
        labels[label] = source
    return labels


class ModelCache:
    """Pipelines by (label, pipeline class). `default` is the label of the first model. `generation`
    is held while one runs: a pipeline's processors and scheduler are shared state, so one at a time."""

    def __init__(self, sources: list[str] | None = None, device: str | None = None, dtype=None):
        """device, dtype: where and in what precision every model runs (the operator's flags)."""
        self.sources = model_labels(sources or [EMBEDDED])
        self.device, self.dtype = device, dtype
        self.default = next(iter(self.sources))
        self._pipelines: dict[tuple[str, type], DiffusionPipeline] = {}
        self._lock = threading.Lock()
        self.generation = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.sources)

    def label_of(self, pipe: DiffusionPipeline) -> str | None:
        """The label a loaded pipeline was loaded under (None: not one of ours)."""
        with self._lock:
            return next((label for (label, _), p in self._pipelines.items() if p is pipe), None)

    def get(self, label: str | None, pipeline_class: type[DiffusionPipeline]) -> DiffusionPipeline:
        label = label or self.default
        if label not in self.sources:
            raise ValueError(f"model: choose one of {self.labels}")
        with self._lock:
            if (label, pipeline_class) not in self._pipelines:
                options = {} if self.dtype is None else {"dtype": self.dtype}
                parameters = inspect.signature(pipeline_class).parameters
                if self.sources[label] == EMBEDDED and "controlnet" in parameters:  # shipped beside the model
                    extra = {"controlnet": load_controlnet(EMBEDDED, **options)}
                    if "view_projections" in parameters:
                        extra["view_projections"] = load_view_projections(EMBEDDED, **options)
                    options.update(extra)
                pipe = load_pipeline(self.sources[label], pipeline_class, device=self.device, **options)
                pipe.set_progress_bar_config(disable=True)
                self._pipelines[label, pipeline_class] = pipe
            return self._pipelines[label, pipeline_class]
