"""Layered editing: sequential edits with rough masks, each edit a layer kept in memory.

One job per module:
  settings        `EditSettings` (what an edit is asked to do) and `Layer` (what the memory keeps)
  pipeline        `LayeredEditPipeline`, a diffusers pipeline that generates one layer (MQD + BCG)
  geometry        masks and pixels: the rough mask as given, the feathered overlay, object pixels
  session_format  the saved-session folder (session.json + memory.safetensors)
  session         `LayeredSession`: layers, add / remove / re-edit with replay, undo / redo, save / load
  cli             python -m pipelines.layered_edit --script edits.json --out DIR (format: `load_script`)
"""

from pipelines.layered_edit.cli import load_script, main, script_mask
from pipelines.layered_edit.geometry import (MaskResizedWarning, carry_weight, composite, object_pixels, overlay_alpha,
                                             prepare_mask, protected_pixels)
from pipelines.layered_edit.pipeline import LayeredEditPipeline
from pipelines.layered_edit.session import LayeredSession
from pipelines.layered_edit.session_format import SESSION_FORMAT, SESSION_VERSION, SessionError
from pipelines.layered_edit.settings import REPLAY_MODES, EditSettings, Layer

__all__ = ["REPLAY_MODES", "SESSION_FORMAT", "SESSION_VERSION", "EditSettings", "Layer", "LayeredEditPipeline",
           "LayeredSession", "MaskResizedWarning", "SessionError", "carry_weight", "composite", "load_script", "main",
           "object_pixels", "overlay_alpha", "prepare_mask", "protected_pixels", "script_mask"]
