"""Real T1 scans with a real lesion shape carved in as chronic tissue loss: a development check
for the default weights on real T1 anatomy and texture, made differently from the training
synthesis so that it does not only measure how well the network learned its own generator.

The training draws (``labelsynth``, ``synth``) paint a lesion with label means, Gaussian
texture and formulas of the CSF and grey-matter levels. Here every intensity put into the scan
is one of the scan's own voxel values, and tissue loss is made by grey-scale morphology:

1. **ex vacuo**: within ``reach_mm`` of the lesion the scan is replaced by its grey-scale erosion
   (minimum over a ball of ``widen_mm``), weighted down with distance, so the scan's own CSF
   spaces (ventricle, sulci) grow towards the lesion and the cortex next to it thins;
2. **cavity**: lesion voxels deeper than ``rim_mm`` take values drawn from the scan's own CSF
   voxels (those within a quarter of the way to the grey-matter level), placed by a smooth random field (rank-matched), so the
   cavity has real CSF noise and texture;
3. **incomplete-infarct rim**: the outer ``rim_mm`` of the lesion takes values drawn the same way
   from the scan's grey-matter voxels, mixed with the cavity by ``rim_mix``;
4. a partial-volume edge (the mask blurred by 0.7 mm) blends it into the tissue.

The mask is the lesion shape (the widened CSF outside it is not lesion, as a tracer would draw).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_dunet.io import Volume
from napari_dunet.synth import Anatomy, resample_mask


@dataclass(frozen=True)
class Carving:
    """The parameters of one carved lesion (``draw`` picks them)."""

    widen_mm: float
    reach_mm: float
    rim_mm: float
    rim_mix: float
    grain_mm: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Carving":
        return cls(widen_mm=rng.uniform(1.0, 3.0), reach_mm=rng.uniform(8.0, 15.0),
                   rim_mm=rng.uniform(1.0, 3.0), rim_mix=rng.uniform(0.4, 0.9),
                   grain_mm=rng.uniform(1.0, 3.0))


def carve(anatomy: Anatomy, lesion: Volume, rng: np.random.Generator,
          mirror: bool = False) -> tuple[Volume, Volume, dict]:
    """The anatomy's T1 with ``lesion`` (a mask file's volume, moved through world coordinates)
    carved in; returns the image, the mask (uint8, the lesion within the brain) and the
    parameters used."""
    t1 = anatomy.t1
    data = t1.data.astype(np.float32)
    mask = resample_mask(lesion, data.shape, t1.affine, mirror) & anatomy.brain
    if not mask.any():
        raise ValueError("the lesion does not reach the anatomy's brain")
    p = Carving.draw(rng)
    voxel = np.asarray(t1.voxel_size, float)
    inside = np.argwhere(mask)
    pad = np.ceil((p.reach_mm + p.widen_mm + 2.0) / voxel).astype(int)
    box = tuple(slice(max(a - r, 0), b + r + 1)
                for a, b, r in zip(inside.min(0), inside.max(0), pad))
    sub, les, brain = data[box], mask[box], anatomy.brain[box]

    outside_mm = ndi.distance_transform_edt(~les, sampling=voxel)
    eroded = ndi.grey_erosion(sub, footprint=_ball(p.widen_mm, voxel))
    near = brain & ~les & (outside_mm < p.reach_mm)
    weight = np.where(near, 1.0 - outside_mm / p.reach_mm, 0.0).astype(np.float32)
    out = sub + weight * (np.minimum(eroded, sub) - sub)

    depth_mm = ndi.distance_transform_edt(les, sampling=voxel)
    levels = anatomy.means
    csf_values = _nearest_values(data[anatomy.brain], levels["csf"], levels)
    gm_values = _nearest_values(data[anatomy.brain], levels["gm"], levels)
    field = _ranks(ndi.gaussian_filter(rng.standard_normal(sub.shape).astype(np.float32),
                                       p.grain_mm / voxel), les)
    cavity = _quantiles(csf_values, field)
    rim = p.rim_mix * _quantiles(gm_values, field) + (1 - p.rim_mix) * cavity
    lesion_image = out.copy()
    lesion_image[les] = np.where(depth_mm[les] <= p.rim_mm, rim, cavity)
    edge = np.clip(ndi.gaussian_filter(les.astype(np.float32), 0.7 / voxel), 0.0, 1.0)
    edge[les] = np.maximum(edge[les], 0.5)  # the traced voxels are at least half lesion
    image = data.copy()
    image[box] = out + edge * (lesion_image - out)
    return (Volume(image, t1.affine, t1.header, t1.path),
            Volume(mask.astype(np.uint8), t1.affine, t1.header), asdict(p))


def _ball(radius_mm: float, voxel: np.ndarray) -> np.ndarray:
    reach = np.ceil(radius_mm / voxel).astype(int)
    grid = np.meshgrid(*(np.arange(-r, r + 1) * v for r, v in zip(reach, voxel)), indexing="ij")
    return sum(g * g for g in grid) <= radius_mm ** 2


def _nearest_values(values: np.ndarray, level: float, levels: dict[str, float]) -> np.ndarray:
    """The scan's voxel values within a quarter of the way from ``level`` to the nearest other
    tissue level (the pure tissue, not its partial-volume border), or, when fewer than 100 are,
    the hundred nearest it."""
    gap = min(abs(v - level) for v in levels.values() if v != level)
    own = values[np.abs(values - level) <= gap / 4]
    if own.size >= 100:
        return own
    return values[np.argsort(np.abs(values - level))[:100]]


def _quantiles(values: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The ``ranks`` (0..1) of ``values`` (one sort, not a partition per rank)."""
    ordered = np.sort(values)
    return ordered[np.minimum((ranks * ordered.size).astype(int), ordered.size - 1)]


def _ranks(field: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The field's values inside ``mask`` as ranks in (0, 1)."""
    values = field[mask]
    return (np.argsort(np.argsort(values)) + 0.5) / values.size
