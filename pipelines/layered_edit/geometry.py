"""Mask and pixel geometry of an edit: the rough mask as given, the feathered overlay, the pixels a
layer changed, the earlier objects a mask only clips, and the weights of a replayed layer."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage


class MaskResizedWarning(UserWarning):
    """A rough mask of another size than the image was resized to fit."""



def prepare_mask(mask, height: int, width: int, field_name: str = "rough_mask") -> np.ndarray:
    """(H, W) bool from an array or PIL image: any non-zero pixel counts (negative ones too), and of an
    image with alpha (RGBA, LA, or an (H, W, 4) / (H, W, 2) array) the alpha channel alone. (H, W, 1)
    and (1, H, W) masks are squeezed. A mask of another size is resized (nearest) with a
    MaskResizedWarning; an empty mask is an error."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("RGBA"))[..., 3] if mask.mode in ("RGBA", "LA", "PA") else np.asarray(mask.convert("L"))
    try:
        mask = np.asarray(mask)
    except (ValueError, TypeError):
        raise ValueError(f"{field_name}: expected an (H, W) array or image") from None
    if mask.dtype == object or not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
        raise ValueError(f"{field_name}: expected numbers or booleans, got {mask.dtype}")
    if mask.ndim == 3 and mask.shape[0] == 1 and mask.shape[-1] not in (1, 2, 3, 4):
        mask = mask[0]  # channel-first (1, H, W)
    if mask.ndim == 3:
        channels = mask.shape[-1]
        if channels in (2, 4):  # grey or colour with alpha: the alpha says what was painted
            mask = mask[..., -1]
        elif channels in (1, 3):
            mask = np.abs(mask).max(-1)
    if mask.ndim != 2:
        raise ValueError(f"{field_name}: expected an (H, W) mask, got shape {mask.shape}")
    if not np.isfinite(mask).all() if np.issubdtype(mask.dtype, np.floating) else False:
        raise ValueError(f"{field_name}: NaN or infinite values; expected 0 (keep) and non-zero (edit)")
    if 0 in mask.shape:
        raise ValueError(f"{field_name}: expected an (H, W) mask, got shape {mask.shape}")
    mask = mask != 0
    if mask.shape != (height, width):
        warnings.warn(f"{field_name}: {mask.shape[1]}×{mask.shape[0]} mask resized to the image's {width}×{height}",
                      MaskResizedWarning, stacklevel=3)
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0
    if not mask.any():
        raise ValueError(f"{field_name}: the mask is empty; draw where the object should go")
    return mask


def overlay_alpha(rough_mask: np.ndarray, dilate_px: int) -> np.ndarray:
    """Feathered alpha in [0, 1]: 1 on the mask, ramping to 0 within 2·dilate_px; exactly 0 beyond."""
    m = torch.from_numpy(rough_mask.astype(np.float32))[None, None]
    r = max(1, dilate_px)
    grown = F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)
    soft = F.avg_pool2d(grown, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
    return torch.maximum(soft, m)[0, 0].numpy()


def object_pixels(before: np.ndarray, after: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) bool: pixels a layer visibly changed (RGB distance above threshold, which
    `EditSettings.overlay_threshold` sets), holes filled and specks under 4 pixels dropped. This is
    the layer's object as far as later layers are concerned."""
    changed = np.linalg.norm(after.astype(np.float32) - before.astype(np.float32), axis=-1) > threshold
    changed = ndimage.binary_fill_holes(changed)
    components, count = ndimage.label(changed)
    if count:
        sizes = ndimage.sum(changed, components, index=np.arange(1, count + 1))
        changed = np.isin(components, 1 + np.flatnonzero(sizes >= 4))
    return changed


def inner_feather(mask: np.ndarray, feather_px: int) -> np.ndarray:
    """(H, W) alpha in [0, 1]: 1 inside mask, ramping down over its outermost feather_px pixels, exactly 0
    outside it (the ramp lies inside the mask, unlike `overlay_alpha`'s); feather_px 0: the mask itself."""
    m = mask.astype(np.float32)
    if feather_px <= 0:
        return m
    soft = F.avg_pool2d(torch.from_numpy(m)[None, None], 2 * feather_px + 1, stride=1, padding=feather_px,
                        count_include_pad=False)[0, 0].numpy()
    return np.minimum(m, soft)


def background_drift(before: np.ndarray, generated: np.ndarray, region: np.ndarray, ring_px: int, cap: float) -> np.ndarray:
    """(3,) float: how the generation shifted the scene's colours just outside region (where its pixels
    are never shown): the median of (generated − before) over the pixels more than 1 and at most ring_px
    px (Euclidean) outside region, its length capped at cap; zero if fewer than 8 such pixels. The
    harmonize steps run without BCG, so the generated background drifts a little from the scene: a
    uniform drift of 30 grey levels per channel (52 in RGB distance) plus a redrawn background 25 more
    in the same direction (43) would otherwise pass a threshold of 80. A drift longer than cap is not a
    drift (without BCG the generation outside is another picture): only cap of it is discounted."""
    distance = ndimage.distance_transform_edt(~region)
    ring = (distance > 1) & (distance <= ring_px)
    if ring.sum() < 8:
        return np.zeros(3, np.float32)
    drift = np.median(generated[ring].astype(np.float32) - before[ring].astype(np.float32), axis=0)
    length = float(np.linalg.norm(drift))
    return drift * (cap / length) if length > cap else drift


def object_alpha(before: np.ndarray, generated: np.ndarray, region: np.ndarray, feather_px: int = 1, *,
                 threshold: float, scale_px: int = 2, keep_out: np.ndarray | None = None) -> np.ndarray:
    """(H, W) alpha in [0, 1] of a new layer's object inside region (where the generation may draw),
    scale_px the settings' dilate_px (2 on the embedded 64-px model, 4 at SD's 512 px):
    - the pixels the generation changed by more than threshold once its drift is discounted
      (`object_pixels` against before + `background_drift` over a ring 3·scale_px wide, capped at half
      the threshold: holes filled, specks dropped), less keep_out (protected earlier objects);
    - less slivers narrower than scale_px + 1 px (an opening, unless nothing else is left) and every
      part that touches region's edge but the largest part of all: what a generation redraws at the
      edge of where it may draw, apart from its object, is the background (a patch of another colour,
      a streak along the mask);
    - their outermost feather_px pixels feathered inward (`inner_feather`), so what the generation redrew
      of the background gets 0, also next to the object, and the old background shows there. (A ramp
      outside the object laid a fraction of the redrawn background around it: benchmarks/RESULTS.md,
      "Seventeenth session"; the drift, slivers and edge patches: "Eighteenth session".)"""
    inside = region if keep_out is None else region & ~keep_out
    drift = background_drift(before, generated, region, 3 * scale_px, threshold / 2)
    obj = object_pixels(before.astype(np.float32) + drift, generated, threshold) & inside
    opened = ndimage.binary_opening(obj, np.ones((scale_px + 1, scale_px + 1), bool))
    if opened.any():  # a drawing that is all slivers keeps them: it is all the layer has
        obj = ndimage.binary_fill_holes(opened) & inside
    components, count = ndimage.label(obj)
    if count > 1:
        edge = region & ~ndimage.binary_erosion(region, border_value=1)  # the frame is no edge
        sizes = ndimage.sum(obj, components, index=np.arange(1, count + 1))
        stray = set(np.unique(components[edge]).tolist()) - {0, 1 + int(np.argmax(sizes))}
        obj &= ~np.isin(components, list(stray))
    return inner_feather(obj, feather_px)


def protected_pixels(below: list, rough_mask: np.ndarray, protect: float) -> np.ndarray:
    """(H, W) bool: the visible pixels of earlier objects that rough_mask covers by at most `protect`
    of their area, grown by one pixel. A pixel's owner is the last layer whose object covers it."""
    keep = np.zeros(rough_mask.shape, dtype=bool)
    if protect <= 0:
        return keep
    owner = np.zeros(rough_mask.shape, dtype=np.int64)
    for j, layer in enumerate(below[1:], start=1):
        owner[layer.object_mask] = j
    for j in range(1, len(below)):
        visible = owner == j
        area = visible.sum()
        if area and (visible & rough_mask).sum() <= protect * area:
            keep |= visible
    return ndimage.binary_dilation(keep) if keep.any() else keep


def carry_weight(changed: np.ndarray, px: int) -> np.ndarray:
    """(H, W) in [0, 1]: how much of a replayed layer's old pixels to keep, by the distance to the
    nearest pixel that changed below it: 0 within px (at least 1), ramping to exactly 1 at 2·px and
    beyond, where the layer was rendered on top of exactly the scene it now lies on."""
    r = max(1, px)
    return np.clip((ndimage.distance_transform_edt(~changed) - r) / r, 0, 1)


def composite(previous: np.ndarray, new: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    mixed = alpha[..., None] * new.astype(np.float32) + (1 - alpha[..., None]) * previous.astype(np.float32)
    out = np.round(mixed).astype(np.uint8)
    out[alpha == 0] = previous[alpha == 0]  # bit-exact where nothing was asked
    return out

