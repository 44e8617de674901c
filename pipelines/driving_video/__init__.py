"""Surround-view driving video: `DrivingVideoPipeline` (pipeline), the files a video is written as
(video), and the CLI (`python -m pipelines.driving_video --layout clip.json --out DIR`)."""

from pipelines.driving_video.pipeline import MAX_FRAMES, DrivingVideoPipeline
from pipelines.driving_video.video import write_video

__all__ = ["MAX_FRAMES", "DrivingVideoPipeline", "write_video"]
