"""Volume <-> network input, and back (docs/architecture.md, "Preprocessing and its inverse").

Forward: reorient to RAS+ (axis order and flips only, no resampling), cut an in-plane box out
of every axial slice, resize it to 192x192 (bilinear) and stack slices i-2, i-1, i, i+1.
Inverse: resize each 192x192 map back to the box, put it in place (zero outside the box) and
undo the reorientation, so every voxel lands where it came from.

Box policy:

* ATLAS grid (197x233 in-plane in RAS+, 1 mm MNI152): the paper's crop, x 10..190, y 40..220.
* Any other grid: a square field of view, centred, as wide (in mm) as the larger in-plane
  extent, so the whole slice (and so the whole head) stays in view; it is padded with zeros
  where it runs past the image. Anisotropic voxels keep their physical aspect.

In a 192x192 image rows run along y (posterior to anterior) and columns along x (left to right).
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .geometry import RAS, voxel_sizes

INPUT_SIZE = 192
ATLAS_INPLANE = (197, 233)
ATLAS_BOX = (10, 190, 40, 220)  # x0, x1, y0, y1
STACK_OFFSETS = (-2, -1, 0, 1)
CANONICAL = RAS


def normalize_intensity(data: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map intensities to [0, 1], whatever the dtype or scanner scale.

    The ``low`` percentile of all voxels maps to 0 and the ``high`` percentile of the voxels
    above it to 1; values beyond are clipped. Raises ``InputError`` for a constant (e.g. all-zero)
    volume, or one with NaN/Inf.
    """
    v = np.asarray(data, dtype=np.float32)
    if not np.isfinite(v).all():
        raise InputError("the volume has NaN or infinite voxels.")
    lo = np.percentile(v, low)
    above = v[v > lo]
    if above.size == 0:
        raise InputError("the volume is empty: all voxels have the same value.")
    hi = np.percentile(above, high)
    if hi <= lo:
        hi = above.max()
    out = (v - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


@dataclass(frozen=True)
class SliceGeometry:
    """How a native voxel grid maps onto 192x192 axial slices, and back."""

    native_shape: tuple[int, int, int]
    native_ornt: np.ndarray  # nibabel orientation of the native axes
    box: tuple[int, int, int, int]  # x0, x1, y0, y1 in RAS+ voxel indices (may exceed image)
    policy: str  # "atlas-crop" or "square-fov"
    size: int = INPUT_SIZE

    @classmethod
    def for_volume(cls, shape: tuple[int, ...], affine: np.ndarray,
                   size: int = INPUT_SIZE) -> "SliceGeometry":
        shape = tuple(int(s) for s in shape[:3])
        native_ornt = nio.io_orientation(affine)
        ras_axes = native_ornt[:, 0].astype(int)  # native axis k becomes RAS axis ras_axes[k]
        ras_shape = [0, 0, 0]
        zooms = [0.0, 0.0, 0.0]
        native_zooms = voxel_sizes(affine)
        for k in range(3):
            ras_shape[ras_axes[k]] = shape[k]
            zooms[ras_axes[k]] = float(native_zooms[k])
        nx, ny = ras_shape[0], ras_shape[1]
        if (nx, ny) == ATLAS_INPLANE:
            return cls(shape, native_ornt, ATLAS_BOX, "atlas-crop", size)
        fov = max(nx * zooms[0], ny * zooms[1])
        sx, sy = (max(1, int(round(fov / z))) for z in zooms[:2])
        x0, y0 = (nx - sx) // 2, (ny - sy) // 2
        return cls(shape, native_ornt, (x0, x0 + sx, y0, y0 + sy), "square-fov", size)

    # -- orientation --------------------------------------------------------------------------
    def to_canonical(self, data: np.ndarray) -> np.ndarray:
        return nio.apply_orientation(data, nio.ornt_transform(self.native_ornt, CANONICAL))

    def from_canonical(self, data: np.ndarray) -> np.ndarray:
        return nio.apply_orientation(data, nio.ornt_transform(CANONICAL, self.native_ornt))

    @property
    def axial_axis(self) -> int:
        """The native array axis along which axial (RAS+ z) slices are stacked."""
        return int(np.flatnonzero(self.native_ornt[:, 0] == 2)[0])

    @property
    def n_slices(self) -> int:
        return self.native_shape[self.axial_axis]

    def axial_index(self, native_index: int) -> int:
        """Axial slice number (inferior to superior) of a native index along ``axial_axis``."""
        flipped = self.native_ornt[self.axial_axis, 1] < 0
        return self.n_slices - 1 - native_index if flipped else native_index

    def axial_slice_at(self, voxel: tuple[float, ...]) -> int:
        """Axial slice number through a native voxel position (clipped to the volume)."""
        index = int(np.clip(round(voxel[self.axial_axis]), 0, self.n_slices - 1))
        return self.axial_index(index)

    # -- slices -------------------------------------------------------------------------------
    def forward(self, data: np.ndarray) -> torch.Tensor:
        """Native volume -> ``(Z, 192, 192)`` float32 tensor of axial slices (rows y, columns x)."""
        ras = np.ascontiguousarray(self.to_canonical(np.asarray(data, dtype=np.float32)))
        x0, x1, y0, y1 = self.box
        boxed = np.zeros((x1 - x0, y1 - y0, ras.shape[2]), np.float32)
        sx, sy = _overlap(x0, x1, ras.shape[0]), _overlap(y0, y1, ras.shape[1])
        boxed[sx[1], sy[1]] = ras[sx[0], sy[0]]
        slices = torch.from_numpy(boxed).permute(2, 1, 0)[:, None]  # (Z, 1, y, x)
        out = F.interpolate(slices, size=(self.size, self.size), mode="bilinear",
                            align_corners=False, antialias=bool(max(boxed.shape[:2]) > self.size))
        return out[:, 0].contiguous()

    def inverse(self, maps: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(Z, 192, 192)`` maps -> native-grid float32 volume (zero outside the box)."""
        maps = torch.as_tensor(maps, dtype=torch.float32)
        x0, x1, y0, y1 = self.box
        resized = F.interpolate(maps[:, None], size=(y1 - y0, x1 - x0), mode="bilinear",
                                align_corners=False, antialias=bool(self.size > max(x1 - x0, y1 - y0)))
        boxed = resized[:, 0].permute(2, 1, 0).cpu().numpy()  # (x, y, Z)
        ras_shape = self.to_canonical(np.empty(self.native_shape, np.bool_)).shape
        ras = np.zeros(ras_shape, np.float32)
        sx, sy = _overlap(x0, x1, ras_shape[0]), _overlap(y0, y1, ras_shape[1])
        ras[sx[0], sy[0]] = boxed[sx[1], sy[1]]
        return np.ascontiguousarray(self.from_canonical(ras))


def _overlap(start: int, stop: int, length: int) -> tuple[slice, slice]:
    """(slice into the image, slice into the box) where box [start, stop) meets [0, length)."""
    lo, hi = max(start, 0), min(stop, length)
    return slice(lo, hi), slice(lo - start, hi - start)


def make_stacks(slices: torch.Tensor, indices: torch.Tensor | list[int] | range) -> torch.Tensor:
    """``(Z, H, W)`` slices -> ``(N, 4, H, W)`` stacks of slices i-2, i-1, i, i+1 (zero outside)."""
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    before, after = -STACK_OFFSETS[0], STACK_OFFSETS[-1]
    padded = F.pad(slices, (0, 0, 0, 0, before, after))  # slice j is padded[j + before]
    return padded[idx[:, None] + torch.arange(len(STACK_OFFSETS))]
