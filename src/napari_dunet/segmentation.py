"""Segmenting a case, the one path that ``dunet segment``, ``dunet demo``, the "Segment lesion"
panel and the benchmarks share: predict, threshold, and (``write_outputs``) save aligned files.

``segment`` takes the checkpoint's thresholds unless the options give them, runs the whole volume
or a slice range with progress and cancel, and runs on the CPU, with a note, when the GPU runs
out of memory even one stack at a time. Nothing here knows about Qt.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from . import inference
from .errors import InputError
from .geometry import ras_ornt
from .inference import CancelCallback, ProgressCallback
from .io import Volume, load_volume, save_mask, save_volume, strip_nifti_suffix
from .options import SegmentOptions
from .preprocessing import DEFAULT_SCHEME


@dataclass
class SegmentationResult:
    volume: Volume
    probability: np.ndarray  # float32, the volume's native grid
    mask: np.ndarray  # uint8, ``threshold_mask(probability, threshold, seed_threshold)``
    threshold: float  # the one used: the options', else the checkpoint's
    lesion_ml: float
    slice_range: tuple[int, int] | None = None
    seed_threshold: float | None = None  # the one used (None: plain thresholding)
    notes: list[str] = field(default_factory=list)  # for the user (e.g. the CPU fallback)
    mask_path: Path | None = None
    prob_path: Path | None = None


def threshold_mask(probability: np.ndarray, threshold: float = 0.5,
                   seed_threshold: float | None = None) -> np.ndarray:
    """Binary uint8 mask: voxels with probability >= ``threshold``; with a ``seed_threshold``
    above it (hysteresis), only the regions of such voxels (6-connected in 3D) that hold a seed,
    a voxel with probability >= ``seed_threshold``: a confident lesion keeps its less certain
    rim, and a region with no confident voxel is dropped."""
    mask = probability >= threshold
    if seed_threshold is None or seed_threshold <= threshold:
        return mask.astype(np.uint8)
    regions, n = ndi.label(mask)
    seeded = np.zeros(n + 1, np.uint8)  # per region; the seeds lie in regions (seed > threshold)
    seeded[regions[probability >= seed_threshold]] = 1
    return seeded[regions]


def lesion_volume_ml(mask: np.ndarray, volume: Volume) -> float:
    return float(np.count_nonzero(mask)) * volume.voxel_volume_ml


def checkpoint_threshold(metadata: Mapping[str, Any]) -> float:
    """The threshold a checkpoint recommends (0.5 when its metadata has none)."""
    return float(metadata.get("threshold", 0.5))


def checkpoint_seed_threshold(metadata: Mapping[str, Any]) -> float | None:
    """The seed threshold a checkpoint recommends (``threshold_mask``; None: plain)."""
    seed = metadata.get("seed_threshold")
    return None if seed is None else float(seed)


def checkpoint_preprocessing(metadata: Mapping[str, Any] | None) -> str:
    """The preprocessing scheme a checkpoint's model expects: the one it records; ``legacy``
    for checkpoints written before schemes existed; the default for a model without one."""
    if metadata is None:
        return DEFAULT_SCHEME
    return metadata.get("preprocessing", {}).get("scheme", "legacy")


def segment(image: str | os.PathLike | Volume, model: nn.Module,
            metadata: Mapping[str, Any] | None = None,
            options: SegmentOptions = SegmentOptions(), *,
            progress: ProgressCallback | None = None,
            cancel: CancelCallback | None = None) -> SegmentationResult:
    """Segment one volume with ``model`` (its checkpoint ``metadata`` gives the threshold and
    the preprocessing, unless the options name them).

    Raises ``Cancelled`` when ``cancel()`` returns True, ``DunetError`` for unusable inputs.
    """
    volume = image if isinstance(image, Volume) else load_volume(image)
    options.check()
    try:
        return _segment(volume, model, metadata, options, progress, cancel)
    except MemoryError as exc:
        raise out_of_memory(volume, options.batch_size) from exc
    except InputError as exc:  # name the scan, so a cohort's log says which one
        if volume.path is None or str(volume.path) in str(exc):
            raise
        raise InputError(f"{volume.path}: {exc}") from exc


def _segment(volume: Volume, model: nn.Module, metadata: Mapping[str, Any] | None,
             options: SegmentOptions, progress: ProgressCallback | None,
             cancel: CancelCallback | None) -> SegmentationResult:
    if progress is not None:
        progress = in_scan_slices(progress, volume, options.slice_range)
    threshold = (checkpoint_threshold(metadata or {}) if options.threshold is None
                 else options.threshold)
    seed = (checkpoint_seed_threshold(metadata or {}) if options.seed_threshold is None
            else options.seed_threshold)
    seed = seed if seed is not None and seed > threshold else None
    device = inference.resolve_device(options.device)
    scheme = options.preprocessing or checkpoint_preprocessing(metadata)
    run = dataclasses.replace(options, device=str(device), threshold=threshold,
                              seed_threshold=seed, preprocessing=scheme)
    notes = []
    while True:
        try:
            probability = inference.predict_volume(volume, model, run, progress=progress,
                                                   cancel=cancel)
            break
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            message = str(exc).lower()
            if run.device == "cpu" and "can't allocate memory" in message:
                raise MemoryError(message) from exc
            if run.device == "cpu" or "out of memory" not in message:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            notes.append(f"The {device.type.upper()} device ran out of memory, so this run used "
                         "the CPU instead (slower).")
            run = dataclasses.replace(run, device="cpu")
    mask = threshold_mask(probability, threshold, seed)
    return SegmentationResult(volume, probability, mask, threshold,
                              lesion_volume_ml(mask, volume), options.slice_range, seed, notes)


def in_scan_slices(progress: ProgressCallback, volume: Volume,
                   slice_range: tuple[int, int] | None) -> ProgressCallback:
    """``progress`` counted in the scan's own axial slices (the network's slices are thinner
    for thick-slice scans), so a user reads "12 / 40 slices" of a 40-slice scan."""
    axial = int(np.flatnonzero(ras_ornt(volume.affine)[:, 0] == 2)[0])
    total = (slice_range[1] - slice_range[0]) if slice_range else volume.data.shape[axial]

    def report(done: int, steps: int) -> None:
        progress(min(total, round(done * total / max(steps, 1))), total)

    return report


def out_of_memory(volume: Volume | str | os.PathLike, batch_size: int,
                  shape: tuple[int, ...] | None = None) -> InputError:
    """The error for a scan that did not fit in memory: what it needs and what to try.

    The network's part was measured on a 2-core CPU (``dunet segment``, peak resident memory,
    scans of 1 to 78 million voxels): about 0.6 GB plus 0.07 GB per stack of the batch.
    """
    if isinstance(volume, Volume):
        source, shape = volume.path or "the scan", volume.data.shape
    else:
        source = volume
    size = "" if shape is None else (f" ({'x'.join(map(str, shape))} voxels, "
                                     f"{np.prod(shape) * 4 / 1e9:.1f} GB as float32)")
    return InputError(f"{source}: not enough memory to segment this scan{size}; the network "
                      f"needs about {0.6 + 0.07 * batch_size:.1f} GB more at batch size "
                      f"{batch_size}: close other programs, pass --batch-size 4, or crop the "
                      f"field of view.")


def output_paths(output_dir: str | os.PathLike, name: str, save_prob: bool = False
                 ) -> tuple[Path, Path | None]:
    """Where ``write_outputs`` puts ``<name>_mask.nii.gz`` (and ``<name>_prob.nii.gz``)."""
    out = Path(output_dir)
    return out / f"{name}_mask.nii.gz", (out / f"{name}_prob.nii.gz" if save_prob else None)


def write_outputs(result: SegmentationResult, output_dir: str | os.PathLike,
                  name: str | None = None, *, save_prob: bool = False,
                  overwrite: bool = False) -> SegmentationResult:
    """Write the mask (and probability map) aligned with the scan; sets the result's paths."""
    name = name or strip_nifti_suffix(result.volume.path or "volume")
    mask_path, prob_path = output_paths(output_dir, name, save_prob)
    result.mask_path = save_mask(result.mask, result.volume, mask_path, overwrite=overwrite)
    if prob_path is not None:
        result.prob_path = save_volume(result.probability, result.volume, prob_path,
                                       dtype=np.float32, overwrite=overwrite)
    return result
