"""The query field: a field over 3D points whose rendered embedding, projected per recorded layer, gives
that layer's self-attention queries at every ray.

Built from nerfstudio's own components: nerfacto's scene contraction (`SceneContraction`, L∞, so an
unbounded orbit scene with its ground and sky fits a cube of side 4), a hash grid
(`HashEncoding(implementation="torch")`, no tiny-cuda-nn needed), an `MLP`, nerfstudio's `trunc_exp`
density activation, a `NearFarCollider`, a `UniformLinDispPiecewiseSampler` followed by a `PDFSampler`
(hierarchical sampling with one field), and the `SemanticRenderer`, `DepthRenderer` and
`AccumulationRenderer`. No view direction: queries of one surface point agree across views.

One density is shared by every recorded layer, with one embedding of `embed_dim` channels and a linear
head per layer. Volume rendering is linear in the per-sample values, so rendering the embedding once and
projecting it afterwards equals rendering every head separately (tested); a ray costs one field
evaluation whatever the number of layers.

The field owns its scene frame: `center` and `scale` map world points into a frame where the cameras
sit about one unit from the centre (set from the cameras by `fit_queries`), and each layer's query
statistics (`mean`, `std`), so heads learn unit-variance targets and `render` returns queries in the
model's own units.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.field_components.mlp import MLP
from nerfstudio.field_components.spatial_distortions import SceneContraction
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformLinDispPiecewiseSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, SemanticRenderer
from nerfstudio.model_components.scene_colliders import NearFarCollider
from torch import nn

from formats.cameras import Camera


def head_key(layer: str) -> str:
    """ModuleDict keys may not hold dots; a layer's install name does."""
    return layer.replace(".", "__")


@dataclass(frozen=True)
class FieldConfig:
    embed_dim: int = 32
    num_levels: int = 4  # the torch hash grid costs ~1 µs per point and level on a CPU core
    min_res: int = 16
    # None: twice the finest token grid's side (`for_grids`; 32 for the embedded model's 16 × 16 tokens,
    # 128 for SD's 64 × 64). A grid much finer than the tokens learns each view's own detail: on recorded
    # queries, 8 levels up to 128 rendered held-out views worse than 4 up to 32 (benchmarks/RESULTS.md,
    # "Nineteenth session")
    max_res: int | None = None
    log2_hashmap_size: int = 15
    features_per_level: int = 2
    hidden: int = 64
    num_layers: int = 2
    samples: int = 12  # uniform (linear, then in disparity) samples per ray
    pdf_samples: int = 8  # importance samples per ray
    near: float = 0.05  # in the field's frame (cameras about 1 from the centre)
    far: float = 100.0

    def for_grids(self, grids: Iterable[tuple[int, int]]) -> FieldConfig:
        """This config with max_res set from the token grids (h, w) the field is fitted on, if it is None."""
        if self.max_res is not None:
            return self
        finest = max((max(grid) for grid in grids), default=0)
        if finest <= 0:
            raise ValueError("grids: expected at least one token grid to size the field from")
        return replace(self, max_res=max(2 * int(finest), self.min_res))


class QueryField(nn.Module):
    def __init__(self, layer_dims: Mapping[str, int], config: FieldConfig):
        super().__init__()
        if not layer_dims:
            raise ValueError("layer_dims: expected at least one recorded layer")
        if config.max_res is None:
            raise ValueError("config: max_res is None; size it from the token grids with FieldConfig.for_grids")
        self.config = config
        self.layers = list(layer_dims)
        self.contraction = SceneContraction(order=float("inf"))
        self.encoding = HashEncoding(num_levels=config.num_levels, min_res=config.min_res, max_res=config.max_res,
                                     log2_hashmap_size=config.log2_hashmap_size,
                                     features_per_level=config.features_per_level, implementation="torch")
        self.mlp = MLP(in_dim=self.encoding.get_out_dim(), num_layers=config.num_layers, layer_width=config.hidden,
                       out_dim=1 + config.embed_dim, activation=nn.ReLU(), implementation="torch")
        # no bias: a head is linear, so it commutes with volume rendering (the mean is added after)
        self.heads = nn.ModuleDict({head_key(name): nn.Linear(config.embed_dim, int(dim), bias=False)
                                    for name, dim in layer_dims.items()})
        for name, dim in layer_dims.items():
            self.register_buffer(f"mean_{head_key(name)}", torch.zeros(int(dim)))
            self.register_buffer(f"std_{head_key(name)}", torch.ones(int(dim)))
        self.register_buffer("center", torch.zeros(3))
        self.register_buffer("scale", torch.ones(()))
        self.collider = NearFarCollider(config.near, config.far)
        self.sampler = UniformLinDispPiecewiseSampler(num_samples=config.samples, single_jitter=True)
        self.pdf_sampler = PDFSampler(num_samples=config.pdf_samples, single_jitter=True, include_original=True)
        self.renderer_embedding = SemanticRenderer()
        self.renderer_depth = DepthRenderer(method="expected")
        self.renderer_accumulation = AccumulationRenderer()

    def layer_dims(self) -> dict[str, int]:
        return {name: self.heads[head_key(name)].out_features for name in self.layers}

    # ---- the scene frame

    def set_frame(self, cameras: list[Camera]) -> None:
        """Centre: the point nearest every camera's optical axis (the orbit's look-at point); scale: one
        over the cameras' mean distance to it."""
        origins = np.stack([c.c2w[:3, 3] for c in cameras])
        axes = np.stack([c.c2w[:3, 2] / np.linalg.norm(c.c2w[:3, 2]) for c in cameras])
        projector = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
        a, b = projector.sum(0), np.einsum("nij,nj->i", projector, origins)
        center = np.linalg.lstsq(a, b, rcond=None)[0] if np.linalg.matrix_rank(a) == 3 else origins.mean(0)
        distance = np.linalg.norm(origins - center, axis=1).mean()
        self.center.copy_(torch.as_tensor(center, dtype=torch.float32))
        self.scale.copy_(torch.tensor(1.0 / max(float(distance), 1e-6)))

    def nerfstudio_cameras(self, cameras: list[Camera], grid: tuple[int, int] | None = None) -> Cameras:
        """nerfstudio `Cameras` (OpenGL axes) in the field's frame; grid (h, w) rescales them so that their
        pixel centres are the token centres of an h × w token map."""
        c2w = np.stack([c.c2w_opengl()[:3, :4] for c in cameras]).astype(np.float64)
        c2w[:, :, 3] = (c2w[:, :, 3] - self.center.cpu().numpy()) * float(self.scale)
        sizes = {(c.height, c.width) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"cameras: expected views of one size, got {sorted(sizes)}")
        ns = Cameras(camera_to_worlds=torch.as_tensor(c2w, dtype=torch.float32),
                     fx=torch.tensor([[c.fx] for c in cameras], dtype=torch.float32),
                     fy=torch.tensor([[c.fy] for c in cameras], dtype=torch.float32),
                     cx=torch.tensor([[c.cx] for c in cameras], dtype=torch.float32),
                     cy=torch.tensor([[c.cy] for c in cameras], dtype=torch.float32),
                     width=torch.tensor([[c.width] for c in cameras]), height=torch.tensor([[c.height] for c in cameras]),
                     camera_type=CameraType.PERSPECTIVE)
        if grid is not None:
            (height, width), (h, w) = sizes.pop(), grid
            if abs(h / height - w / width) > 1e-6:
                raise ValueError(f"grid: {h}×{w} tokens is not a uniform scaling of {height}×{width} views")
            ns.rescale_output_resolution(h / height, scale_rounding_mode="round")
        return ns

    # ---- the field and rendering

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (..., 3) in the field's frame → density (..., 1) and embedding (..., embed_dim)."""
        unit = (self.contraction(positions) + 2.0) / 4.0
        out = self.mlp(self.encoding(unit.reshape(-1, 3))).view(*positions.shape[:-1], -1)
        return trunc_exp(out[..., :1] - 1.0), out[..., 1:]

    def render_rays(self, rays: RayBundle) -> dict[str, torch.Tensor]:
        """Embedding (R, E), expected depth (R, 1) in the field's frame, accumulation (R, 1), and the
        weights and samples (for the depth loss)."""
        rays = self.collider(rays)
        coarse = self.sampler(rays)
        with torch.no_grad():
            density, _ = self(coarse.frustums.get_positions())
            coarse_weights = coarse.get_weights(density)
        samples = self.pdf_sampler(rays, coarse, coarse_weights)
        density, embedding = self(samples.frustums.get_positions())
        weights = samples.get_weights(density)
        return {"embedding": self.renderer_embedding(embedding, weights),
                "depth": self.renderer_depth(weights, samples),
                "accumulation": self.renderer_accumulation(weights),
                "weights": weights, "samples": samples}

    def project(self, layer: str, embedding: torch.Tensor) -> torch.Tensor:
        """A rendered embedding → that layer's queries, in the model's units."""
        key = head_key(layer)
        return self.heads[key](embedding) * getattr(self, f"std_{key}") + getattr(self, f"mean_{key}")

    def normalise(self, layer: str, queries: torch.Tensor) -> torch.Tensor:
        key = head_key(layer)
        return (queries - getattr(self, f"mean_{key}")) / getattr(self, f"std_{key}")

    def set_statistics(self, layer: str, queries: torch.Tensor) -> None:
        key = head_key(layer)
        flat = queries.reshape(-1, queries.shape[-1]).float()
        getattr(self, f"mean_{key}").copy_(flat.mean(0))
        getattr(self, f"std_{key}").copy_(flat.std(0).clamp_min(1e-4) if flat.shape[0] > 1 else torch.ones(flat.shape[-1]))
