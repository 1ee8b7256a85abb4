"""NIfTI volumes <-> napari layer data, without Qt or torch.

How a scan is shown: its voxels are reoriented to the closest RAS+ order (axis 0 runs left to
right, axis 1 posterior to anterior, axis 2 inferior to superior) by axis swaps and flips only,
never resampled, and placed with ``scale`` = voxel size in mm and ``translate`` = the world
position (mm) of the first voxel. For the usual axis-aligned scan the napari world is then
exactly the NIfTI world (scanner/template RAS+ mm). An oblique scan (rotated voxel axes) is shown
on its own voxel grid, straightened to the closest anatomical axes, as ITK-SNAP and MRIcroGL do:
napari cannot slice a rotated volume in 2D, and the rotation is kept in the metadata.

Every layer made here carries the file's affine, header, source path and reorientation in its
``metadata``, so a mask painted on it is written back in the file's own voxel order with the
file's affine, header and qform/sform codes (``native_volume``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import nibabel.orientations as nio
import numpy as np

from .errors import InputError
from .geometry import ras_ornt, voxel_sizes
from .io import Volume, is_mask_name, strip_nifti_suffix

NIFTI_KEYS = ("affine", "header", "path", "native_shape", "to_display")
#: Labels colours: the network's lesion red, a current-slice preview blue, a mask opened from a
#: file (a manual tracing, a saved correction) green, as in the overlay figures; where red lies
#: over green napari shows a yellow-brown, which the preview must not resemble
PREDICTION_COLORS = {0: "transparent", 1: "#ff4040", None: "#ff4040"}
PREVIEW_COLORS = {0: "transparent", 1: "#40a0ff", None: "#40a0ff"}
TRACING_COLORS = {0: "transparent", 1: "#33ff33", None: "#33ff33"}


def to_display_ornt(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the file's voxel axes to the closest RAS+ axes."""
    return ras_ornt(affine)


def invert_ornt(transform: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``transform``."""
    inverse = np.empty_like(transform)
    for axis, (new_axis, flip) in enumerate(np.asarray(transform)):
        inverse[int(new_axis)] = (axis, flip)
    return inverse


def nifti_metadata(volume: Volume) -> dict[str, Any]:
    """Layer metadata that lets a layer be written back exactly like ``volume``'s file."""
    return {"affine": np.array(volume.affine, dtype=np.float64),
            "header": volume.header.copy(),
            "path": str(volume.path) if volume.path is not None else None,
            "native_shape": tuple(int(s) for s in volume.data.shape[:3]),
            "to_display": to_display_ornt(volume.affine)}


def has_nifti_metadata(metadata: Mapping[str, Any] | None) -> bool:
    return bool(metadata) and all(key in metadata for key in NIFTI_KEYS)


def display_affine(metadata: Mapping[str, Any]) -> np.ndarray:
    """The affine of the displayed (reoriented) voxel array."""
    shape = metadata["native_shape"]
    return metadata["affine"] @ nio.inv_ornt_aff(metadata["to_display"], shape)


def oblique_degrees(affine: np.ndarray) -> float:
    """Largest angle between a voxel axis and the nearest world axis (0 for axis-aligned)."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    cosines = np.abs(m).max(axis=0) / np.where(norms > 0, norms, 1)
    return float(np.degrees(np.arccos(np.clip(cosines, -1, 1))).max())


def placement(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``scale``/``translate`` (mm) of the displayed array; the world is RAS+ mm."""
    affine = display_affine(metadata)
    return {"scale": voxel_sizes(affine),
            "translate": tuple(float(v) for v in affine[:3, 3]),
            "units": ("mm", "mm", "mm")}


def layer_data(volume: Volume, kind: str = "image", name: str | None = None,
               **kwargs: Any) -> tuple[np.ndarray, dict[str, Any], str]:
    """A napari ``LayerData`` tuple (data, kwargs, kind) for a volume; ``kind`` image or labels."""
    metadata = nifti_metadata(volume)
    data = nio.apply_orientation(np.asarray(volume.data), metadata["to_display"])
    layer_kwargs = {"name": name or strip_nifti_suffix(volume.path or "volume"),
                    "metadata": metadata, **placement(metadata)}
    if kind == "image":
        layer_kwargs.update(colormap="gray", contrast_limits=contrast_limits(data))
    else:
        data = as_label_array(data)
        layer_kwargs.update(opacity=0.6, colormap=TRACING_COLORS)
    layer_kwargs.update(kwargs)
    return np.ascontiguousarray(data), layer_kwargs, kind


def contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Display window: 0.5th to 99.5th percentile of the voxels (robust to a few hot voxels)."""
    sample = np.asarray(data).ravel()[:: max(1, np.size(data) // 2_000_000)]
    lo, hi = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return (lo, hi if hi > lo else lo + 1.0)


def as_label_array(data: np.ndarray) -> np.ndarray:
    """Integer label array: uint8 when the values fit, else int32 (values are rounded)."""
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    values = np.rint(data) if np.issubdtype(data.dtype, np.floating) else data
    fits = values.size == 0 or (values.min() >= 0 and values.max() <= 255)
    return values.astype(np.uint8 if fits else np.int32)


def is_label_data(data: np.ndarray, path: str | Path | None = None) -> bool:
    """True for masks: 0/1 data, or whole-number data in a file with a mask name."""
    data = np.asarray(data)
    if data.dtype == bool or np.isin(data, (0, 1)).all():
        return True
    if path is None or not is_mask_name(path):
        return False
    whole = np.issubdtype(data.dtype, np.integer) or bool(np.all(np.mod(data, 1) == 0))
    return whole and float(data.min()) >= 0


def layer_volume(data: np.ndarray, metadata: Mapping[str, Any] | None,
                 transform: Mapping[str, Any] | None = None) -> Volume:
    """A layer's voxels as a ``Volume`` on the displayed grid (what inference runs on).

    Layers from this plugin use the file's (reoriented) affine. Other 3D layers are taken to be
    in RAS+ mm with the affine of their napari transform (``transform``: a layer's scale,
    translate, rotate, shear and affine).
    """
    data = np.asarray(data)
    if has_nifti_metadata(metadata):
        return Volume(data, display_affine(metadata), metadata["header"].copy(),
                      Path(metadata["path"]) if metadata.get("path") else None)
    return Volume(data, transform_affine(transform or {}, data.ndim), nib.Nifti1Header())


def native_volume(data: np.ndarray, metadata: Mapping[str, Any] | None,
                  transform: Mapping[str, Any] | None = None) -> Volume:
    """A layer's voxels back in the file's voxel order, with the file's affine and header.

    Without this plugin's metadata the displayed grid is used (see ``layer_volume``).
    """
    if not has_nifti_metadata(metadata):
        return layer_volume(data, metadata, transform)
    native = np.ascontiguousarray(nio.apply_orientation(np.asarray(data),
                                                        invert_ornt(metadata["to_display"])))
    if native.shape != tuple(metadata["native_shape"]):
        raise InputError(f"layer shape {np.shape(data)} does not match its source grid "
                         f"{tuple(metadata['native_shape'])}")
    return Volume(native, metadata["affine"].copy(), metadata["header"].copy(),
                  Path(metadata["path"]) if metadata.get("path") else None)


def transform_affine(transform: Mapping[str, Any], ndim: int = 3) -> np.ndarray:
    """4x4 data-to-world affine of a napari layer's scale/translate/rotate/shear and affine."""
    from napari.utils.transforms import Affine

    def get(key: str, default: Any) -> Any:
        value = transform.get(key)
        return default if value is None else value

    physical = Affine(scale=get("scale", np.ones(ndim)), translate=get("translate", np.zeros(ndim)),
                      rotate=get("rotate", np.eye(ndim)), shear=get("shear", np.zeros(ndim)),
                      ndim=ndim)
    world = get("affine", np.eye(ndim + 1))
    world = world.affine_matrix if hasattr(world, "affine_matrix") else np.asarray(world)
    return np.asarray(world, dtype=np.float64) @ physical.affine_matrix


def same_grid_kwargs(layer: Any) -> dict[str, Any]:
    """Transform keyword arguments that put a new layer on exactly ``layer``'s voxel grid."""
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate),
            "rotate": np.array(layer.rotate), "shear": np.array(layer.shear),
            "affine": np.array(layer.affine.affine_matrix), "units": tuple(layer.units)}


def layer_transform(layer: Any) -> dict[str, Any]:
    """A layer's napari transform as writer-style attributes (``layer_volume``'s ``transform``)."""
    kwargs = same_grid_kwargs(layer)
    kwargs.pop("units")
    return kwargs
