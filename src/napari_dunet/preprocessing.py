"""Volume <-> network input, and back (paper, section 3.1; docs/architecture.md, "Preprocessing").

Forward: reorient to RAS+ (axis order and flips only), resample every axial slice onto a
192x192 window of fixed pixel size, stack slices i-2, i-1, i, i+1. Inverse: resample each
192x192 map back onto the native voxels (zero outside the window) and undo the reorientation,
so every voxel lands where it came from.

Schemes (a checkpoint records the one it was trained with; checkpoints without one are legacy):

* ``physical`` (default): pixels of ``PIXEL_MM`` (the paper's ATLAS crop, 180 mm on 192 px),
  whatever the voxel size (a smaller network input sees a smaller window); the window is
  centred on the head (``tissue.head_mask``);
  intensities are scaled from the head's voxels (0.5th percentile -> 0, 99.5th -> 1). Slices
  thicker than 1.5 mm are each split into ``z_factor`` thinner ones (linear interpolation), and
  their maps averaged back, so thick clinical slices look like the 1 mm training slices.
* ``legacy``: a square field of view as wide as the larger in-plane extent, centred on the
  image; intensities scaled from all voxels; native slices.

On the ATLAS grid (197x233 in-plane, 1 mm) both take the paper's crop, x 10..190, y 40..220.
In-plane resampling is linear, with a triangle kernel widened to the pixel ratio where it
shrinks (antialiasing). Rows of a 192x192 image run along y (posterior to anterior) and columns
along x (left to right).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .geometry import RAS, ras_ornt, voxel_sizes
from .options import DEFAULT_PREPROCESSING, PREPROCESSING
from .tissue import head_mask

INPUT_SIZE = 192
ATLAS_INPLANE = (197, 233)
ATLAS_BOX = (10, 190, 40, 220)  # x0, x1, y0, y1
PIXEL_MM = 180.0 / INPUT_SIZE
THICK_SLICE_MM = 1.5  # thicker slices are split into ~1 mm ones
STACK_OFFSETS = (-2, -1, 0, 1)
CANONICAL = RAS
SCHEMES, DEFAULT_SCHEME = PREPROCESSING, DEFAULT_PREPROCESSING


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise InputError(f"unknown preprocessing {scheme!r}; use one of: {', '.join(SCHEMES)}.")
    return scheme


def normalize_intensity(data: np.ndarray, low: float = 0.5, high: float = 99.5,
                        within: np.ndarray | None = None) -> np.ndarray:
    """Map intensities to [0, 1], whatever the dtype or scanner scale.

    The ``low`` percentile of the voxels (of those where ``within`` is True, when given) maps
    to 0 and the ``high`` percentile of those above it to 1; values beyond are clipped. Raises
    ``InputError`` for a constant (e.g. all-zero) volume, or one with NaN/Inf.
    """
    v = np.asarray(data, dtype=np.float32)
    if not np.isfinite(v).all():
        raise InputError("the volume has NaN or infinite voxels.")
    sample = v if within is None or not within.any() else v[within]
    lo = np.percentile(sample, low)
    above = sample[sample > lo]
    if above.size == 0:
        raise InputError("the volume is empty: all voxels have the same value.")
    hi = np.percentile(above, high)
    if hi <= lo:
        hi = above.max()
    out = (v - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


@dataclass(frozen=True)
class SliceGeometry:
    """How a native voxel grid maps onto 192x192 axial slices, and back.

    ``centre``: the window's centre in RAS+ voxel coordinates (x, y); ``step``: RAS+ voxels per
    network pixel (x, y); ``z_factor``: network slices per native axial slice.
    """

    native_shape: tuple[int, int, int]
    native_ornt: np.ndarray  # nibabel orientation of the native axes
    centre: tuple[float, float]
    step: tuple[float, float]
    policy: str  # "atlas-crop", "physical" or "square-fov" (legacy)
    z_factor: int = 1
    size: int = INPUT_SIZE

    @classmethod
    def for_volume(cls, shape: tuple[int, ...], affine: np.ndarray, size: int = INPUT_SIZE, *,
                   scheme: str = DEFAULT_SCHEME,
                   centre: tuple[float, float] | None = None) -> "SliceGeometry":
        """The geometry of a grid; ``centre`` (RAS+ voxels) defaults to the image's centre.

        ``preprocess`` centres the window on the head; the orientation helpers need no data.
        """
        check_scheme(scheme)
        shape = tuple(int(s) for s in shape[:3])
        native_ornt = ras_ornt(affine)
        ras_axes = native_ornt[:, 0].astype(int)  # native axis k becomes RAS axis ras_axes[k]
        ras_shape, zooms = [0, 0, 0], [0.0, 0.0, 0.0]
        native_zooms = voxel_sizes(affine)
        for k in range(3):
            ras_shape[ras_axes[k]] = shape[k]
            zooms[ras_axes[k]] = float(native_zooms[k])
        nx, ny = ras_shape[0], ras_shape[1]
        if (nx, ny) == ATLAS_INPLANE and np.allclose(zooms, 1.0, atol=0.01):
            x0, x1, y0, y1 = ATLAS_BOX
            return cls(shape, native_ornt, ((x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5),
                       ((x1 - x0) / size, (y1 - y0) / size), "atlas-crop", 1, size)
        if scheme == "legacy":
            fov = max(nx * zooms[0], ny * zooms[1])
            sx, sy = (max(1, int(round(fov / z))) for z in zooms[:2])
            x0, y0 = (nx - sx) // 2, (ny - sy) // 2
            return cls(shape, native_ornt, (x0 + sx / 2 - 0.5, y0 + sy / 2 - 0.5),
                       (sx / size, sy / size), "square-fov", 1, size)
        if centre is None:
            centre = ((nx - 1) / 2, (ny - 1) / 2)
        z_factor = max(1, round(zooms[2])) if zooms[2] > THICK_SLICE_MM else 1
        return cls(shape, native_ornt, (float(centre[0]), float(centre[1])),
                   (PIXEL_MM / zooms[0], PIXEL_MM / zooms[1]), "physical",
                   z_factor, size)

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
        """Native axial slices."""
        return self.native_shape[self.axial_axis]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The window's edges in RAS+ voxels (x0, x1, y0, y1), rounded; may exceed the image."""
        edges = [c + 0.5 + sign * s * self.size / 2 for c, s in zip(self.centre, self.step)
                 for sign in (-1, 1)]
        return tuple(int(round(e)) for e in edges)  # type: ignore[return-value]

    def axial_index(self, native_index: int) -> int:
        """Axial slice number (inferior to superior) of a native index along ``axial_axis``."""
        flipped = self.native_ornt[self.axial_axis, 1] < 0
        return self.n_slices - 1 - native_index if flipped else native_index

    def axial_slice_at(self, voxel: tuple[float, ...]) -> int:
        """Axial slice number through a native voxel position (clipped to the volume)."""
        index = int(np.clip(round(voxel[self.axial_axis]), 0, self.n_slices - 1))
        return self.axial_index(index)

    def slab(self, start: int, stop: int) -> tuple["SliceGeometry", tuple[slice, slice, slice]]:
        """The geometry of axial slices ``start..stop-1`` alone, and their index into the native
        array: ``slab.forward(data[index])`` gives those slices, ``slab.inverse`` puts them back."""
        ends = sorted((self.axial_index(start), self.axial_index(stop - 1)))
        index = [slice(None)] * 3
        index[self.axial_axis] = slice(ends[0], ends[1] + 1)
        shape = list(self.native_shape)
        shape[self.axial_axis] = stop - start
        return dataclasses.replace(self, native_shape=tuple(shape)), tuple(index)

    # -- slices -------------------------------------------------------------------------------
    def _ras_shape(self) -> tuple[int, int, int]:
        return self.to_canonical(np.empty(self.native_shape, np.bool_)).shape

    def forward(self, data: np.ndarray) -> torch.Tensor:
        """Native volume -> ``(Z * z_factor, 192, 192)`` float32 tensor of axial slices."""
        ras = torch.from_numpy(np.ascontiguousarray(
            self.to_canonical(np.asarray(data, dtype=np.float32))))
        nx, ny, nz = ras.shape
        to_x = _window_weights(self.centre[0], self.step[0], self.size, nx)  # (size, X)
        to_y = _window_weights(self.centre[1], self.step[1], self.size, ny)
        rows = torch.einsum("xyz,cx->cyz", ras, to_x)
        slices = torch.einsum("cyz,ry->zrc", rows, to_y)
        if self.z_factor > 1:
            columns = slices.permute(1, 2, 0).reshape(1, -1, nz)
            slices = F.interpolate(columns, scale_factor=self.z_factor, mode="linear",
                                   align_corners=False)
            slices = slices.reshape(self.size, self.size, -1).permute(2, 0, 1)
        return slices.contiguous()

    def inverse(self, maps: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(Z * z_factor, 192, 192)`` maps -> native-grid float32 volume (zero outside)."""
        maps = torch.as_tensor(maps, dtype=torch.float32)
        nx, ny, nz = self._ras_shape()
        if self.z_factor > 1:
            maps = maps.reshape(nz, self.z_factor, self.size, self.size).mean(dim=1)
        from_x = _native_weights(self.centre[0], self.step[0], self.size, nx)  # (X, size)
        from_y = _native_weights(self.centre[1], self.step[1], self.size, ny)
        ras = torch.einsum("zrc,xc,yr->xyz", maps, from_x, from_y).numpy()
        return np.ascontiguousarray(self.from_canonical(ras))


def _triangle(distance: torch.Tensor, width: float) -> torch.Tensor:
    return (1.0 - distance.abs() / width).clamp(min=0.0)


def _window_weights(centre: float, step: float, size: int, n_in: int) -> torch.Tensor:
    """``(size, n_in)`` weights sampling a line of ``n_in`` voxels at the window's pixels.

    Pixel ``c`` sits at voxel ``centre + (c + 0.5 - size / 2) * step``; voxels outside the image
    count as zero (they keep their share of the weight)."""
    width = max(1.0, step)
    at = centre + (torch.arange(size, dtype=torch.float64) + 0.5 - size / 2) * step
    reach = int(math.ceil(width)) + 1
    taps = torch.floor(at)[:, None] + torch.arange(-reach, reach + 1, dtype=torch.float64)
    weights = _triangle(taps - at[:, None], width)
    weights /= weights.sum(dim=1, keepdim=True)
    out = torch.zeros(size, n_in, dtype=torch.float64)
    inside = (taps >= 0) & (taps < n_in)
    rows = torch.arange(size)[:, None].expand_as(taps)
    out.index_put_((rows[inside], taps[inside].long()), weights[inside], accumulate=True)
    return out.float()


def _native_weights(centre: float, step: float, size: int, n_out: int) -> torch.Tensor:
    """``(n_out, size)`` weights sampling the window's pixels at ``n_out`` native voxels; a voxel
    whose centre lies outside the window gets zero weights."""
    at = (torch.arange(n_out, dtype=torch.float64) - centre) / step + size / 2 - 0.5
    width = max(1.0, 1.0 / step)
    pixels = torch.arange(size, dtype=torch.float64)
    weights = _triangle(pixels[None, :] - at[:, None], width)
    weights /= weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    weights[(at < -0.5) | (at > size - 0.5)] = 0.0
    return weights.float()


def preprocess(data: np.ndarray, affine: np.ndarray, *, scheme: str = DEFAULT_SCHEME,
               size: int = INPUT_SIZE) -> tuple[SliceGeometry, np.ndarray]:
    """The geometry of a volume and its intensities scaled to [0, 1] (native grid), as
    ``scheme`` makes them; ``geometry.forward(normalized)`` is the network's input."""
    if check_scheme(scheme) == "legacy":
        return (SliceGeometry.for_volume(data.shape, affine, size, scheme=scheme),
                normalize_intensity(data))
    geometry = SliceGeometry.for_volume(data.shape, affine, size, scheme=scheme)
    if not np.isfinite(data).all():  # before the head mask, whose histogram would fail
        raise InputError("the volume has NaN or infinite voxels.")
    step = 2
    head = head_mask(geometry.to_canonical(data), step)  # RAS+, every other voxel
    if geometry.policy == "physical" and head.any():
        geometry = dataclasses.replace(geometry, centre=_head_centre(head, step))
    within = np.zeros(data.shape, bool)
    if head.any():
        coarse = np.zeros(geometry.to_canonical(within).shape, bool)
        coarse[::step, ::step, ::step] = head
        within = geometry.from_canonical(coarse)
    return geometry, normalize_intensity(data, within=within)


def _head_centre(head: np.ndarray, step: int) -> tuple[float, float]:
    """The middle of the head's in-plane extent (RAS+ voxels), as the median over the axial
    slices that show at least half of the largest head section."""
    area = head.sum(axis=(0, 1))
    big = np.flatnonzero(area >= 0.5 * area.max())
    centres = []
    for z in big:
        section = head[:, :, z]
        xs, ys = np.flatnonzero(section.any(axis=1)), np.flatnonzero(section.any(axis=0))
        centres.append(((xs[0] + xs[-1]) / 2 * step, (ys[0] + ys[-1]) / 2 * step))
    cx, cy = np.median(np.asarray(centres), axis=0)
    return float(cx), float(cy)


def make_stacks(slices: torch.Tensor, indices: torch.Tensor | list[int] | range) -> torch.Tensor:
    """``(Z, H, W)`` slices -> ``(N, 4, H, W)`` stacks of slices i-2, i-1, i, i+1 (zero outside)."""
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    before, after = -STACK_OFFSETS[0], STACK_OFFSETS[-1]
    padded = F.pad(slices, (0, 0, 0, 0, before, after))  # slice j is padded[j + before]
    return padded[idx[:, None] + torch.arange(len(STACK_OFFSETS))]
