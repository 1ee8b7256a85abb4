"""Checkpoints: safetensors weights with JSON metadata in the same file.

Loading never unpickles anything. The metadata names the model (a key of ``models.MODELS``),
the preprocessing it expects, its threshold and where it came from.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .errors import CheckpointError, DunetError
from .io import atomic_write
from .models import build_model
from .preprocessing import DEFAULT_SCHEME, INPUT_SIZE, STACK_OFFSETS

META_KEY = "napari_dunet"
FORMAT_VERSION = 1


def default_metadata(model_name: str, **extra: Any) -> dict[str, Any]:
    """Metadata for a checkpoint of ``model_name``; ``extra`` keys are added or override."""
    meta = {
        "format": FORMAT_VERSION,
        "model": model_name,
        "threshold": 0.5,
        "preprocessing": {"scheme": DEFAULT_SCHEME, "input_size": INPUT_SIZE,
                          "stack_offsets": list(STACK_OFFSETS),
                          "intensity": "head voxels' percentile 0.5 -> 0, 99.5 -> 1, clipped"},
        "provenance": {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "package_version": __version__},
    }
    meta.update(extra)
    return meta


def save_checkpoint(path: str | os.PathLike, model: nn.Module, metadata: dict[str, Any], *,
                    half: bool = False, overwrite: bool = True) -> Path:
    """Write ``model``'s weights and buffers with ``metadata`` (atomically).

    ``half`` stores floating tensors as float16 (they are loaded back as float32).
    """
    if "model" not in metadata:
        raise CheckpointError("Checkpoint metadata needs a 'model' name.")
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value.contiguous()
    meta = {META_KEY: json.dumps(metadata)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), overwrite)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's metadata, without loading the weights."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc}).") from exc
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without napari-dunet metadata.")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc}).") from exc


def load_checkpoint(path: str | os.PathLike, model_name: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the checkpoint's model, load its weights (float32) and return ``(model, metadata)``.

    ``model_name``, when given, must match the checkpoint's model. Every failure (missing,
    corrupt, wrong model, wrong tensor names or shapes) raises ``CheckpointError``.
    """
    path = _existing(path)
    meta = read_metadata(path)
    name = meta.get("model")
    if model_name is not None and name != model_name:
        raise CheckpointError(f"{path}: checkpoint is for model {name!r}, not {model_name!r}.")
    try:
        model = build_model(name)
    except DunetError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the weights ({exc}).") from exc
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit model {name!r} ({first}).") from exc
    return model.to(device).eval(), meta


def average_checkpoints(paths: list[str | os.PathLike]) -> tuple[nn.Module, dict[str, Any]]:
    """The mean of several checkpoints of one model (e.g. the last epochs of a run), as
    ``(model, metadata)``: floating tensors averaged, the others (BatchNorm's step counts) and
    the metadata taken from the last, with the averaged files recorded under ``averaged``. One
    checkpoint comes back as it is, its metadata untouched (a copy keeps its own record).
    Every checkpoint must be of the same model (``CheckpointError`` otherwise)."""
    if not paths:
        raise CheckpointError("Give at least one checkpoint to average.")
    model, meta = load_checkpoint(paths[-1])
    if len(paths) == 1:
        return model, meta
    states = [load_checkpoint(p, meta["model"])[0].state_dict() for p in paths[:-1]]
    states.append(model.state_dict())
    mean = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
            for k, v in states[-1].items()}
    model.load_state_dict(mean)
    return model, {**meta, "averaged": [Path(p).name for p in paths]}


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file (.safetensors) in it.")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    return path
