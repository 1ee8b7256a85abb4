"""napari writer: a Labels layer as a NIfTI mask aligned with the scan it was drawn on.

The mask gets the affine, header and qform/sform codes of the image file it belongs to (kept in
the layer's metadata, see ``napari_dunet.layers``) and that file's voxel order, so it lines up
with the scan in FSL, ITK-SNAP or nibabel. 0/1 masks are written as uint8 0/1; masks with more
label values keep them (uint8, or uint16 above 255). The file is written to a temporary name
and renamed, so an existing file is never left half-written.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import InputError
from .io import is_nifti, save_mask, save_volume
from .layers import native_volume


def write_labels(path: str | os.PathLike, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Labels layer; returns ``[path]`` (napari's single-layer writer protocol)."""
    path = os.fspath(path)
    if not is_nifti(path):
        path += ".nii.gz"
    volume = native_volume(np.asarray(data), attributes.get("metadata"), attributes)
    low, high = (int(volume.data.min()), int(volume.data.max())) if volume.data.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise InputError(f"label values must lie between 0 and 65535 to be saved (found {low}..{high}).")
    if high <= 1:
        save_mask(volume.data, volume, path, overwrite=True)
    else:
        save_volume(volume.data, volume, path, overwrite=True,
                    dtype=np.uint8 if high <= 255 else np.uint16)
    return [path]
