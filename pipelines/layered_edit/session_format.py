"""The saved-session format: a folder with session.json (settings, layer prompts and seeds) and
memory.safetensors (masks, trajectories, images). Loads back bit-exact; version 2 (which also kept
prompt embeddings) still loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipelines.layered_edit.settings import EditSettings, Layer

SESSION_FORMAT = "strata-layered-session"
SESSION_VERSION = 3  # 2: layers also keep their edit and object masks; 3: no prompt embeddings (re-encoded)
READABLE_VERSIONS = (2, 3)  # a version-2 session's embeddings are ignored


class SessionError(ValueError):
    """A session folder that is missing, corrupt or not a Strata session."""




def save_session(folder: str | Path, settings: EditSettings, layers: list[Layer], latent_channels: int) -> Path:
    """session.json (settings, layer prompts and seeds) + memory.safetensors (rough, edit and object
    masks, trajectories, images). Loads back bit-exact."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, layer in enumerate(layers):
        tensors[f"layer{i}.trajectory"] = layer.trajectory.detach().cpu().contiguous()
        tensors[f"layer{i}.image"] = torch.from_numpy(np.ascontiguousarray(layer.image))
        for name, mask in (("mask", layer.rough_mask), ("edit_mask", layer.edit_mask), ("object_mask", layer.object_mask)):
            tensors[f"layer{i}.{name}"] = torch.from_numpy(np.ascontiguousarray(mask.astype(np.uint8)))
    save_file(tensors, folder / "memory.safetensors")
    manifest = {"format": SESSION_FORMAT, "version": SESSION_VERSION, "settings": settings.__dict__,
                "latent_channels": int(latent_channels),
                "layers": [{"prompt": l.prompt, "seed": l.seed, "kind": l.kind} for l in layers]}
    (folder / "session.json").write_text(json.dumps(manifest, indent=1))
    return folder


def load_session(pipe, folder: str | Path) -> tuple[EditSettings, list[Layer]]:
    """The settings and layers of a saved session, checked against the pipeline's latent size."""
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
    if manifest.get("version") not in READABLE_VERSIONS:
        raise SessionError(f"{manifest_path}: session version {manifest.get('version')!r}; this Strata reads "
                           f"versions {', '.join(map(str, READABLE_VERSIONS))}")
    try:
        settings = EditSettings(**manifest["settings"]).sized_for(pipe)
        tensors = load_file(memory_path)
        entries = manifest["layers"]
    except (SafetensorError, OSError, TypeError, KeyError, ValueError) as err:
        raise SessionError(f"{folder}: corrupt session ({type(err).__name__}: {err})") from None
    h, w = (settings.height // pipe.vae_scale_factor, settings.width // pipe.vae_scale_factor)
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
        layers.append(Layer(str(entry["prompt"]), int(entry["seed"]), tensors[f"layer{i}.mask"].numpy().astype(bool),
                            str(entry["kind"]), tensors[f"layer{i}.trajectory"].to(pipe.device),
                            tensors[f"layer{i}.image"].numpy(),
                            tensors[f"layer{i}.edit_mask"].numpy().astype(bool),
                            tensors[f"layer{i}.object_mask"].numpy().astype(bool)))
    if not layers:
        raise SessionError(f"{manifest_path}: the session has no layers")
    return settings, layers

