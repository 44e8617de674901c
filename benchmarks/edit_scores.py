"""How an edit looks to its user, scored on the pictures alone: the oracle's reading and the user's rough
mask, never the masks a method used internally (its dilated overlay, its edit region). So a figure
cannot be true by construction of the method that is scored.

Per edit, with `before` the composite before it and `after` the one after:
- success: the asked object (colour and shape) in the rough mask at a plausible size (world.oracle);
- found: which earlier objects the oracle still finds where they were (retention is computed from it,
  paired on the same objects between methods, in `retention_pairs`);
- bg_change: in the rough mask, on pixels that are background both before and after, the mean
  absolute colour change (grey levels, 0–255): the background the edit regenerated around its object,
  which should continue the scene (lower is better);
- border_step / border_step_before: the mean absolute colour difference between 4-neighbour pixel
  pairs that straddle the rough mask's border, both pixels background before and after, in the image
  after the edit and, on the same pairs, before it: a seam the edit drew shows up as a larger step
  than the scene's own texture had there;
- texture_step: the difference in colour spread (standard deviation) of the background in 3-pixel
  bands just inside and just outside the border, after the edit;
- halo: no reference needed: the distance (RGB, grey levels) between the mean background colour
  inside the rough mask and in a ring of background around the edit (8–12 px outside the mask,
  beyond any method's dilation): a visible square of other background scores high;
- seam_psnr_db: PSNR against `before` on the 4-pixel ring just outside the rough mask (kept from the
  earlier benchmark: what happens just outside the mask).
"Background" is what the oracle reads as a background colour, less a 1-pixel ring around every pixel
it reads as an object colour: an object's anti-aliased edge is a blend of both colours, and the
scores are about the background, not about how soft an object's outline is. Values that have no
pixels to score (a mask with no background left) are None.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from world.oracle import Reading, object_inside_mask

N_OBJECT_COLOURS = 7  # the palette lists object colours first (world.vocab.COLOURS), backgrounds after
PSNR_CAP = 100.0
BAND = 3  # px: the bands on either side of the border for texture_step
HALO_RING = (8, 12)  # px outside the rough mask: the surroundings the halo score compares with


def background(reading: Reading) -> np.ndarray:
    """(H, W) bool: pixels the oracle reads as a background colour that touch (8-neighbourhood) no
    pixel it reads as an object colour."""
    objects = (reading.labels >= 0) & (reading.labels < N_OBJECT_COLOURS)
    return (reading.labels >= N_OBJECT_COLOURS) & ~ndimage.binary_dilation(objects, np.ones((3, 3), bool))


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return PSNR_CAP
    mse = ((a[where].astype(np.float64) - b[where].astype(np.float64)) ** 2).mean()
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255**2 / mse))


def _ring(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Pixels between inner and outer px outside mask (Euclidean distance)."""
    distance = ndimage.distance_transform_edt(~mask)
    return (distance > inner) & (distance <= outer)


def bg_change(before: np.ndarray, after: np.ndarray, mask: np.ndarray, bg_before: np.ndarray,
              bg_after: np.ndarray) -> float | None:
    keep = mask & bg_before & bg_after
    if not keep.any():
        return None
    return float(np.abs(after[keep].astype(np.float64) - before[keep].astype(np.float64)).mean())


def border_step(image: np.ndarray, mask: np.ndarray, bg: np.ndarray) -> float | None:
    """Mean |colour difference| over 4-neighbour pairs straddling the mask's border, both background."""
    img = image.astype(np.float64)
    steps = []
    for a, b, ma, mb, ba, bb in ((img[:, :-1], img[:, 1:], mask[:, :-1], mask[:, 1:], bg[:, :-1], bg[:, 1:]),
                                 (img[:-1], img[1:], mask[:-1], mask[1:], bg[:-1], bg[1:])):
        pairs = (ma != mb) & ba & bb
        steps.append(np.abs(a[pairs] - b[pairs]).mean(-1))
    steps = np.concatenate(steps)
    return float(steps.mean()) if len(steps) else None


def texture_step(image: np.ndarray, mask: np.ndarray, bg: np.ndarray) -> float | None:
    inner = mask & ~ndimage.binary_erosion(mask, iterations=BAND) & bg
    outer = _ring(mask, 0, BAND) & bg
    if inner.sum() < 4 or outer.sum() < 4:
        return None
    img = image.astype(np.float64)
    return float(np.abs(img[inner].std(0) - img[outer].std(0)).mean())


def halo(image: np.ndarray, mask: np.ndarray, bg: np.ndarray) -> float | None:
    inside = mask & bg
    around = _ring(mask, *HALO_RING) & bg
    if inside.sum() < 4 or around.sum() < 4:
        return None
    img = image.astype(np.float64)
    return float(np.linalg.norm(img[inside].mean(0) - img[around].mean(0)))


def score_edit(before: np.ndarray, after: np.ndarray, reading_before: Reading, reading_after: Reading,
               layer, earlier: list) -> dict:
    """layer: the scenario layer edited (target colour/shape, rough_mask); earlier: the scenario's
    earlier layers, whose objects `found` reports (by their own rough masks)."""
    mask = layer.rough_mask
    bg_before, bg_after = background(reading_before), background(reading_after)
    both = bg_before & bg_after  # the same pixel pairs before and after
    step_after, step_before = border_step(after, mask, both), border_step(before, mask, both)
    return {"success": bool(object_inside_mask(reading_after, layer.target.colour, layer.target.shape, mask)),
            "found": [bool(object_inside_mask(reading_after, e.target.colour, e.target.shape, e.rough_mask))
                      for e in earlier],
            "bg_change": bg_change(before, after, mask, bg_before, bg_after),
            "border_step": step_after, "border_step_before": step_before,
            "texture_step": texture_step(after, mask, bg_after),
            "halo": halo(after, mask, bg_after),
            "seam_psnr_db": psnr(after, before, _ring(mask, 0, 4))}


def retention_pairs(edits_a: list[dict], edits_b: list[dict], eligible) -> list[tuple[bool, bool]]:
    """(kept by a, kept by b) for every earlier object both methods had made (found right after its own
    edit) and that no later mask covers, at every later edit of one scene: retention on the same objects.
    eligible(j, i): object j may still be seen at edit i (no mask of edits j+1..i covers it)."""
    pairs = []
    for i in range(len(edits_a)):
        for j in range(i):
            if not eligible(j, i) or not (edits_a[j]["success"] and edits_b[j]["success"]):
                continue
            pairs.append((edits_a[i]["found"][j], edits_b[i]["found"][j]))
    return pairs
