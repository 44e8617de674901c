"""QNeRF: a field over 3D points fitted to the self-attention queries recorded in many views, whose
renders are injected back during generation so that the views agree in 3D ("Consolidating Attention
Features for Multi-view Image Editing", Patashnik et al., SIGGRAPH Asia 2024).

Built from nerfstudio's field and model components (never `nerfstudio.fields.base_field`, which pulls
tensorboard): `field.QueryField`, `fit.fit_queries`, `render.render_queries`.
"""

from qnerf.field import FieldConfig, QueryField
from qnerf.fit import FitResult, FitSettings, fit_queries
from qnerf.render import RenderedQueries, render_queries

__all__ = ["FieldConfig", "FitResult", "FitSettings", "QueryField", "RenderedQueries", "fit_queries",
           "render_queries"]
