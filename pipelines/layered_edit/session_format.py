"""The saved-session format: a folder with session.json (settings, layer prompts and seeds, and the
sha256 of the tensors) and memory.safetensors (masks, trajectories, images). Loads back bit-exact;
version 2 (which also kept prompt embeddings, and no hash) still loads.

A save is all or nothing: both files are written into a temporary folder beside the target, which
then takes the target's place; an interrupted save leaves the previous session as it was. A load
checks every field against the pipeline (sizes, latent channels, kinds, seeds, finite values) before
anything becomes a session, and refuses oversized manifests and layer counts before parsing them.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from formats.jsonfile import read_json
from pipelines.atomic import sha256_file, writing_folder
from pipelines.layered_edit.settings import KINDS, EditSettings, Layer, check_seed

SESSION_FORMAT = "strata-layered-session"
SESSION_VERSION = 4  # 2: layers also keep their edit and object masks; 3: no prompt embeddings, a tensor hash;
#                      4: masks packed 8 pixels to a byte (a tenth of an SD-1.5 512² layer was its three masks)
READABLE_VERSIONS = (2, 3, 4)  # a version-2 session's embeddings are ignored
MANIFEST = "session.json"
MEMORY = "memory.safetensors"
MAX_LAYERS = 256
MAX_MANIFEST_BYTES = 1 << 20


class SessionError(ValueError):
    """A session folder that is missing, corrupt or not a Strata session."""


def is_session_folder(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and (folder / MEMORY).is_file()


def save_session(folder: str | Path, settings: EditSettings, layers: list[Layer], latent_channels: int,
                 model: str | None = None) -> Path:
    """session.json (settings, layer prompts and seeds, the tensors' sha256, and the model's name when
    given) + memory.safetensors (rough, edit and object masks, trajectories, images), written all or
    nothing. An existing session at folder is replaced; an existing folder that is not a session is
    refused."""
    folder = Path(folder)
    if not layers:
        raise SessionError("session: nothing to save; start a scene first")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not is_session_folder(folder))):
        raise SessionError(f"folder: {folder.name!r} exists and is not a Strata session; choose another folder")
    manifest = {"format": SESSION_FORMAT, "version": SESSION_VERSION, "settings": settings.__dict__,
                "latent_channels": int(latent_channels),
                "layers": [{"prompt": l.prompt, "seed": check_seed(l.seed), "kind": l.kind} for l in layers]}
    if model is not None:
        manifest["model"] = str(model)
    json.dumps(manifest)  # a field JSON cannot write fails here, before anything is written
    tensors = {}
    for i, layer in enumerate(layers):
        tensors[f"layer{i}.trajectory"] = layer.trajectory.detach().cpu().contiguous()
        tensors[f"layer{i}.image"] = torch.from_numpy(np.array(layer.image, order="C"))  # a writable copy
        for name, mask in (("mask", layer.rough_mask), ("edit_mask", layer.edit_mask), ("object_mask", layer.object_mask)):
            tensors[f"layer{i}.{name}"] = torch.from_numpy(np.packbits(mask, axis=None))
    with writing_folder(folder) as partial:
        save_file(tensors, partial / MEMORY)
        manifest["memory_sha256"] = sha256_file(partial / MEMORY)
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return folder


def load_session(pipe, folder: str | Path) -> tuple[EditSettings, list[Layer]]:
    """The settings and layers of a saved session, every field checked against the pipeline first.
    Messages name the file by its name only (never the server's path)."""
    folder = Path(folder)
    manifest_path, memory_path = folder / MANIFEST, folder / MEMORY
    if not is_session_folder(folder):
        raise SessionError(f"session: not a Strata session (expected {MANIFEST} and {MEMORY})")
    manifest = read_json(manifest_path, MANIFEST, MAX_MANIFEST_BYTES, SessionError)
    if not isinstance(manifest, dict) or manifest.get("format") != SESSION_FORMAT:
        raise SessionError(f"{MANIFEST}: not a Strata layered-editing session")
    version = manifest.get("version")
    if version not in READABLE_VERSIONS:
        raise SessionError(f"{MANIFEST}: session version {version!r}; this Strata reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))}")
    settings = _settings(manifest.get("settings"), pipe)
    channels = pipe.denoiser.config.in_channels
    if manifest.get("latent_channels") != channels:
        raise SessionError(f"{MANIFEST}.latent_channels: the model has {channels}, the session "
                           f"{manifest.get('latent_channels')!r}; it was made with another model")
    entries = manifest.get("layers")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_LAYERS:
        raise SessionError(f"{MANIFEST}.layers: expected 1 to {MAX_LAYERS} layers, got "
                           f"{len(entries) if isinstance(entries, list) else type(entries).__name__}")
    entries = [_entry(e, i) for i, e in enumerate(entries)]
    if version >= 3 and manifest.get("memory_sha256") != sha256_file(memory_path):
        raise SessionError(f"{MEMORY}: corrupt, or from another save (its hash does not match {MANIFEST})")
    try:
        tensors = load_file(memory_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise SessionError(f"{MEMORY}: corrupt session memory ({type(err).__name__})") from None
    h, w = settings.height // pipe.vae_scale_factor, settings.width // pipe.vae_scale_factor
    size = (settings.height, settings.width)
    packed = version >= 4
    mask_shape = (-(-size[0] * size[1] // 8),) if packed else size
    expected = {"trajectory": (settings.steps + 1, channels, h, w), "image": (*size, 3), "mask": mask_shape,
                "edit_mask": mask_shape, "object_mask": mask_shape}
    layers = []
    for i, (prompt, seed, kind) in enumerate(entries):
        got = {}
        for name, shape in expected.items():
            t = tensors.get(f"layer{i}.{name}")
            if t is None or tuple(t.shape) != shape:
                raise SessionError(f"{MEMORY}: layer{i}.{name} is missing or not of shape {shape}")
            if name == "trajectory":
                if not t.is_floating_point() or not torch.isfinite(t).all():
                    raise SessionError(f"{MEMORY}: layer{i}.trajectory must hold finite floating-point latents")
                got[name] = t.to(pipe.device, pipe.denoiser.dtype)
            elif t.dtype != torch.uint8 or (name != "image" and not packed and bool((t > 1).any())):
                raise SessionError(f"{MEMORY}: layer{i}.{name} must be uint8" + ("" if name == "image" or packed else " 0/1"))
            elif name == "image":
                got[name] = t.numpy()
            elif packed:
                got[name] = np.unpackbits(t.numpy(), count=size[0] * size[1]).reshape(size).astype(bool)
            else:
                got[name] = t.numpy().astype(bool)
        layers.append(Layer(prompt, seed, got["mask"], kind, got["trajectory"], got["image"], got["edit_mask"],
                            got["object_mask"]))
    return settings, layers


def _settings(value, pipe) -> EditSettings:
    names = {f.name for f in fields(EditSettings)}
    if not isinstance(value, dict) or not set(value) <= names:
        unknown = sorted(set(value) - names) if isinstance(value, dict) else type(value).__name__
        raise SessionError(f"{MANIFEST}.settings: expected an object of edit settings, got {unknown}")
    try:
        settings = EditSettings(**value).sized_for(pipe)
        pipe.check_size(settings.height, settings.width)
    except (TypeError, ValueError) as err:
        raise SessionError(f"{MANIFEST}.settings.{err}") from None
    return settings


def _entry(entry, i: int) -> tuple[str, int, str]:
    where = f"{MANIFEST}.layers[{i}]"
    if not isinstance(entry, dict):
        raise SessionError(f"{where}: expected an object, got {type(entry).__name__}")
    prompt, kind = entry.get("prompt"), entry.get("kind")
    if not isinstance(prompt, str):
        raise SessionError(f"{where}.prompt: expected text, got {type(prompt).__name__}")
    if kind not in KINDS or (kind == "object") != (i > 0):
        expected = "'object'" if i else f"one of {[k for k in KINDS if k != 'object']}"
        raise SessionError(f"{where}.kind: expected {expected}, got {kind!r}")
    try:
        seed = check_seed(entry.get("seed"))
    except ValueError as err:
        raise SessionError(f"{where}.{err}") from None
    return prompt, seed, kind


def session_model(folder: str | Path) -> str | None:
    """The model name a saved session records (None: not recorded, or not a readable session)."""
    try:
        manifest = read_json(Path(folder) / MANIFEST, MANIFEST, MAX_MANIFEST_BYTES, SessionError)
    except (SessionError, OSError):
        return None
    model = manifest.get("model") if isinstance(manifest, dict) else None
    return model[:200] if isinstance(model, str) else None
