"""napari reader for NIfTI volumes (.nii, .nii.gz): T1 scans as Image layers, masks as Labels.

Placement, orientation and the metadata kept for saving are described in ``napari_dunet.layers``.
A file opens as Labels when its voxels are all 0 or 1, or when its name says it is a mask
(BIDS ``_mask``, ``lesion``, ``_label``, ``_seg``, ``_roi``) and its values are whole numbers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

from .io import is_nifti, load_volume
from .layers import is_label_data, layer_data, oblique_degrees

PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[tuple]] | None:
    """``read_nifti`` when every path is a NIfTI file, else None (another reader may take it)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if paths and all(is_nifti(p) and os.path.isfile(p) for p in paths):
        return read_nifti
    return None


def read_nifti(path: PathOrPaths) -> list[tuple]:
    """One layer per file; raises ``InputError`` (a sentence for the user) for unusable files."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers = []
    for p in paths:
        volume = load_volume(p)
        angle = oblique_degrees(volume.affine)
        if angle > 0.5:
            warnings.warn(f"{os.path.basename(p)} is oblique ({angle:.1f} degrees): it is shown on "
                          "its voxel grid, straightened; saved masks keep its exact affine.",
                          stacklevel=2)
        kind = "labels" if is_label_data(volume.data, p) else "image"
        layers.append(layer_data(volume, kind))
    return layers
