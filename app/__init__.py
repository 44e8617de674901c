"""Strata's Gradio app: `python -m app` (options: --host, --port, --model)."""

import pipelines  # noqa: F401  (before diffusers: its import-time settings)
