"""Layered editing: sequential edits with rough masks, each edit a layer kept in memory.

`LayeredEditPipeline` (a diffusers pipeline) generates one layer: the denoising loop with
Multi-Query Disentanglement in cross-attention (each region sees only its own prompt) and
Background Consistency Guidance (after every scheduler step, outside the rough mask the latent is
taken from the previous layer's trajectory, except during the last `harmonize` fraction of steps),
then a feathered pixel overlay so that pixels outside the dilated rough mask stay exactly as they
were. The region a layer may repaint is its rough mask minus the visible pixels of earlier objects
that the mask only clips (`EditSettings.protect`). `LayeredSession` keeps the layers: start from a
prompt or an image, add, remove or edit any layer (later layers that see the change are replayed:
by default their own object's latents from memory on the new scene with the last harmonize steps
re-run, used only near what changed below, or in full from their seeds; the others are carried over
exactly), undo/redo, save/load.

It runs on SD-1.x-style UNets (the embedded default), SDXL-style UNets (two text encoders, added
conditioning) and PixArt-style transformers (T5 with a padding mask).

    python -m pipelines.layered_edit --script edits.json --out DIR      (format: `load_script`)
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline
from PIL import Image
from scipy import ndimage
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from attention_processors import AttentionController, MultiQueryDisentangledProcessor, installed_processors, region_labels
from attention_processors.install import is_cross_attention

SESSION_FORMAT = "strata-layered-session"
SESSION_VERSION = 2  # 2: layers also keep their edit and object masks
REPLAY_MODES = ("memory", "seed")


class SessionError(ValueError):
    """A session folder that is missing, corrupt or not a Strata session."""


class MaskResizedWarning(UserWarning):
    """A rough mask of another size than the image was resized to fit."""


@dataclass(frozen=True)
class EditSettings:
    height: int = 64
    width: int = 64
    steps: int = 20
    guidance: float = 4.0
    harmonize: float = 0.2  # last fraction of steps run without BCG, so the seam settles
    negative_prompt: str = ""
    mqd: bool = True
    bcg: bool = True
    dilate_px: int = 2  # pixels outside the mask dilated by this much (plus feathering) never change
    protect: float = 0.5  # an earlier object a new rough mask covers by at most this fraction is kept
    #                       (its pixels leave the edit region); above it the new layer may occlude it.
    #                       0 protects nothing.
    replay: str = "memory"  # how a later layer that sees a removal/re-edit below it is brought up to date:
    #                         "memory": its own latents inside its object (from memory) spliced onto the new
    #                         scene, then only the last `harmonize` steps re-run, and that result kept only
    #                         near what changed below (farther than 2·dilate_px its pixels stay exact);
    #                         "seed": re-run in full from its seed, prompt and mask (a new draw of the object)

    def __post_init__(self):
        if self.replay not in REPLAY_MODES:
            raise ValueError(f"replay: expected one of {REPLAY_MODES}, got {self.replay!r}")
        if not 0 <= self.harmonize <= 1:
            raise ValueError(f"harmonize: expected a fraction in [0, 1], got {self.harmonize!r}")


@dataclass(frozen=True)
class Layer:
    """One layer of the memory. trajectory: (steps + 1, C, h, w) latents of the composite scene after
    this layer, trajectory[k] after k steps; image: (H, W, 3) uint8 composite; rough_mask: (H, W) bool,
    as the user drew it; edit_mask: the part of it the layer was allowed to repaint (the rough mask
    minus protected earlier objects); object_mask: the pixels the layer visibly changed (its object)."""

    prompt: str
    seed: int
    rough_mask: np.ndarray
    kind: str  # "prompt" (generated), "image" (DDIM inversion), "noise" (forward noising), "object"
    trajectory: torch.Tensor
    image: np.ndarray
    embeds: torch.Tensor  # (1, T, C) prompt embeddings
    edit_mask: np.ndarray
    object_mask: np.ndarray


# ---- the pipeline ---------------------------------------------------------------------------------

class LayeredEditPipeline(DiffusionPipeline):
    """Generates one layer at a time; `LayeredSession` holds the layers."""

    _optional_components = ["unet", "transformer", "text_encoder_2", "tokenizer_2", "safety_checker",
                            "feature_extractor", "image_encoder"]

    def __init__(self, vae, text_encoder, tokenizer, scheduler, unet=None, transformer=None, text_encoder_2=None,
                 tokenizer_2=None, safety_checker=None, feature_extractor=None, image_encoder=None,
                 requires_safety_checker: bool = False):
        super().__init__()
        if unet is None and transformer is None:
            raise ValueError("unet/transformer: the pipeline needs a denoiser, got neither")
        scheduler = DDIMScheduler.from_config(scheduler.config)  # deterministic, invertible
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                              unet=unet, transformer=transformer, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2, safety_checker=None, feature_extractor=None, image_encoder=None)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def denoiser(self):
        return self.unet if self.unet is not None else self.transformer

    # diffusers' `device`/`dtype` walk the pipeline's signature and components on every read (about
    # 1 ms each on a CPU); they are read several times per layer, so read one denoiser parameter instead.
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    # -- prompts

    def _tokens(self, tokenizer, prompts: list[str]):
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict:
        """Per prompt: hidden (n, T, C), and pooled (SDXL) or mask (PixArt) where the model uses them."""
        if self.transformer is not None:
            tokens = self._tokens(self.tokenizer, prompts)
            hidden = self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
            return {"hidden": hidden, "mask": tokens.attention_mask}
        if self.text_encoder_2 is not None:
            hiddens, pooled = [], None
            for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
                out = encoder(self._tokens(tokenizer, prompts).input_ids, output_hidden_states=True)
                hiddens.append(out.hidden_states[-2])
                pooled = out[0]
            return {"hidden": torch.cat(hiddens, -1), "pooled": pooled}
        return {"hidden": self.text_encoder(self._tokens(self.tokenizer, prompts).input_ids)[0]}

    def _condition(self, region_prompts: list[str], negative: str, settings: EditSettings) -> dict:
        """Encoder states for [negative half; conditional half], prompts concatenated along tokens."""
        enc = self.encode_prompts(region_prompts + [negative])
        n = len(region_prompts)
        cond = enc["hidden"][:n].reshape(1, -1, enc["hidden"].shape[-1])
        uncond = enc["hidden"][n:].repeat(1, n, 1)
        out = {"hidden": torch.cat([uncond, cond]), "embeds": enc["hidden"][n - 1:n]}
        if "mask" in enc:
            out["mask"] = torch.cat([enc["mask"][n:].repeat(1, n), enc["mask"][:n].reshape(1, -1)])
        if "pooled" in enc:  # the global vector: the newest prompt's
            out["pooled"] = torch.cat([enc["pooled"][n:], enc["pooled"][n - 1:n]])
            size = [settings.height, settings.width, 0, 0, settings.height, settings.width]
            out["time_ids"] = torch.tensor([size, size], dtype=out["pooled"].dtype, device=self.device)
        return out

    def _predict(self, latents, t, cond: dict) -> torch.Tensor:
        if self.transformer is not None:
            out = self.transformer(latents, encoder_hidden_states=cond["hidden"], encoder_attention_mask=cond["mask"],
                                   timestep=t.expand(len(latents)), added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
            return out[:, :latents.shape[1]]  # PixArt also predicts a variance
        extra = {}
        if "pooled" in cond:
            extra["added_cond_kwargs"] = {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}
        return self.unet(latents, t, cond["hidden"], **extra).sample

    # -- latents and images

    def latent_size(self, settings: EditSettings) -> tuple[int, int]:
        return settings.height // self.vae_scale_factor, settings.width // self.vae_scale_factor

    def noise(self, seed: int, settings: EditSettings) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn((1, channels, *self.latent_size(settings)), generator=gen).to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return ((image[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].to(self.device, self.dtype) / 127.5 - 1
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def latent_mask(self, rough_mask: np.ndarray, settings: EditSettings) -> torch.Tensor:
        """(1, 1, h, w) in {0, 1}: a latent pixel belongs to the mask if the mask touches it."""
        m = torch.from_numpy(rough_mask.astype(np.float32))[None, None]
        return F.adaptive_max_pool2d(m, self.latent_size(settings)).to(self.device, self.dtype)

    # -- one layer

    @torch.no_grad()
    def generate_layer(self, region_prompts: list[str], labels: torch.Tensor | None, seed: int, settings: EditSettings,
                       background: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       progress: bool = True, callback=None, start: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise one layer. region_prompts[j] is the prompt of region j of labels ((h, w), or None
        for one prompt everywhere); background: the previous trajectory for BCG, with mask (1, 1, h, w).
        start: a trajectory (steps + 1, C, h, w) taken from memory for the BCG phase; only the last
        `harmonize` steps are then run, from its latents at that point.
        Returns the trajectory (steps + 1, C, h, w) and the newest prompt's embeddings."""
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        cond = self._condition(region_prompts, settings.negative_prompt, settings)
        n_blended = int(round(settings.steps * (1 - settings.harmonize)))
        if start is not None:
            first = n_blended
            z = start[first:first + 1]
            trajectory = list(start[:first + 1])
        else:
            first = 0
            z = self.noise(seed, settings)
            if background is not None:
                z = background[0:1] * (1 - mask) + z * mask
            trajectory = [z[0]]
        controller = AttentionController(self.latent_size(settings), labels, n_regions=len(region_prompts),
                                         segment_length=cond["hidden"].shape[1] // len(region_prompts),
                                         shared_rows=1)  # row 0 is the negative prompt, repeated
        use_mqd = labels is not None and len(region_prompts) > 1

        def make(name, original):
            return MultiQueryDisentangledProcessor(controller) if use_mqd and is_cross_attention(name) else None
        with installed_processors(self.denoiser, make):
            for i, t in enumerate(tqdm(self.scheduler.timesteps[first:], desc="layer", leave=False, disable=not progress),
                                  start=first):
                controller.begin_step(i, int(t))
                pred = self._predict(torch.cat([z, z]), t, cond)
                uncond, text = pred.chunk(2)
                z = self.scheduler.step(uncond + settings.guidance * (text - uncond), t, z).prev_sample
                if background is not None and settings.bcg and i < n_blended:
                    z = background[i + 1:i + 2] * (1 - mask) + z * mask
                trajectory.append(z[0])
                if callback is not None:
                    callback(i + 1, settings.steps)
        return torch.stack(trajectory), cond["embeds"]

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, prompt: str, settings: EditSettings, progress: bool = True) -> torch.Tensor:
        """DDIM inversion of clean latents (1, C, h, w) into a trajectory (steps + 1, C, h, w)."""
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        cond = self._condition([prompt], "", settings)
        cond = {k: v[1:] for k, v in cond.items() if k != "embeds"}  # conditional branch only
        alphas = self.scheduler.alphas_cumprod.to(self.device)
        timesteps = self.scheduler.timesteps
        trajectory = [None] * settings.steps + [latents[0]]
        z = latents
        for k in tqdm(range(settings.steps - 1, -1, -1), desc="inversion", leave=False, disable=not progress):
            t = timesteps[k]
            out = self._predict(z, t, cond)
            a_prev = alphas[timesteps[k + 1]] if k + 1 < settings.steps else torch.tensor(1.0, device=self.device)
            a_t = alphas[t]
            if self.scheduler.config.prediction_type == "v_prediction":
                x0 = a_prev.sqrt() * z - (1 - a_prev).sqrt() * out
                eps = a_prev.sqrt() * out + (1 - a_prev).sqrt() * z
            else:
                eps = out
                x0 = (z - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
            z = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
            trajectory[k] = z[0]
        return torch.stack(trajectory)

    def forward_noised(self, latents: torch.Tensor, seed: int, settings: EditSettings) -> torch.Tensor:
        """The cheap alternative to inversion: the clean latents noised with one fixed noise."""
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        noise = self.noise(seed, settings)
        steps = [self.scheduler.add_noise(latents, noise, t[None])[0] for t in self.scheduler.timesteps]
        return torch.stack(steps + [latents[0]])


# ---- masks and overlay ------------------------------------------------------------------------------

def prepare_mask(mask, height: int, width: int, field_name: str = "rough_mask") -> np.ndarray:
    """(H, W) bool from an array or PIL image (any non-zero pixel, or alpha, counts). A mask of another
    size is resized (nearest) with a MaskResizedWarning; an empty mask is an error."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("RGBA"))[..., 3] if mask.mode in ("RGBA", "LA") else np.asarray(mask.convert("L"))
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.max(-1)
    if mask.ndim != 2:
        raise ValueError(f"{field_name}: expected an (H, W) mask, got shape {mask.shape}")
    mask = mask > 0
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


def object_pixels(before: np.ndarray, after: np.ndarray, threshold: float = 48.0) -> np.ndarray:
    """(H, W) bool: pixels a layer visibly changed (RGB distance above threshold), holes filled and
    specks under 4 pixels dropped. This is the layer's object as far as later layers are concerned."""
    changed = np.linalg.norm(after.astype(np.float32) - before.astype(np.float32), axis=-1) > threshold
    changed = ndimage.binary_fill_holes(changed)
    components, count = ndimage.label(changed)
    if count:
        sizes = ndimage.sum(changed, components, index=np.arange(1, count + 1))
        changed = np.isin(components, 1 + np.flatnonzero(sizes >= 4))
    return changed


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


# ---- the session --------------------------------------------------------------------------------------

@dataclass
class LayeredSession:
    """The layers of one scene (layer 0 is the background), with undo/redo and save/load."""

    pipe: LayeredEditPipeline
    settings: EditSettings = field(default_factory=EditSettings)
    layers: list[Layer] = field(default_factory=list)
    _undo: list[list[Layer]] = field(default_factory=list, repr=False)
    _redo: list[list[Layer]] = field(default_factory=list, repr=False)
    progress: bool = True

    # -- reading

    @property
    def composite(self) -> np.ndarray:
        if not self.layers:
            raise ValueError("session: no scene yet; start one from a prompt or an image")
        return self.layers[-1].image

    def layer_images(self) -> list[np.ndarray]:
        return [layer.image for layer in self.layers]

    # -- changing (each validates first, so a bad call changes nothing)

    def _commit(self, layers: list[Layer]) -> None:
        self._undo.append(self.layers)
        self._redo.clear()
        self.layers = layers

    def start_from_prompt(self, prompt: str, seed: int = 0, callback=None) -> np.ndarray:
        prompt = _check_prompt(prompt)
        trajectory, embeds = self.pipe.generate_layer([prompt], None, seed, self.settings, progress=self.progress,
                                                      callback=callback)
        full = np.ones((self.settings.height, self.settings.width), dtype=bool)
        self._commit([Layer(prompt, seed, full, "prompt", trajectory, self.pipe.decode(trajectory[-1:]), embeds,
                            full, np.zeros_like(full))])
        return self.composite

    def start_from_image(self, image, prompt: str = "", method: str = "inversion", seed: int = 0) -> np.ndarray:
        image = _check_image(image, self.settings)
        if method not in ("inversion", "noise"):
            raise ValueError(f"method: expected 'inversion' or 'noise', got {method!r}")
        latents = self.pipe.encode_image(image)
        if method == "inversion":
            trajectory = self.pipe.invert(latents, prompt, self.settings, progress=self.progress)
        else:
            trajectory = self.pipe.forward_noised(latents, seed, self.settings)
        embeds = self.pipe._condition([prompt], "", self.settings)["embeds"]
        full = np.ones(image.shape[:2], dtype=bool)
        self._commit([Layer(prompt, seed, full, "image" if method == "inversion" else "noise", trajectory, image, embeds,
                            full, np.zeros_like(full))])
        return self.composite

    def add_layer(self, prompt: str, rough_mask, seed: int = 0, callback=None) -> np.ndarray:
        prompt = _check_prompt(prompt)
        mask = prepare_mask(rough_mask, self.settings.height, self.settings.width)
        if not self.layers:
            raise ValueError("session: no scene yet; start one from a prompt or an image before adding layers")
        self._commit(self.layers + [self._render_object(self.layers, prompt, mask, seed, callback)])
        return self.composite

    def remove_layer(self, index: int) -> np.ndarray:
        self._check_index(index)
        if index == 0:
            raise ValueError("layer: the background (layer 0) cannot be removed; start a new scene instead")
        self._commit(self._replay(self.layers[:index], self.layers[index:]))
        return self.composite

    def edit_layer(self, index: int, prompt: str | None = None, mask=None, seed: int | None = None) -> np.ndarray:
        self._check_index(index)
        old = self.layers[index]
        prompt = old.prompt if prompt is None else _check_prompt(prompt)
        seed = old.seed if seed is None else seed
        if index == 0:
            if mask is not None:
                raise ValueError("mask: the background covers the whole image; it has no mask to edit")
            if old.kind != "prompt":
                raise ValueError("layer: a background from an image cannot be re-prompted; start a new scene")
            trajectory, embeds = self.pipe.generate_layer([prompt], None, seed, self.settings, progress=self.progress)
            first = [replace(old, prompt=prompt, seed=seed, trajectory=trajectory, embeds=embeds,
                             image=self.pipe.decode(trajectory[-1:]))]
        else:
            new_mask = old.rough_mask if mask is None else prepare_mask(mask, self.settings.height, self.settings.width)
            first = self.layers[:index] + [self._render_object(self.layers[:index], prompt, new_mask, seed)]
        self._commit(self._replay(first, self.layers[index:]))
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

    def _render_object(self, below: list[Layer], prompt: str, mask: np.ndarray, seed: int, callback=None,
                       memory: Layer | None = None) -> Layer:
        """Render one object layer on top of `below`. memory: this layer's previous version, to bring it
        up to date (replay "memory"): inside its old object its own latents, elsewhere the new scene's,
        for the BCG phase; the last `harmonize` steps are re-run on that."""
        s = self.settings
        h, w = self.pipe.latent_size(s)
        protected = protected_pixels(below, mask, s.protect)
        edit = mask & ~protected
        if not edit.any():  # the rough mask lies inside earlier objects: the new layer goes in front
            edit, protected = mask, np.zeros_like(mask)
        masks = [self.pipe.latent_mask(layer.edit_mask, s)[0, 0].cpu() for layer in below[1:]]
        current = self.pipe.latent_mask(edit, s)
        if s.mqd:
            labels = region_labels(masks + [current[0, 0].cpu()], h, w)
            prompts = [layer.prompt for layer in below] + [prompt]
        else:
            labels, prompts = None, [prompt]
        start = None
        if memory is not None:
            own = self.pipe.latent_mask(memory.object_mask, s)[0]
            start = below[-1].trajectory * (1 - own) + memory.trajectory * own
        trajectory, embeds = self.pipe.generate_layer(prompts, labels, seed, s, background=below[-1].trajectory,
                                                      mask=current, progress=self.progress, callback=callback,
                                                      start=start)
        new = self.pipe.decode(trajectory[-1:])
        alpha = overlay_alpha(edit, s.dilate_px)
        alpha[protected] = 0  # earlier objects keep their exact pixels
        image = composite(below[-1].image, new, alpha)
        return Layer(prompt, seed, mask, "object", trajectory, image, embeds, edit,
                     object_pixels(below[-1].image, image))

    def _replay(self, kept: list[Layer], old: list[Layer]) -> list[Layer]:
        """Bring the layers after kept up to date. old[0] is the layer kept's last one replaces (or the
        removed one), old[1:] the later layers, in order. A later layer whose dilated rough mask sees
        no changed pixel below it is carried over: its pixels are exact (the composite there depends
        only on what lies below, which did not change) and its latents are spliced into the new scene.
        The others are brought up to date as `settings.replay` says: from memory (their own object's
        latents on the new scene, the last harmonize steps re-run; the result is used only near what
        changed below — within 2·dilate_px, feathered — and farther away the layer's pixels stay exact)
        or re-run from their seeds."""
        layers = list(kept)
        s = self.settings
        for before, layer in zip(old, old[1:]):
            changed = (layers[-1].image != before.image).any(-1)
            region = overlay_alpha(layer.rough_mask, s.dilate_px) > 0
            if (changed & region).any():
                memory = layer if s.replay == "memory" else None
                new = self._render_object(layers, layer.prompt, layer.rough_mask, layer.seed, memory=memory)
                if memory is not None:  # away from what changed below, its pixels stay as they were
                    image = composite(new.image, layer.image, carry_weight(changed, s.dilate_px) * region)
                    new = replace(new, image=image, object_mask=object_pixels(layers[-1].image, image))
                layers.append(new)
                continue
            image = np.where(region[..., None], layer.image, layers[-1].image)
            m = self.pipe.latent_mask(layer.edit_mask, s)[0]
            trajectory = layers[-1].trajectory * (1 - m) + layer.trajectory * m
            layers.append(replace(layer, image=image, trajectory=trajectory,
                                  object_mask=object_pixels(layers[-1].image, image)))
        return layers

    def _check_index(self, index: int) -> None:
        if not isinstance(index, int) or not 0 <= index < len(self.layers):
            raise IndexError(f"layer: no layer {index!r}; the session has {len(self.layers)} "
                             f"(0 is the background, 1..{len(self.layers) - 1} the objects)")

    # -- saving

    def save(self, folder: str | Path) -> Path:
        """session.json (settings, layer prompts and seeds) + memory.safetensors (rough, edit and object
        masks, trajectories, images, prompt embeddings). Loads back bit-exact."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, layer in enumerate(self.layers):
            tensors[f"layer{i}.trajectory"] = layer.trajectory.detach().cpu().contiguous()
            tensors[f"layer{i}.embeds"] = layer.embeds.detach().cpu().contiguous()
            tensors[f"layer{i}.image"] = torch.from_numpy(np.ascontiguousarray(layer.image))
            for name, mask in (("mask", layer.rough_mask), ("edit_mask", layer.edit_mask), ("object_mask", layer.object_mask)):
                tensors[f"layer{i}.{name}"] = torch.from_numpy(np.ascontiguousarray(mask.astype(np.uint8)))
        save_file(tensors, folder / "memory.safetensors")
        manifest = {"format": SESSION_FORMAT, "version": SESSION_VERSION, "settings": self.settings.__dict__,
                    "latent_channels": int(self.pipe.denoiser.config.in_channels),
                    "layers": [{"prompt": l.prompt, "seed": l.seed, "kind": l.kind} for l in self.layers]}
        (folder / "session.json").write_text(json.dumps(manifest, indent=1))
        return folder

    @classmethod
    def load(cls, pipe: LayeredEditPipeline, folder: str | Path, progress: bool = True) -> "LayeredSession":
        folder = Path(folder)
        manifest_path, memory_path = folder / "session.json", folder / "memory.safetensors"
        if not manifest_path.exists() or not memory_path.exists():
            raise SessionError(f"{folder}: not a Strata session (expected session.json and memory.safetensors)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SessionError(f"{manifest_path}: corrupt session manifest ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != SESSION_FORMAT:
            raise SessionError(f"{manifest_path}: not a Strata layered-editing session")
        if manifest.get("version") != SESSION_VERSION:
            raise SessionError(f"{manifest_path}: session version {manifest.get('version')!r}; this Strata reads {SESSION_VERSION}")
        try:
            settings = EditSettings(**manifest["settings"])
            tensors = load_file(memory_path)
            entries = manifest["layers"]
        except (SafetensorError, OSError, TypeError, KeyError, ValueError) as err:
            raise SessionError(f"{folder}: corrupt session ({type(err).__name__}: {err})") from None
        h, w = pipe.latent_size(settings)
        expected = {"trajectory": ((settings.steps + 1, manifest.get("latent_channels"), h, w), None),
                    "image": ((settings.height, settings.width, 3), torch.uint8),
                    "mask": ((settings.height, settings.width), torch.uint8),
                    "edit_mask": ((settings.height, settings.width), torch.uint8),
                    "object_mask": ((settings.height, settings.width), torch.uint8)}
        layers = []
        for i, entry in enumerate(entries):
            for name, (shape, dtype) in expected.items():
                t = tensors.get(f"layer{i}.{name}")
                if t is None or tuple(t.shape) != shape or (dtype is not None and t.dtype != dtype):
                    raise SessionError(f"{memory_path}: layer{i}.{name} is missing or has the wrong shape/dtype "
                                       f"(expected {shape})")
            if f"layer{i}.embeds" not in tensors:
                raise SessionError(f"{memory_path}: layer{i}.embeds is missing")
            layers.append(Layer(str(entry["prompt"]), int(entry["seed"]), tensors[f"layer{i}.mask"].numpy().astype(bool),
                                str(entry["kind"]), tensors[f"layer{i}.trajectory"].to(pipe.device),
                                tensors[f"layer{i}.image"].numpy(), tensors[f"layer{i}.embeds"].to(pipe.device),
                                tensors[f"layer{i}.edit_mask"].numpy().astype(bool),
                                tensors[f"layer{i}.object_mask"].numpy().astype(bool)))
        if not layers:
            raise SessionError(f"{manifest_path}: the session has no layers")
        return cls(pipe, settings, layers, progress=progress)


def _check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
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
    return image


# ---- the scripted CLI ----------------------------------------------------------------------------------

def load_script(path: str | Path) -> dict:
    """An edit script (JSON):

        {"model": "embedded",                              optional: a diffusers folder or hub id
         "settings": {"height": 64, "width": 64, "steps": 20, "guidance": 4.0, "harmonize": 0.2},  optional
         "scene": {"prompt": "an empty scene of grass", "seed": 0}     or {"image": "photo.png",
                                                                          "method": "inversion"}
         "layers": [{"prompt": "a red circle", "seed": 1,
                     "mask": {"box": [x0, y0, x1, y1]}  or  {"png": "mask.png"}}, …]}
    """
    path = Path(path)
    try:
        script = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if "scene" not in script or not isinstance(script.get("layers", []), list):
        raise ValueError(f"{path}: expected a 'scene' object and a 'layers' list")
    return script


def script_mask(spec: dict, height: int, width: int, base: Path) -> np.ndarray:
    if "box" in spec:
        x0, y0, x1, y1 = (int(v) for v in spec["box"])
        mask = np.zeros((height, width), dtype=bool)
        mask[max(0, y0):y1, max(0, x0):x1] = True
        return mask
    if "png" in spec:
        return np.asarray(Image.open(base / spec["png"]).convert("L")) > 127
    raise ValueError("layers[].mask: expected {'box': [x0, y0, x1, y1]} or {'png': 'file.png'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True, help="edit script JSON (see pipelines.layered_edit.load_script)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None, help="overrides the script's model")
    args = parser.parse_args(argv)
    from pipelines.loading import load_pipeline
    script = load_script(args.script)
    base = Path(args.script).parent
    pipe = load_pipeline(args.model or script.get("model", "embedded"), LayeredEditPipeline)
    pipe.set_progress_bar_config(disable=True)
    session = LayeredSession(pipe, EditSettings(**script.get("settings", {})), progress=False)
    out = Path(args.out)
    (out / "layers").mkdir(parents=True, exist_ok=True)
    scene = script["scene"]
    steps = tqdm(total=1 + len(script["layers"]), desc="edits")
    if "image" in scene:
        session.start_from_image(base / scene["image"], scene.get("prompt", ""), scene.get("method", "inversion"),
                                 scene.get("seed", 0))
    else:
        session.start_from_prompt(scene["prompt"], scene.get("seed", 0))
    Image.fromarray(session.composite).save(out / "step_00.png")
    steps.update(1)
    s = session.settings
    for i, layer in enumerate(script["layers"], start=1):
        session.add_layer(layer["prompt"], script_mask(layer["mask"], s.height, s.width, base), layer.get("seed", i))
        Image.fromarray(session.composite).save(out / f"step_{i:02d}.png")
        steps.update(1)
    steps.close()
    for i, image in enumerate(session.layer_images()):
        Image.fromarray(image).save(out / "layers" / f"layer_{i:02d}.png")
    session.save(out / "session")
    print(f"wrote {len(session.layers)} layers to {out}")


if __name__ == "__main__":
    main()
