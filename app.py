"""Hugging Face Spaces entry point: the same Blocks as `python -m app`, on the embedded default model."""

from app.ui import CSS, MAX_UPLOAD, build_app

demo = build_app()

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_UPLOAD, css=CSS)
