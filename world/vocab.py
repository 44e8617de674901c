"""The one palette and vocabulary shared by the flat, orbit and street worlds.

Object colours and background colours are far apart in RGB so that the oracle can read an image
back by nearest-palette segmentation. Every word a caption or layer prompt can contain is listed
here; the tokenizer is built from these lists.
"""

from __future__ import annotations

import math

# Object colours (RGB, 0..255). Kept ≥ 80 apart from each other and from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 36, 36),
    "blue": (36, 60, 224),
    "yellow": (242, 214, 30),
    "purple": (136, 48, 176),
    "orange": (246, 134, 20),
    "black": (24, 24, 24),
    "pink": (244, 120, 196),
}

# Flat-world backgrounds: base colour; a smooth low-amplitude texture is added when rendering.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grass": (76, 140, 60),
    "sand": (214, 192, 140),
    "water": (46, 98, 160),
    "road": (92, 92, 98),
    "snow": (232, 236, 242),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Fraction of its bounding box a shape fills; the oracle classifies shapes by this.
SHAPE_FILL: dict[str, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}

ORBIT_PRIMITIVES: tuple[str, ...] = ("sphere", "box", "cylinder")

# Street classes and the colour their projected boxes get in layout maps.
STREET_CLASSES: dict[str, str] = {"car": "blue", "truck": "purple", "pedestrian": "orange"}

SKY = (150, 190, 235)
LANE_PAINT = (236, 236, 228)

NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}

# Words that glue captions and prompts together.
FUNCTION_WORDS = ("a", "an", "and", "on", "of", "the", "in", "with", "two", "three", "four", "five",
                  "scene", "empty", "ground", "street", "view", "front", "back", "left", "right",
                  "camera", "sky", "lane", "sidewalk", ",")


def plural(word: str) -> str:
    return word + "es" if word.endswith(("s", "sh", "ch", "x")) else word + "s"


def all_words() -> list[str]:
    """Every word the world's captions and prompts use, in a fixed order."""
    nouns = list(SHAPES) + list(ORBIT_PRIMITIVES) + list(STREET_CLASSES)
    words = list(FUNCTION_WORDS) + list(COLOURS) + list(BACKGROUNDS) + nouns + [plural(n) for n in nouns]
    seen: dict[str, None] = {}
    for word in words:
        seen.setdefault(word, None)
    return list(seen)


def object_phrase(colour: str, shape: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


def check_word(field: str, value: str, allowed) -> str:
    """Return value if it is one of allowed, else raise a ValueError naming the field."""
    if value not in allowed:
        raise ValueError(f"{field}: unknown word {value!r}; expected one of {sorted(allowed)}")
    return value
