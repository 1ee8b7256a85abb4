"""Segmenting a case, the one path that ``dunet segment``, ``dunet demo``, the "Segment lesion"
panel and the benchmarks share: predict, threshold, and (``write_outputs``) save aligned files.

``segment`` takes the checkpoint's thresholds unless the options give them, runs the whole volume
or a slice range with progress and cancel, and runs on the CPU, with a note, when the GPU runs
out of memory even one stack at a time. ``segment_slice`` masks one axial slice as the whole
volume's run masks it (the seed rule looks past the slice). Nothing here knows about Qt.
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
from .preprocessing import DEFAULT_SCHEME, SliceGeometry

#: axial slices each side of a current slice that the network first runs on (``segment_slice``):
#: on the bundled sample with its weights, 3 slices decided 2 of 3 lesion slices tried, and took
#: 2-3x the time of the slice alone (9 slices: 4-9x; 2-core Intel Xeon, benchmarks noisy)
SLICE_MARGIN = 1


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
    context: tuple[int, int] | None = None  # ``segment_slice``: the axial slices the network ran on
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
    return _reported(volume, options, lambda: _segment(volume, model, metadata, options,
                                                       progress, cancel))


def segment_slice(volume: Volume, model: nn.Module, metadata: Mapping[str, Any] | None,
                  options: SegmentOptions, index: int, *,
                  progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
                  known: tuple[np.ndarray, tuple[int, int]] | None = None) -> SegmentationResult:
    """The mask of axial slice ``index`` (RAS+ order) exactly as ``segment`` marks it on the
    whole volume: the seed rule keeps a region crossing the slice when it holds a seed anywhere
    in 3D. The network runs on the slice and ``SLICE_MARGIN`` slices each side, widened
    (doubling) on each side where a region crossing the slice holds no seed yet and reaches the
    edge of what was run. ``known``: ``(probability, context)`` of an earlier run of the same
    model on this volume (a whole volume's map with context ``(0, n)``), whose slices are not
    run again. The result's probability holds the slices run (its ``context``), zero elsewhere;
    its mask only the slice (``slice_mask``)."""
    return _reported(volume, options, lambda: _segment_slice(
        volume, model, metadata, options, index, progress, cancel, known))


def _reported(volume: Volume, options: SegmentOptions, run: Any) -> SegmentationResult:
    """``run()`` with its errors as the user reads them: out of memory, the scan named."""
    options.check()
    try:
        return run()
    except MemoryError as exc:
        raise out_of_memory(volume, options.batch_size) from exc
    except InputError as exc:  # name the scan, so a cohort's log says which one
        if volume.path is None or str(volume.path) in str(exc):
            raise
        raise InputError(f"{volume.path}: {exc}") from exc


def _run_options(metadata: Mapping[str, Any] | None, options: SegmentOptions) -> SegmentOptions:
    """``options`` with the thresholds, device and preprocessing a run uses filled in (the
    seed None unless above the threshold)."""
    threshold = (checkpoint_threshold(metadata or {}) if options.threshold is None
                 else options.threshold)
    seed = (checkpoint_seed_threshold(metadata or {}) if options.seed_threshold is None
            else options.seed_threshold)
    seed = seed if seed is not None and seed > threshold else None
    device = inference.resolve_device(options.device)
    scheme = options.preprocessing or checkpoint_preprocessing(metadata)
    return dataclasses.replace(options, device=str(device), threshold=threshold,
                               seed_threshold=seed, preprocessing=scheme)


def _segment(volume: Volume, model: nn.Module, metadata: Mapping[str, Any] | None,
             options: SegmentOptions, progress: ProgressCallback | None,
             cancel: CancelCallback | None) -> SegmentationResult:
    if progress is not None:
        progress = in_scan_slices(progress, volume, options.slice_range)
    run, notes = _run_options(metadata, options), []
    probability = _predict(volume, model, run, notes, progress, cancel)
    mask = threshold_mask(probability, run.threshold, run.seed_threshold)
    return SegmentationResult(volume, probability, mask, run.threshold,
                              lesion_volume_ml(mask, volume), options.slice_range,
                              run.seed_threshold, notes)


def _predict(volume: Volume, model: nn.Module, run: SegmentOptions, notes: list[str],
             progress: ProgressCallback | None, cancel: CancelCallback | None) -> np.ndarray:
    """``inference.predict_volume``; a GPU out of memory even one stack at a time: the CPU,
    with a note in ``notes`` (and ``run`` on the CPU from then on)."""
    device = run.device
    while True:
        try:
            return inference.predict_volume(volume, model, run, progress=progress,
                                            cancel=cancel)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            message = str(exc).lower()
            if run.device == "cpu" and "can't allocate memory" in message:
                raise MemoryError(message) from exc
            if run.device == "cpu" or "out of memory" not in message:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            notes.append(f"The {torch.device(device).type.upper()} device ran out of memory, so "
                         "this run used the CPU instead (slower).")
            run = dataclasses.replace(run, device="cpu")


def _segment_slice(volume: Volume, model: nn.Module, metadata: Mapping[str, Any] | None,
                   options: SegmentOptions, index: int, progress: ProgressCallback | None,
                   cancel: CancelCallback | None,
                   known: tuple[np.ndarray, tuple[int, int]] | None) -> SegmentationResult:
    geometry = SliceGeometry.for_volume(volume.data.shape, volume.affine)
    n, index = geometry.n_slices, int(index)
    if not 0 <= index < n:
        raise InputError(f"axial slice {index} is outside 0..{n - 1}.")
    run, notes = _run_options(metadata, dataclasses.replace(options, slice_range=None)), []
    if known is None:
        probability, done = np.zeros(volume.data.shape[:3], np.float32), (index, index)
    else:
        probability, done = known[0].copy(), known[1]
    wanted = (max(0, index - SLICE_MARGIN), min(n, index + SLICE_MARGIN + 1))
    while True:
        wanted = (min(wanted[0], done[0]), max(wanted[1], done[1]))
        pieces = [p for p in ((wanted[0], done[0]), (done[1], wanted[1])) if p[0] < p[1]]
        if done[0] == done[1]:
            pieces = [wanted]
        total, offset = sum(b - a for a, b in pieces), 0
        for piece in pieces:
            report = None if progress is None else in_scan_slices(
                lambda d, _, o=offset: progress(o + d, total), volume, piece)
            part = _predict(volume, model, dataclasses.replace(run, slice_range=piece), notes,
                            report, cancel)
            at = geometry.slab(*piece)[1]
            probability[at] = part[at]
            offset += piece[1] - piece[0]
        done = wanted
        mask, sides = _slice_mask(probability, geometry, index, done, run.threshold,
                                  run.seed_threshold)
        if not any(sides):
            break
        grow = done[1] - done[0]
        wanted = (max(0, done[0] - grow) if sides[0] else done[0],
                  min(n, done[1] + grow) if sides[1] else done[1])
    return SegmentationResult(volume, probability, mask, run.threshold,
                              lesion_volume_ml(mask, volume), (index, index + 1),
                              run.seed_threshold, notes, context=done)


def slice_mask(probability: np.ndarray, volume: Volume, index: int, context: tuple[int, int],
               threshold: float, seed_threshold: float | None = None) -> np.ndarray | None:
    """The mask (``threshold_mask``) of axial slice ``index`` alone, zero elsewhere, from a
    map whose axial slices ``context`` are known; None when those slices cannot decide it (a
    region crossing the slice holds no seed in them and reaches an edge of them short of the
    volume's): ``segment_slice`` then runs more slices."""
    geometry = SliceGeometry.for_volume(volume.data.shape, volume.affine)
    mask, sides = _slice_mask(probability, geometry, index, context, threshold,
                              seed_threshold)
    return None if any(sides) else mask


def _slice_mask(probability: np.ndarray, geometry: SliceGeometry, index: int,
                context: tuple[int, int], threshold: float, seed: float | None
                ) -> tuple[np.ndarray, tuple[bool, bool]]:
    """``slice_mask``'s mask, and whether the regions that decide it run on past the lower
    and the upper end of ``context``."""
    lo, hi = context
    known = probability[geometry.slab(lo, hi)[1]]
    slab = dataclasses.replace(geometry, native_shape=known.shape)

    def at(i: int) -> tuple[slice, ...]:  # axial slice i of the volume, within ``known``
        return slab.slab(i - lo, i - lo + 1)[1]

    mask = np.zeros(probability.shape, np.uint8)
    kept = threshold_mask(known, threshold, seed)[at(index)]
    mask[geometry.slab(index, index + 1)[1]] = kept
    if seed is None or seed <= threshold:
        return mask, (False, False)
    regions = ndi.label(known >= threshold)[0]
    crossing = np.unique(regions[at(index)][kept == 0])
    undecided = crossing[crossing > 0]  # regions crossing the slice that hold no seed yet
    if not undecided.size:
        return mask, (False, False)
    return mask, tuple(bool(end != edge and np.isin(regions[at(end)], undecided).any())
                       for end, edge in ((lo, 0), (hi - 1, geometry.n_slices - 1)))


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
