"""`LayeredSession`: the layers of one scene, each edit a layer kept in memory.

Start from a prompt or an image, add, remove or edit any layer (later layers that see the change
are replayed: by default their own object's latents from memory on the new scene with the last
harmonize steps re-run, used only near what changed below, or in full from their seeds; the others
are carried over exactly), undo/redo, save/load. The region a layer may repaint is its rough mask
minus the visible pixels of earlier objects that the mask only clips (`EditSettings.protect`); a
feathered pixel overlay keeps pixels outside the dilated rough mask exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.conditioning import blend_latents
from pipelines.layered_edit.geometry import (carry_weight, composite, object_alpha, object_pixels, overlay_alpha,
                                             prepare_mask, protected_pixels)
from pipelines.layered_edit.pipeline import LayeredEditPipeline
from pipelines.layered_edit.session_format import load_session_history, save_session
from pipelines.layered_edit.settings import EditSettings, Layer, check_seed


@dataclass
class LayeredSession:
    """The layers of one scene (layer 0 is the background), with undo/redo and save/load.

    settings: unset height and width are the pipeline's default size (`EditSettings.sized_for`).
    Methods that change the session validate first, so a bad call changes nothing; `fork` gives an
    independent copy to try a change on."""

    pipe: LayeredEditPipeline
    settings: EditSettings = field(default_factory=EditSettings)
    layers: list[Layer] = field(default_factory=list)
    _undo: list[list[Layer]] = field(default_factory=list, repr=False)
    _redo: list[list[Layer]] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self.settings = self.settings.sized_for(self.pipe)
        self.pipe.check_size(self.settings.height, self.settings.width)

    # -- reading

    @property
    def composite(self) -> np.ndarray:
        if not self.layers:
            raise ValueError("session: no scene yet; start one from a prompt or an image")
        return self.layers[-1].image

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def layer_images(self) -> list[np.ndarray]:
        return [layer.image for layer in self.layers]

    def layer_cutout(self, index: int) -> np.ndarray:
        """Layer index on its own: the background's RGB picture (index 0), or an object layer's RGBA
        cut-out — its pixels where it visibly changed the scene (its object), transparent elsewhere."""
        self._check_index(index)
        layer = self.layers[index]
        if index == 0:
            return layer.image
        return np.dstack([layer.image, (layer.object_mask * 255).astype(np.uint8)])

    def fork(self, **settings) -> "LayeredSession":
        """A copy with its own layer list and history (layers themselves are immutable and shared), and
        the given settings changed (e.g. replay="seed"): a change tried on it leaves this one as it was."""
        return LayeredSession(self.pipe, replace(self.settings, **settings), list(self.layers), list(self._undo),
                              list(self._redo))

    # -- changing (each validates first, so a bad call changes nothing)

    def _commit(self, layers: list[Layer]) -> None:
        if self.layers:  # undo never goes back past the first scene to an empty session
            self._undo.append(self.layers)
        self._redo.clear()
        self.layers = layers

    def start_from_prompt(self, prompt: str, seed: int = 0, callback=None) -> np.ndarray:
        prompt, seed = _check_prompt(prompt), check_seed(seed)
        out = self.pipe(prompt, generator=_generator(seed), callback_on_step_end=_progress(callback, self.settings),
                        **self._call_settings())
        full = np.ones((self.settings.height, self.settings.width), dtype=bool)
        self._commit([Layer(prompt, seed, full, "prompt", out.trajectory, out.images[0], full, np.zeros_like(full))])
        return self.composite

    def start_from_image(self, image, prompt: str = "", method: str = "inversion", seed: int = 0,
                         callback=None) -> np.ndarray:
        if method not in ("inversion", "noise"):
            raise ValueError(f"method: expected 'inversion' or 'noise', got {method!r}")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt: expected text (or '' for none), got {type(prompt).__name__}")
        seed = check_seed(seed)
        image = _check_image(image, self.settings)
        if method == "inversion":
            trajectory = self.pipe.invert(image, prompt, self.settings.steps, callback=callback)
        else:
            trajectory = self.pipe.forward_noise(image, self.settings.steps, _generator(seed))
        full = np.ones(image.shape[:2], dtype=bool)
        self._commit([Layer(prompt, seed, full, "image" if method == "inversion" else "noise", trajectory, image,
                            full, np.zeros_like(full))])
        return self.composite

    def add_layer(self, prompt: str, rough_mask, seed: int = 0, callback=None) -> np.ndarray:
        prompt, seed = _check_prompt(prompt), check_seed(seed)
        mask = prepare_mask(rough_mask, self.settings.height, self.settings.width)
        if not self.layers:
            raise ValueError("session: no scene yet; start one from a prompt or an image before adding layers")
        self._commit(self.layers + [self._render_object(self.layers, prompt, mask, seed, callback)])
        return self.composite

    def remove_layer(self, index: int, callback=None) -> np.ndarray:
        self._check_index(index)
        if index == 0:
            raise ValueError("layer: the background (layer 0) cannot be removed; start a new scene instead")
        self._commit(self._replay(self.layers[:index], self.layers[index:], callback))
        return self.composite

    def edit_layer(self, index: int, prompt: str | None = None, mask=None, seed: int | None = None,
                   callback=None) -> np.ndarray:
        self._check_index(index)
        old = self.layers[index]
        prompt = old.prompt if prompt is None else _check_prompt(prompt)
        seed = old.seed if seed is None else check_seed(seed)
        if index == 0:
            if mask is not None:
                raise ValueError("mask: the background covers the whole image; it has no mask to edit")
            if old.kind != "prompt":
                raise ValueError("layer: a background from an image cannot be re-prompted; start a new scene")
            out = self.pipe(prompt, generator=_generator(seed), callback_on_step_end=_progress(callback, self.settings),
                            **self._call_settings())
            first = [replace(old, prompt=prompt, seed=seed, trajectory=out.trajectory, image=out.images[0])]
        else:
            new_mask = old.rough_mask if mask is None else prepare_mask(mask, self.settings.height, self.settings.width)
            first = self.layers[:index] + [self._render_object(self.layers[:index], prompt, new_mask, seed, callback)]
        self._commit(self._replay(first, self.layers[index:], callback))
        return self.composite

    def undo(self) -> np.ndarray | None:
        if not self._undo:
            raise ValueError("undo: nothing to undo")
        self._redo.append(self.layers)
        self.layers = self._undo.pop()
        return self.layers[-1].image if self.layers else None

    def redo(self) -> np.ndarray | None:
        if not self._redo:
            raise ValueError("redo: nothing to redo")
        self._undo.append(self.layers)
        self.layers = self._redo.pop()
        return self.composite

    # -- the mechanics

    def _call_settings(self) -> dict:
        """The pipeline arguments that the settings fix for every layer."""
        s = self.settings
        return dict(height=s.height, width=s.width, num_inference_steps=s.steps, guidance_scale=s.guidance,
                    negative_prompt=s.negative_prompt, harmonize=s.harmonize, bcg=s.bcg)

    def _latent_mask(self, mask: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return self.pipe.latent_mask(mask, like.device, like.dtype)

    def _render_object(self, below: list[Layer], prompt: str, mask: np.ndarray, seed: int, callback=None,
                       memory: Layer | None = None) -> Layer:
        """Render one object layer on top of `below`. memory: this layer's previous version, to bring it
        up to date (replay "memory"): inside its old object its own latents, elsewhere the new scene's,
        for the BCG phase; the last `harmonize` steps are re-run on that."""
        s = self.settings
        protected = protected_pixels(below, mask, s.protect)
        edit = mask & ~protected
        if not edit.any():  # the rough mask lies inside earlier objects: the new layer goes in front
            edit, protected = mask, np.zeros_like(mask)
        scene = {}
        if s.mqd:  # every earlier layer's region attends to its own prompt
            scene = dict(scene_prompts=[layer.prompt for layer in below], scene_masks=[l.edit_mask for l in below[1:]])
        start = None
        if memory is not None:
            start = blend_latents(below[-1].trajectory, memory.trajectory,
                                  self._latent_mask(memory.object_mask, memory.trajectory))
        out = self.pipe(prompt, mask=edit, background=below[-1].trajectory, **scene, start_trajectory=start,
                        tighten=s.tighten, strength=s.strength if memory is None else 1.0, generator=_generator(seed),
                        callback_on_step_end=_progress(callback, s),
                        **self._call_settings())
        new = out.images[0]
        alpha = overlay_alpha(edit, s.dilate_px)
        trajectory = out.trajectory
        if s.overlay == "object":  # only the new object (feathered inward) over the scene: no halo of new background
            obj = object_alpha(below[-1].image, new, alpha > 0, threshold=s.overlay_threshold, scale_px=s.dilate_px,
                               keep_out=protected)
            # the layer's latents: its object and a 2-px margin (the latent cells of its outline)
            near = (overlay_alpha(obj > 0, 1) > 0) & (alpha > 0)
            alpha = np.minimum(alpha, obj)
            trajectory = blend_latents(below[-1].trajectory, trajectory, self._latent_mask(near, trajectory))
        alpha[protected] = 0  # earlier objects keep their exact pixels
        image = composite(below[-1].image, new, alpha)
        return Layer(prompt, seed, mask, "object", trajectory, image, edit,
                     object_pixels(below[-1].image, image, s.overlay_threshold))

    def _replay(self, kept: list[Layer], old: list[Layer], callback=None) -> list[Layer]:
        """Bring the layers after kept up to date. old[0] is the layer kept's last one replaces (or the
        removed one), old[1:] the later layers, in order. A later layer whose dilated rough mask sees
        no changed pixel below it is carried over: its pixels are exact (the composite there depends
        only on what lies below, which did not change) and its latents are spliced into the new scene.
        The others are brought up to date as `settings.replay` says: from memory (their own object's
        latents on the new scene, the last harmonize steps re-run; the result is used only near what
        changed below — within 2·dilate_px, feathered — and farther away the layer's pixels stay exact)
        or re-run from their seeds. callback(step, steps) reports each re-rendered layer's steps."""
        layers = list(kept)
        s = self.settings
        for before, layer in zip(old, old[1:]):
            changed = (layers[-1].image != before.image).any(-1)
            region = overlay_alpha(layer.rough_mask, s.dilate_px) > 0
            if (changed & region).any():
                memory = layer if s.replay == "memory" else None
                new = self._render_object(layers, layer.prompt, layer.rough_mask, layer.seed, callback, memory=memory)
                if memory is not None:  # away from what changed below, its pixels stay as they were
                    image = composite(new.image, layer.image, carry_weight(changed, s.dilate_px) * region)
                    new = replace(new, image=image, object_mask=object_pixels(layers[-1].image, image, s.overlay_threshold))
                layers.append(new)
                continue
            image = np.where(region[..., None], layer.image, layers[-1].image)
            trajectory = blend_latents(layers[-1].trajectory, layer.trajectory,
                                       self._latent_mask(layer.edit_mask, layer.trajectory))
            layers.append(replace(layer, image=image, trajectory=trajectory,
                                  object_mask=object_pixels(layers[-1].image, image, s.overlay_threshold)))
        return layers

    def _check_index(self, index: int) -> None:
        if not isinstance(index, int) or not 0 <= index < len(self.layers):
            raise IndexError(f"layer: no layer {index!r}; the session has {len(self.layers)} "
                             f"(0 is the background, 1..{len(self.layers) - 1} the objects)")

    # -- saving

    def save(self, folder: str | Path, model: str | None = None, max_layers: int | None = None) -> Path:
        """A folder that `load` reads back bit-exact, with its undo/redo history (format:
        `session_format`); model: the name of the model that made it, recorded in session.json (an app's
        label, never a server path); max_layers: the most layers the file may hold, history included
        (the newest states are kept)."""
        extra = {} if max_layers is None else {"max_layers": max_layers}
        return save_session(folder, self.settings, self.layers, self.pipe.denoiser.config.in_channels, model,
                            self._undo, self._redo, **extra)

    @classmethod
    def load(cls, pipe: LayeredEditPipeline, folder: str | Path) -> "LayeredSession":
        settings, layers, undo, redo = load_session_history(pipe, folder)
        return cls(pipe, settings, layers, undo, redo)


def _check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected text, e.g. 'a red circle', got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt: empty; say what the layer should contain, e.g. 'a red circle'")
    return prompt.strip()


def _check_image(image, settings: EditSettings) -> np.ndarray:
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        if image.size != (settings.width, settings.height):
            image = image.resize((settings.width, settings.height), Image.BICUBIC)
        image = np.asarray(image)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if image.shape[:2] != (settings.height, settings.width):
        raise ValueError(f"image: expected {settings.width}×{settings.height}, got {image.shape[1]}×{image.shape[0]}")
    return np.array(image)  # the session's own copy: the caller's array stays the caller's



def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _progress(callback, settings: EditSettings):
    """callback_on_step_end that reports (steps done, steps in all) to callback, or None."""
    if callback is None:
        return None

    def on_step_end(pipe, step, timestep, tensors):
        callback(step + 1, settings.steps)
        return tensors
    return on_step_end
