"""Voxel grids from their affine: voxel sizes and the reorientation to RAS+ (numpy and nibabel
only; axis order and flips, never resampling). ``preprocessing``, ``layers``, ``figures`` and
``io`` read the grid through these."""

from __future__ import annotations

import nibabel.orientations as nio
import numpy as np

RAS = nio.axcodes2ornt("RAS")


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm along the array axes (the affine's column norms)."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def ras_ornt(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation from the array axes to the closest RAS+ axes (a degenerate affine:
    the array order as it is)."""
    ornt = nio.io_orientation(affine)
    return RAS.copy() if np.isnan(ornt).any() else ornt


def to_ras(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder and flip axes so the array runs left->right, posterior->anterior,
    inferior->superior."""
    return nio.apply_orientation(np.asarray(data), ras_ornt(affine))


def ras_voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """``voxel_sizes`` in RAS+ axis order (x, y, z)."""
    sizes = [0.0, 0.0, 0.0]
    for axis, ras_axis in enumerate(ras_ornt(affine)[:, 0].astype(int)):
        sizes[ras_axis] = voxel_sizes(affine)[axis]
    return tuple(sizes)
