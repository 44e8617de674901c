"""Hugging Face Spaces entry point: the same Blocks as `python -m app`, on the embedded default model."""

from app.ui import build_app, launch_options

demo = build_app()

if __name__ == "__main__":
    demo.launch(**launch_options(demo))
