"""The product's own file formats, model-free: a leaf package that pipelines, qnerf, the app and the
toy world all import (it imports none of them).

  cameras  `Camera` (pinhole, OpenCV axes) and nerfstudio's transforms.json, read and written
  layout   the street layout JSON (version 1): rig, ego poses, 3D boxes per frame, validated
"""

from formats.cameras import OPENCV_TO_OPENGL, Camera, NerfstudioScene, read_transforms, write_transforms
from formats.layout import RigCamera, StreetBox, StreetClip, StreetFrame

__all__ = ["OPENCV_TO_OPENGL", "Camera", "NerfstudioScene", "RigCamera", "StreetBox", "StreetClip", "StreetFrame",
           "read_transforms", "write_transforms"]
