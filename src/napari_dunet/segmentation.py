"""One case end to end: read a T1 NIfTI, predict, threshold, write aligned mask (and map)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .inference import CancelCallback, Precision, ProgressCallback, predict_volume
from .preprocessing import DEFAULT_SCHEME
from .io import Volume, load_volume, save_mask, save_volume, strip_nifti_suffix


@dataclass
class SegmentationResult:
    volume: Volume
    probability: np.ndarray
    mask: np.ndarray
    lesion_ml: float
    mask_path: Path | None = None
    prob_path: Path | None = None


def threshold_mask(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary uint8 mask: voxels with probability >= threshold."""
    return (probability >= threshold).astype(np.uint8)


def lesion_volume_ml(mask: np.ndarray, volume: Volume) -> float:
    return float(np.count_nonzero(mask)) * volume.voxel_volume_ml


def segment_case(image: str | os.PathLike | Volume, model: nn.Module,
                 output_dir: str | os.PathLike | None = None, *, threshold: float = 0.5,
                 device: str | torch.device = "auto", batch_size: int = 16,
                 save_prob: bool = False, overwrite: bool = False, name: str | None = None,
                 progress: ProgressCallback | None = None,
                 cancel: CancelCallback | None = None,
                 precision: Precision = "auto", scheme: str = DEFAULT_SCHEME) -> SegmentationResult:
    """Segment one volume; with ``output_dir`` write ``<name>_mask.nii.gz`` (and ``_prob``).

    ``precision``, ``scheme``: see ``inference.predict_volume``.
    """
    volume = image if isinstance(image, Volume) else load_volume(image)
    prob = predict_volume(volume, model, device=device, batch_size=batch_size,
                          progress=progress, cancel=cancel, precision=precision,
                          threshold=threshold, scheme=scheme)
    mask = threshold_mask(prob, threshold)
    result = SegmentationResult(volume, prob, mask, lesion_volume_ml(mask, volume))
    if output_dir is not None:
        name = name or strip_nifti_suffix(volume.path or "volume")
        out = Path(output_dir)
        result.mask_path = save_mask(mask, volume, out / f"{name}_mask.nii.gz", overwrite=overwrite)
        if save_prob:
            result.prob_path = save_volume(prob, volume, out / f"{name}_prob.nii.gz",
                                           dtype=np.float32, overwrite=overwrite)
    return result
