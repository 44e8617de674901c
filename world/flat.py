"""The flat world: a textured background and 1–5 coloured shapes with a depth order.

Everything is deterministic by seed and comes with exact ground truth (per-object visible masks,
boxes of the whole shape, the caption). Coordinates: x to the right, y down, both in [0, 1] of the
image side; an object's `size` is the side of its bounding box as a fraction of the image side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from world.vocab import BACKGROUNDS, COLOURS, SHAPES, check_word, object_phrase


@dataclass(frozen=True)
class FlatObject:
    colour: str
    shape: str
    center: tuple[float, float]  # (x, y) in [0, 1]
    size: float  # bounding-box side, fraction of the image side
    depth: int = 0  # larger is nearer (drawn later, in front)

    def __post_init__(self):
        check_word("colour", self.colour, COLOURS)
        check_word("shape", self.shape, SHAPES)
        if not (isinstance(self.size, (int, float)) and self.size > 0):
            raise ValueError(f"size: must be a positive fraction of the image side, got {self.size!r}")
        if self.size > 1.5:
            raise ValueError(f"size: {self.size} is larger than the image; expected a fraction in (0, 1.5]")
        if len(self.center) != 2:
            raise ValueError(f"center: expected (x, y), got {self.center!r}")

    @property
    def prompt(self) -> str:
        return object_phrase(self.colour, self.shape)


@dataclass(frozen=True)
class FlatSpec:
    background: str
    objects: tuple[FlatObject, ...] = ()

    def __post_init__(self):
        check_word("background", self.background, BACKGROUNDS)

    @property
    def caption(self) -> str:
        return caption_for(self.background, [o.prompt for o in self.objects])


@dataclass
class FlatScene:
    """A rendered flat scene. masks: (n, H, W) bool visible pixels; boxes: (n, 4) x0, y0, x1, y1
    pixel bounds of the whole (unoccluded) shape, end exclusive; full_masks: (n, H, W) bool."""

    spec: FlatSpec
    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray
    full_masks: np.ndarray
    boxes: np.ndarray
    caption: str = field(init=False)

    def __post_init__(self):
        self.caption = self.spec.caption

    def visible_fraction(self) -> np.ndarray:
        full = self.full_masks.reshape(len(self.full_masks), -1).sum(1)
        vis = self.masks.reshape(len(self.masks), -1).sum(1)
        return vis / np.maximum(full, 1)


def held_out_triples() -> frozenset[tuple[str, str, str]]:
    """Every ninth (colour, shape, background) combination, never shown in training: the
    benchmarks' held-out captions."""
    combos = [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]
    return frozenset(combo for i, combo in enumerate(combos) if i % 9 == 4)


def is_held_out(spec: "FlatSpec") -> bool:
    """Does any object of the scene form a held-out (colour, shape, background) combination?"""
    held = held_out_triples()
    return any((o.colour, o.shape, spec.background) in held for o in spec.objects)


def caption_for(background: str, phrases: list[str]) -> str:
    if not phrases:
        return f"an empty scene of {background}"
    if len(phrases) == 1:
        listed = phrases[0]
    else:
        listed = " , ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{listed} on {background}"


def _pixel_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
    return np.meshgrid(coords, coords, indexing="xy")  # x, y


def shape_mask(shape: str, center, size: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pixels (sampled at their centres) covered by a shape."""
    cx, cy = center
    half = size / 2
    if shape == "square":
        return (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
    if shape == "triangle":  # apex up, base at the bottom of the box
        top = cy - half
        return (ys >= top) & (ys <= cy + half) & (np.abs(xs - cx) <= (ys - top) / 2)
    raise ValueError(f"shape: unknown {shape!r}; expected one of {list(SHAPES)}")


def background_texture(background: str, resolution: int) -> np.ndarray:
    """A smooth, low-amplitude texture per background, (H, W, 3) float in 0..255."""
    check_word("background", background, BACKGROUNDS)
    xs, ys = _pixel_grid(resolution)
    base = np.array(BACKGROUNDS[background], dtype=np.float64)
    tau = 2 * np.pi
    pattern = {
        "grass": np.sin(tau * 3 * xs) * np.sin(tau * 2 * ys),
        "sand": np.sin(tau * (2 * xs + 3 * ys)),
        "water": np.sin(tau * 4 * ys + np.sin(tau * xs)),
        "road": np.sin(tau * xs) * 0.5,
        "snow": np.cos(tau * (xs - ys)) * 0.6,
    }[background]
    image = base + 7.0 * pattern[..., None]
    return np.clip(image, 0, 255)


def render_flat(spec: FlatSpec, resolution: int = 64) -> FlatScene:
    """Render a flat scene; objects are drawn back to front by depth (ties keep list order)."""
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution: expected an integer ≥ 8, got {resolution!r}")
    xs, ys = _pixel_grid(resolution)
    image = background_texture(spec.background, resolution)
    n = len(spec.objects)
    full = np.zeros((n, resolution, resolution), dtype=bool)
    owner = np.full((resolution, resolution), -1, dtype=np.int64)
    for i, obj in enumerate(spec.objects):
        full[i] = shape_mask(obj.shape, obj.center, obj.size, xs, ys)
    for i in sorted(range(n), key=lambda k: spec.objects[k].depth):
        owner[full[i]] = i
    masks = owner[None] == np.arange(n)[:, None, None]
    for i, obj in enumerate(spec.objects):
        image[masks[i]] = COLOURS[obj.colour]
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        rows = np.flatnonzero(full[i].any(1))
        cols = np.flatnonzero(full[i].any(0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return FlatScene(spec, np.round(image).astype(np.uint8), masks, full, boxes)


def box_of(center, size) -> np.ndarray:
    """An object's bounding box (x0, y0, x1, y1) in fractions of the image side."""
    half = size / 2
    return np.array([center[0] - half, center[1] - half, center[0] + half, center[1] + half])


def _overlap_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of box a's area covered by box b."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]))


def sample_flat_spec(seed: int, n_objects: int | tuple[int, int] = (1, 5), *,
                     max_overlap: float = 0.0, size_range: tuple[float, float] | None = None,
                     background: str | None = None) -> FlatSpec:
    """A random flat scene. Colours are distinct within a scene; boxes overlap by at most
    max_overlap of either box's area (0: no two boxes touch)."""
    rng = np.random.default_rng(seed)
    lo, hi = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    if lo < 0 or hi < lo or hi > len(COLOURS):
        raise ValueError(f"n_objects: expected 0 ≤ lo ≤ hi ≤ {len(COLOURS)}, got {n_objects!r}")
    n = int(rng.integers(lo, hi + 1))
    if size_range is None:
        size_range = (0.22, 0.42) if n <= 2 else (0.18, 0.3)
    if background is None:
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    colours = rng.permutation(list(COLOURS))[:n]
    objects: list[FlatObject] = []
    boxes: list[np.ndarray] = []
    for i in range(n):
        for attempt in range(400):
            shrink = 0.85 ** (attempt // 100)  # crowded: try smaller objects
            size = float(rng.uniform(*size_range)) * shrink
            center = tuple(float(c) for c in rng.uniform(size / 2 + 0.02, 1 - size / 2 - 0.02, size=2))
            box = box_of(center, size)
            if all(_overlap_fraction(box, b) <= max_overlap and _overlap_fraction(b, box) <= max_overlap
                   and (max_overlap > 0 or _overlap_fraction(box, b) == 0) for b in boxes):
                break
        else:
            raise ValueError(f"n_objects: could not place {n} objects of size {size_range} without overlap")
        shape = SHAPES[rng.integers(len(SHAPES))]
        objects.append(FlatObject(str(colours[i]), shape, center, size, depth=i))
        boxes.append(box)
    return FlatSpec(background, tuple(objects))


@dataclass(frozen=True)
class EditLayer:
    """One step of an edit scenario: a prompt, the object it should produce, and a rough mask."""

    prompt: str
    target: FlatObject
    rough_mask: np.ndarray  # (H, W) bool, covers the target loosely


@dataclass(frozen=True)
class EditScenario:
    background: str
    layers: tuple[EditLayer, ...]
    resolution: int

    @property
    def background_prompt(self) -> str:
        return caption_for(self.background, [])

    def final_spec(self) -> FlatSpec:
        return FlatSpec(self.background, tuple(layer.target for layer in self.layers))


def rough_mask_for(obj: FlatObject, resolution: int, rng: np.random.Generator,
                   kind: str = "box") -> np.ndarray:
    """A loose mask around an object: an enlarged box, or a wobbly blob, never tight."""
    xs, ys = _pixel_grid(resolution)
    cx, cy = obj.center
    margin = obj.size * rng.uniform(0.15, 0.35)
    half = obj.size / 2 + margin
    if kind == "box":
        jitter = rng.uniform(-0.5, 0.5, size=4) * margin * 0.5
        return ((xs >= cx - half + jitter[0]) & (xs <= cx + half + jitter[1])
                & (ys >= cy - half + jitter[2]) & (ys <= cy + half + jitter[3]))
    if kind == "blob":
        angle = np.arctan2(ys - cy, xs - cx)
        phases = rng.uniform(0, 2 * np.pi, size=3)
        wobble = 1 + 0.5 * sum(np.sin((k + 2) * angle + phases[k]) for k in range(3)) / 3
        # The circle through the box corners contains any shape; the wobble only varies the margin.
        radius = obj.size / 2 * np.sqrt(2) + margin * wobble
        return np.hypot(xs - cx, ys - cy) <= radius
    raise ValueError(f"kind: expected 'box' or 'blob', got {kind!r}")


def sample_edit_scenario(seed: int, n_layers: int | tuple[int, int] = (2, 5), resolution: int = 64,
                         mask_kind: str | None = None) -> EditScenario:
    """A background plus an ordered list of 2–5 object layers, each with a prompt and rough mask.
    Targets do not overlap, so every earlier object should survive every later edit."""
    rng = np.random.default_rng(seed)
    lo, hi = (n_layers, n_layers) if isinstance(n_layers, int) else n_layers
    if lo < 1 or hi < lo or hi > 5:
        raise ValueError(f"n_layers: expected 1 ≤ lo ≤ hi ≤ 5, got {n_layers!r}")
    n = int(rng.integers(lo, hi + 1))
    spec = sample_flat_spec(int(rng.integers(2**31)), n, size_range=(0.22, 0.32) if n > 2 else (0.26, 0.38))
    layers = []
    for obj in spec.objects:
        kind = mask_kind or ("box" if rng.random() < 0.5 else "blob")
        layers.append(EditLayer(obj.prompt, obj, rough_mask_for(obj, resolution, rng, kind)))
    return EditScenario(spec.background, tuple(layers), resolution)
