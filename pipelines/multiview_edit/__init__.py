"""Multi-view consistent editing (QNeRF): `MultiViewEditPipeline`, posed views in and out as nerfstudio
dataset folders (`dataset`), and the CLI (`python -m pipelines.multiview_edit`)."""

from pipelines.multiview_edit.dataset import PosedViews, parse_edit, read_views, write_views
from pipelines.multiview_edit.pipeline import MultiViewEditPipeline

__all__ = ["MultiViewEditPipeline", "PosedViews", "parse_edit", "read_views", "write_views"]
