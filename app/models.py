"""The models the app runs on: loaded once, on first use, and shared by every tab and session."""

from __future__ import annotations

import threading

from diffusers import DiffusionPipeline

from pipelines.loading import EMBEDDED, load_pipeline


class ModelCache:
    """Pipelines by (model name, pipeline class). `generation` is held while one runs: a pipeline's
    processors and scheduler are shared state, so one generation at a time."""

    def __init__(self, default: str = EMBEDDED):
        self.default = default
        self._pipelines: dict[tuple[str, type], DiffusionPipeline] = {}
        self._lock = threading.Lock()
        self.generation = threading.Lock()

    def get(self, name: str | None, pipeline_class: type[DiffusionPipeline]) -> DiffusionPipeline:
        name = (name or self.default).strip() or EMBEDDED
        with self._lock:
            if (name, pipeline_class) not in self._pipelines:
                pipe = load_pipeline(name, pipeline_class)
                pipe.set_progress_bar_config(disable=True)
                self._pipelines[name, pipeline_class] = pipe
            return self._pipelines[name, pipeline_class]
