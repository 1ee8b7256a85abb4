"""Resumable training state, in safetensors + JSON only (nothing is ever pickled).

Beside the model checkpoint ``NAME.safetensors`` (the weights to segment with, readable by
``checkpoint.load_checkpoint``) training keeps ``NAME.state.safetensors``:

* tensors ``model.<key>``: the model's ``state_dict()`` after the last completed epoch;
* tensors ``optimizer.<param index>.<name>``: every tensor of the optimizer state
  (Adam ``exp_avg``, ``exp_avg_sq``, ``step``; SGD ``momentum_buffer``);
* metadata key ``napari_dunet_state``: JSON with ``format``, ``epoch`` (completed epochs),
  ``model``, ``config``, ``history`` (per-epoch metrics), ``best`` and ``stale_epochs`` (early
  stopping), ``optimizer.param_groups`` and the optimizer's non-tensor state values.

Both files are written atomically (temporary file, then rename), so a failed write never
damages the previous version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from ..io import atomic_write

STATE_KEY = "napari_dunet_state"
STATE_FORMAT = 1
SUFFIX = ".safetensors"


def state_path(checkpoint: str | os.PathLike) -> Path:
    """``dir/NAME.safetensors`` -> ``dir/NAME.state.safetensors``."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name[:-len(SUFFIX)] if checkpoint.name.endswith(SUFFIX) else checkpoint.name
    return checkpoint.with_name(stem + ".state" + SUFFIX)


def save_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
               info: dict[str, Any]) -> Path:
    """Write model, optimizer and ``info`` (JSON-serialisable) to ``path`` atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in opt["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    doc = dict(info, format=STATE_FORMAT,
               optimizer={"param_groups": opt["param_groups"], "scalars": scalars})
    meta = {STATE_KEY: json.dumps(doc)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), overwrite=True)


def read_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(model state_dict, optimizer state_dict, info)`` from a state file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from.")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(STATE_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(raw) if raw is not None else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable training state ({exc}).") from exc
    if info is None or info.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a napari-dunet training state file.")
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in info["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer = {"state": state, "param_groups": info["optimizer"]["param_groups"]}
    return model, optimizer, info
