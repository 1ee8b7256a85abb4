"""napari reader for NIfTI volumes (.nii, .nii.gz): T1 scans as Image layers, masks as Labels.

Placement, orientation and the metadata kept for saving are described in ``napari_dunet.layers``.
The first scan opened in a viewer is shown in axial slices, anterior up, the patient's right on
the right (neurological convention; ``show_axial``).
A file opens as Labels when its voxels are all 0 or 1, or when its name says it is a mask
(BIDS ``_mask``, ``lesion``, ``_label``, ``_seg``, ``_roi``) and its values are whole numbers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

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
    _axial_when_added([data[1]["metadata"]["path"] for data in layers])
    return layers


def show_axial(viewer: Any, radiological: bool = False) -> None:
    """Slice along world axis 2 (inferior-superior) with anterior up and the patient's right on
    the right (neurological convention; ``radiological``: on the left), for RAS+ layers such as
    those this plugin reads."""
    if viewer.dims.ndim != 3:
        return
    viewer.dims.order = (2, 1, 0)
    camera = getattr(viewer, "scene", viewer).camera  # napari >= 0.9 keeps it on the scene
    camera.orientation2d = ("up", "left" if radiological else "right")


def _axial_when_added(paths: list[str]) -> None:
    """Show the viewer's first 3D layers, when napari adds them (known by their file, as a
    sample renames them), in axial slices: napari's default view of a RAS+ volume is a
    sideways sagittal slice. A viewer that already shows 3D layers keeps the view its user
    chose."""
    import sys

    napari = sys.modules.get("napari")  # a script reading files without napari: nothing to do
    viewer = napari.current_viewer() if napari is not None else None
    if viewer is None or any(layer.ndim >= 3 for layer in viewer.layers):
        return

    def inserted(event: Any) -> None:
        if event.value.metadata.get("path") in paths:
            viewer.layers.events.inserted.disconnect(inserted)
            show_axial(viewer)

    viewer.layers.events.inserted.connect(inserted)
