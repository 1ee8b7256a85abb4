"""Figures without Qt: axial slices of a T1 volume with lesion masks outlined, saved as PNG.

Slices are shown in RAS+ orientation, neurological convention (the subject's left on the left,
anterior up). Uses matplotlib's object API (no pyplot state), so it runs headless.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .geometry import ras_voxel_sizes, to_ras
from .io import Volume, atomic_write

OUTLINE_COLOURS = ("#33ff33", "#ff3333", "#33ccff", "#ffcc00")


def axial_slices(masks: list[np.ndarray], image: np.ndarray, count: int) -> list[int]:
    """``count`` axial (last-axis) slice numbers: spread over the lesions' voxels if any mask has
    some (quantiles of their z, so larger parts get more slices), else over the head."""
    lesion = np.zeros(image.shape, bool)
    for mask in masks:
        lesion |= mask > 0
    z = np.nonzero(lesion.any(axis=(0, 1)))[0]
    if z.size:
        weights = lesion.sum(axis=(0, 1))[z].astype(float)
        cumulative = np.cumsum(weights) / weights.sum()
        picks = [z[np.searchsorted(cumulative, q)] for q in (np.arange(count) + 0.5) / count]
    else:
        inside = np.nonzero((image > np.percentile(image, 60)).any(axis=(0, 1)))[0]
        lo, hi = (inside.min(), inside.max()) if inside.size else (0, image.shape[2] - 1)
        picks = np.linspace(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo), count).round().astype(int)
    return sorted({int(p) for p in picks})


def overlay_figure(volume: Volume, outlines: dict[str, np.ndarray] | None = None,
                   n_slices: int = 4, title: str | None = None):
    """A matplotlib ``Figure``: ``n_slices`` axial slices with each mask in ``outlines``
    (label -> array on the volume's grid) drawn as a coloured contour."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    outlines = outlines or {}
    image = to_ras(volume.data, volume.affine).astype(np.float32)
    masks = {label: to_ras(mask, volume.affine) for label, mask in outlines.items()}
    slices = axial_slices(list(masks.values()), image, n_slices)
    sx, sy = ras_voxel_sizes(volume.affine)[:2]
    lo, hi = np.percentile(image[image > image.min()] if (image > image.min()).any() else image, [0.5, 99.5])
    head = (image > lo + 0.15 * (hi - lo)).any(axis=2)
    xs, ys = np.nonzero(head) if head.any() else (np.arange(image.shape[0]), np.arange(image.shape[1]))
    crop = (slice(max(xs.min() - 5, 0), xs.max() + 6), slice(max(ys.min() - 5, 0), ys.max() + 6))

    fig = Figure(figsize=(2.6 * len(slices), 3.2), facecolor="black")
    for column, z in enumerate(slices):
        ax = fig.add_subplot(1, len(slices), column + 1)
        ax.imshow(image[crop + (z,)].T, cmap="gray", origin="lower", vmin=lo, vmax=hi,
                  aspect=sy / sx, interpolation="nearest")
        for colour, mask in zip(OUTLINE_COLOURS, masks.values()):
            plane = mask[crop + (z,)].T > 0
            if plane.any():
                ax.contour(plane.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)
        ax.set_title(f"z = {z}", color="white", fontsize=9)
        ax.text(0.98, 0.02, "R", color="white", transform=ax.transAxes, ha="right", fontsize=8)
        ax.set_axis_off()
    if masks:
        handles = [Line2D([], [], color=c, label=label) for c, label in zip(OUTLINE_COLOURS, masks)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                   labelcolor="white", fontsize=9)
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86 if title else 0.92, bottom=0.1, wspace=0.03)
    return fig


def save_overlay_png(path: str | os.PathLike, volume: Volume,
                     outlines: dict[str, np.ndarray] | None = None, *, n_slices: int = 4,
                     title: str | None = None, dpi: int = 110, overwrite: bool = False) -> Path:
    """Write ``overlay_figure(...)`` as a PNG (atomically)."""
    fig = overlay_figure(volume, outlines, n_slices, title)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi,
                                                      facecolor=fig.get_facecolor()), overwrite)
