"""One loader for every model Strata runs on: the embedded default, a local diffusers folder, or a hub id.

Hub ids stay real (users have internet); offline they fail with a message that names the embedded
default, instead of a stack of connection errors.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from diffusers import ControlNetModel, DiffusionPipeline, StableDiffusionPipeline

from attention_processors.cross_view import CrossViewProjections

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
EMBEDDED = "embedded"
EMBEDDED_MODEL = WEIGHTS_DIR / "world-sd"
EMBEDDED_CONTROLNET = WEIGHTS_DIR / "world-controlnet"
EMBEDDED_VIEW_PROJECTIONS = WEIGHTS_DIR / "world-crossview"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to use instead."""


def resolve_model(model: str | os.PathLike | None, embedded_path: Path = EMBEDDED_MODEL) -> str:
    """The path or hub id to load: the embedded default for None/"embedded", else the argument.

    A local path must be a diffusers folder; anything that is not an existing path is a hub id.
    """
    if model is None or str(model) == EMBEDDED:
        if not (embedded_path / "model_index.json").exists() and not (embedded_path / "config.json").exists():
            raise ModelLoadError(f"the embedded default model is missing at {embedded_path}; "
                                 "train it with `python -m training.train` or check out the repository's weights/")
        return str(embedded_path)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not ((path / "model_index.json").exists() or (path / "config.json").exists()):
            raise ModelLoadError(f"model: {path} is not a diffusers folder (no model_index.json or config.json); "
                                 f"pass a folder saved with save_pretrained, a hub id, or {EMBEDDED!r}")
        return str(path)
    if str(model).count("/") > 1 or str(model).startswith((".", "/", "~")):
        raise ModelLoadError(f"model: {model} does not exist; pass an existing diffusers folder, a hub id "
                             f"such as 'org/name', or {EMBEDDED!r} for the embedded default")
    return str(model)


def _offline_message(model: str, err: Exception) -> str:
    return (f"could not load {model!r} from the Hugging Face Hub ({type(err).__name__}). This machine looks "
            f"offline or the id does not exist; use the embedded default model ({EMBEDDED!r}, at "
            f"{EMBEDDED_MODEL}) or a local diffusers folder")


def check_device(device: str | torch.device | None) -> torch.device | None:
    """A device this machine has, or a ValueError naming the field (e.g. 'cuda' without a GPU)."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' is not available on this machine; use 'cpu'")
    return device


def parse_dtype(name: str | None) -> torch.dtype | None:
    """float32, float16 or bfloat16 by name (a command-line flag), or None."""
    if name is None:
        return None
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"dtype: expected one of {list(dtypes)}, got {name!r}")
    return dtypes[name]


def load_pipeline(model: str | os.PathLike | None = EMBEDDED, pipeline_class: type[DiffusionPipeline] = StableDiffusionPipeline,
                  device: str | torch.device | None = None, **kwargs) -> DiffusionPipeline:
    """Load a pipeline of pipeline_class from the embedded default, a local folder or a hub id.

    Weights load as float32 unless `dtype` says otherwise: the shipped files are fp16, and
    transformers would otherwise keep the text encoder in fp16 beside a float32 UNet. A pipeline
    class with a `required_scheduler` gets one made from the folder's scheduler config when the
    folder's is another kind (SD-1.5 ships PNDM), and the log says so. device: where it runs (moved
    there after loading, as `pipe.to(device)` would).
    """
    device = check_device(device)
    source = resolve_model(model)
    kwargs.setdefault("dtype", torch.float32)
    if not Path(source).exists():
        kwargs.setdefault("local_files_only", os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"))
    try:
        pipe = pipeline_class.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        if Path(source).exists():
            raise ModelLoadError(f"model: could not load the diffusers folder {source}: {err}") from err
        raise ModelLoadError(_offline_message(source, err)) from err
    required = getattr(pipeline_class, "required_scheduler", None)
    if required is not None and not isinstance(pipe.scheduler, required):
        logger.warning("model %s: its %s replaced by a %s made from the same config (%s needs one)", model,
                       type(pipe.scheduler).__name__, required.__name__, pipeline_class.__name__)
        pipe.scheduler = required.from_config(pipe.scheduler.config)
    return pipe if device is None else pipe.to(device)


def load_controlnet(model: str | os.PathLike | None = EMBEDDED, **kwargs) -> ControlNetModel:
    source = resolve_model(model, EMBEDDED_CONTROLNET)
    kwargs.setdefault("dtype", torch.float32)
    if not Path(source).exists():
        kwargs.setdefault("local_files_only", os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"))
    try:
        return ControlNetModel.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        if Path(source).exists():
            raise ModelLoadError(f"controlnet: could not load the diffusers folder {source}: {err}") from err
        raise ModelLoadError(_offline_message(source, err)) from err


def load_view_projections(model: str | os.PathLike | None = EMBEDDED, **kwargs) -> CrossViewProjections | None:
    """The driving pipeline's trained cross-view projections (`CrossViewProjections`): the embedded
    model's (None when it ships none), or a folder saved with `save_pretrained`; "none": None."""
    if model is not None and str(model) == "none":
        return None
    if model is None or str(model) == EMBEDDED:
        if not (EMBEDDED_VIEW_PROJECTIONS / "config.json").exists():
            return None
        model = EMBEDDED_VIEW_PROJECTIONS
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"projections: {str(model)!r} is not a folder saved by CrossViewProjections.save_pretrained "
                             f"(no config.json); pass such a folder, {EMBEDDED!r} or 'none'")
    kwargs.setdefault("dtype", torch.float32)
    try:
        return CrossViewProjections.from_pretrained(path, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"projections: could not load {path}: {err}") from err
