"""The saved-session format: a folder with session.json (settings, layer prompts and seeds, the undo
and redo history as lists of layer numbers, and the sha256 of the tensors) and memory.safetensors
(masks, trajectories, images of every layer any state uses, each once). Loads back bit-exact, history
included; versions 2 to 4 (no history; 2 also kept prompt embeddings, and no hash) still load.

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
SESSION_VERSION = 5  # 2: layers also keep their edit and object masks; 3: no prompt embeddings, a tensor hash;
#                      4: masks packed 8 pixels to a byte (a tenth of an SD-1.5 512² layer was its three masks);
#                      5: the undo/redo history ("layers" is every layer any state uses; "state", "undo", "redo"
#                      list layer numbers)
READABLE_VERSIONS = (2, 3, 4, 5)  # a version-2 session's embeddings are ignored
MAX_HISTORY = 256  # undo + redo states a session file may hold
MANIFEST = "session.json"
MEMORY = "memory.safetensors"
MAX_LAYERS = 256
MAX_MANIFEST_BYTES = 1 << 20


class SessionError(ValueError):
    """A session folder that is missing, corrupt or not a Strata session."""


def is_session_folder(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and (folder / MEMORY).is_file()


def save_session(folder: str | Path, settings: EditSettings, layers: list[Layer], latent_channels: int,
                 model: str | None = None, undo: list[list[Layer]] = (), redo: list[list[Layer]] = (),
                 max_layers: int = MAX_LAYERS) -> Path:
    """session.json (settings, layer prompts and seeds, the history, the tensors' sha256, and the
    model's name when given) + memory.safetensors (rough, edit and object masks, trajectories, images),
    written all or nothing. undo, redo: earlier and undone states (oldest first), kept newest first
    while every layer they use, each counted once, fits in max_layers. An existing session at folder is
    replaced; an existing folder that is not a session is refused."""
    folder = Path(folder)
    if not layers:
        raise SessionError("session: nothing to save; start a scene first")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not is_session_folder(folder))):
        raise SessionError(f"folder: {folder.name!r} exists and is not a Strata session; choose another folder")
    pool: list[Layer] = []
    number: dict[int, int] = {}  # id(layer) → its number in pool (states share most of their layers)

    def numbers(state: list[Layer]) -> list[int] | None:
        """state as layer numbers, adding its new layers to pool; None if they would not fit."""
        new = list({id(l): l for l in state if id(l) not in number}.values())
        if len(pool) + len(new) > max_layers:
            return None
        for layer in new:
            number[id(layer)] = len(pool)
            pool.append(layer)
        return [number[id(l)] for l in state]
    current = numbers(layers)
    if current is None:
        raise SessionError(f"session: {len(layers)} layers, more than a session file holds ({max_layers})")
    history = {}
    for name, states in (("undo", undo), ("redo", redo)):
        kept = []
        for state in reversed(list(states)[-MAX_HISTORY // 2:]):  # newest first, while they fit
            if not state or (ids := numbers(state)) is None:
                break
            kept.append(ids)
        history[name] = kept[::-1]
    manifest = {"format": SESSION_FORMAT, "version": SESSION_VERSION, "settings": settings.__dict__,
                "latent_channels": int(latent_channels),
                "layers": [{"prompt": l.prompt, "seed": check_seed(l.seed), "kind": l.kind} for l in pool],
                "state": current, **history}
    if model is not None:
        manifest["model"] = str(model)
    json.dumps(manifest)  # a field JSON cannot write fails here, before anything is written
    tensors = {}
    for i, layer in enumerate(pool):
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
    settings, layers, _, _ = load_session_history(pipe, folder)
    return settings, layers


def load_session_history(pipe, folder: str | Path) -> tuple[EditSettings, list[Layer], list, list]:
    """load_session's settings and layers, and the undo and redo states (lists of layers, oldest first;
    empty for a file of version 4 or older)."""
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
    entries = [_entry(e, i, version >= 5) for i, e in enumerate(entries)]
    states = _states(manifest, entries) if version >= 5 else {"state": list(range(len(entries))), "undo": [],
                                                              "redo": []}
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
    undo, redo = ([[layers[i] for i in ids] for ids in states[name]] for name in ("undo", "redo"))
    return settings, [layers[i] for i in states["state"]], undo, redo


def _states(manifest: dict, entries: list) -> dict[str, list]:
    """The current state and the undo/redo states of a version-5 manifest, each checked: layer numbers
    of the file, a background first and objects after it."""
    out = {}
    for name in ("state", "undo", "redo"):
        value = manifest.get(name)
        states = [value] if name == "state" else value
        if not isinstance(states, list) or len(states) > MAX_HISTORY:
            raise SessionError(f"{MANIFEST}.{name}: expected a list of layer numbers"
                               + ("" if name == "state" else f" for each of at most {MAX_HISTORY} states"))
        for k, ids in enumerate(states):
            where = f"{MANIFEST}.{name}" + ("" if name == "state" else f"[{k}]")
            if (not isinstance(ids, list) or not 1 <= len(ids) <= MAX_LAYERS
                    or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(entries) for i in ids)):
                raise SessionError(f"{where}: expected 1 to {MAX_LAYERS} layer numbers in 0..{len(entries) - 1}")
            kinds = [entries[i][2] for i in ids]
            if kinds[0] == "object" or any(kind != "object" for kind in kinds[1:]):
                raise SessionError(f"{where}: expected a background layer first and object layers after it")
        out[name] = value
    return out


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


def _entry(entry, i: int, pooled: bool = False) -> tuple[str, int, str]:
    """One layer's prompt, seed and kind. pooled (version 5): the layers of every state, so any kind
    anywhere (the states say the order); before: layer 0 the background, the others objects."""
    where = f"{MANIFEST}.layers[{i}]"
    if not isinstance(entry, dict):
        raise SessionError(f"{where}: expected an object, got {type(entry).__name__}")
    prompt, kind = entry.get("prompt"), entry.get("kind")
    if not isinstance(prompt, str):
        raise SessionError(f"{where}.prompt: expected text, got {type(prompt).__name__}")
    if pooled and kind not in KINDS:
        raise SessionError(f"{where}.kind: expected one of {list(KINDS)}, got {kind!r}")
    if not pooled and (kind not in KINDS or (kind == "object") != (i > 0)):
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
