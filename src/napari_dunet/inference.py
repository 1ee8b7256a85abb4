"""Whole-volume inference: a native-grid probability map from a T1 volume.

Long runs report ``progress(done, total)`` and stop when ``cancel()`` returns True (raising
``Cancelled``); nothing here knows about Qt.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import Cancelled, DunetError
from .io import Volume
from .preprocessing import SliceGeometry, make_stacks, normalize_intensity

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    name = str(name).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DunetError("CUDA was requested but no CUDA GPU is available; use --device cpu or auto.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DunetError("MPS was requested but is not available on this machine; use cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DunetError(f"Unknown device {name!r}; use auto, cpu, cuda or mps.") from exc


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on GPUs (bf16 where supported, else fp16); full precision on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def predict_slices(model: nn.Module, stacks: torch.Tensor, device: torch.device,
                   batch_size: int = 16, progress: ProgressCallback | None = None,
                   cancel: CancelCallback | None = None) -> torch.Tensor:
    """Run ``model`` over ``(N, 4, H, W)`` stacks in batches; returns ``(N, H, W)`` float32 on CPU.

    On a CUDA out-of-memory error the batch is halved and retried, down to one stack.
    """
    out = torch.empty(stacks.shape[0], *stacks.shape[2:], dtype=torch.float32)
    done = 0
    with torch.inference_mode():
        while done < len(stacks):
            if cancel is not None and cancel():
                raise Cancelled("Segmentation cancelled.")
            batch = stacks[done:done + batch_size].to(device, non_blocking=True)
            try:
                with autocast_for(device):
                    probs = model(batch)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                continue
            out[done:done + len(batch)] = probs[:, 0].float().cpu()
            done += len(batch)
            if progress is not None:
                progress(done, len(stacks))
    return out


def predict_volume(volume: Volume, model: nn.Module, *, device: str | torch.device = "auto",
                   batch_size: int = 16, slice_range: tuple[int, int] | None = None,
                   progress: ProgressCallback | None = None,
                   cancel: CancelCallback | None = None) -> np.ndarray:
    """Probability map (float32, the volume's native shape and orientation) of lesion per voxel.

    ``slice_range`` = ``(start, stop)`` limits the work to those axial slices (RAS+ order,
    inferior to superior, see ``SliceGeometry.axial_index``); other slices get probability 0.
    """
    device = resolve_device(device)
    geometry = SliceGeometry.for_volume(volume.data.shape, volume.affine)
    slices = geometry.forward(normalize_intensity(volume.data))
    start, stop = slice_range or (0, geometry.n_slices)
    if not 0 <= start < stop <= geometry.n_slices:
        raise DunetError(f"slice range {start}..{stop} is outside 0..{geometry.n_slices}.")
    model = model.to(device).eval()
    probs = predict_slices(model, make_stacks(slices, range(start, stop)), device, batch_size,
                           progress, cancel)
    maps = torch.zeros_like(slices)
    maps[start:stop] = probs
    return geometry.inverse(maps)
