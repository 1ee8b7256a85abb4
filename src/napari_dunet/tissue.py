"""Head masks from intensities alone (any contrast, skull on or off), and their small helpers."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected (face-neighbour) component of a boolean mask."""
    labels, n = ndi.label(mask)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == np.argmax(sizes)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best splits ``values`` into two classes (Otsu's method)."""
    counts, edges = np.histogram(values, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    s0 = np.cumsum(counts * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def head_mask(data: np.ndarray, step: int = 2) -> np.ndarray:
    """The head (or the brain of a brain-extracted scan) of a volume of any contrast.

    Otsu's threshold of all voxels (it falls between air and tissue), the largest component,
    holes filled; computed on every ``step``-th voxel along each axis and returned on that
    coarse grid. A volume with no such split (constant) gives an all-False mask.
    """
    coarse = np.asarray(data[::step, ::step, ::step], np.float32)
    if coarse.size == 0 or coarse.max() <= coarse.min():
        return np.zeros(coarse.shape, bool)
    foreground = coarse > otsu_threshold(coarse.ravel())
    return ndi.binary_fill_holes(largest_component(foreground))


def fill_holes_axially(mask: np.ndarray) -> np.ndarray:
    """A copy of ``mask`` with the holes of each axial plane filled (ventricles inside the
    brain, the skull inside the scalp)."""
    filled = np.asarray(mask, bool).copy()
    for z in range(filled.shape[2]):
        filled[:, :, z] = ndi.binary_fill_holes(filled[:, :, z])
    return filled
