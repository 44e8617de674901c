"""Install processors on a model for the length of a block, and restore the originals on exit."""

from __future__ import annotations

import contextlib
from typing import Callable


@contextlib.contextmanager
def installed_processors(model, make_processor: Callable[[str, object], object | None]):
    """Inside the block, layer `name` uses make_processor(name, original) (None keeps the original).

    Works on any diffusers model with `attn_processors` / `set_attn_processor` (UNets, transformers).
    The model's processors are restored on exit, also when the block raises.
    """
    originals = dict(model.attn_processors)
    replaced = {}
    for name, original in originals.items():
        new = make_processor(name, original)
        replaced[name] = original if new is None else new
    model.set_attn_processor(dict(replaced))  # set_attn_processor empties the dict it is given
    try:
        yield model
    finally:
        model.set_attn_processor(dict(originals))


def is_cross_attention(name: str) -> bool:
    """UNet cross-attention layers are attn2; transformer (PixArt, DiT) ones are attn2 as well."""
    return name.endswith("attn2.processor")
