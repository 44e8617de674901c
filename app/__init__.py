"""Strata's Gradio app: `python -m app` (options: --host, --port, --model)."""
