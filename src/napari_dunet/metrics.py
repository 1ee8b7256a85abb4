"""Segmentation metrics for binary lesion masks (numpy/scipy only, no Qt, no torch).

Conventions (docs/evaluation.md, "What is measured"):

- Masks are binarised at 0.5 (``value >= 0.5`` is lesion), like the model's output threshold.
- Overlap: DSC = 2TP/(2TP+FP+FN), precision = TP/(TP+FP), recall = TP/(TP+FN). A zero
  denominator gives 1.0 when both masks are empty (perfect agreement on "no lesion") and 0.0
  otherwise (the case is a miss, so it pulls cohort means down instead of vanishing from them).
- ATLAS v2.0 challenge metrics: Dice (both empty = 1), volume difference |V_pred - V_true|,
  simple lesion count difference |#pred - #true| and lesion-wise F1 = TP/(TP + (FP+FN)/2).
  A reference component is found (TP) if it shares at least one voxel with the prediction,
  missed (FN) otherwise; a predicted component touching no reference voxel is an FP.
  Components are 6-connected (face neighbours) by default; 26 (ISLES'22) is an option.
- HD95: the larger of the two directed 95th percentiles of surface-to-surface distances in mm
  (surface = mask voxels with a face neighbour outside the mask), as MONAI computes it.
  Both masks empty: 0.0; exactly one empty: ``inf`` (no surface to measure to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError

THRESHOLD = 0.5
CONNECTIVITIES = (6, 26)
_STRUCTURES = {6: ndimage.generate_binary_structure(3, 1), 26: ndimage.generate_binary_structure(3, 3)}


def binarize(mask: np.ndarray) -> np.ndarray:
    """Boolean lesion mask: ``mask >= 0.5`` (boolean input is returned as is)."""
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask >= THRESHOLD


def is_binary(mask: np.ndarray) -> bool:
    """True if every value is 0 or 1 (so binarising changes nothing)."""
    mask = np.asarray(mask)
    return mask.dtype == bool or bool(np.isin(mask, (0, 1)).all())


def check_same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    """Raise ``InputError`` naming both shapes if they differ."""
    if np.shape(pred) != np.shape(truth):
        raise InputError(f"the prediction has shape {np.shape(pred)} but the reference has shape "
                         f"{np.shape(truth)}; both masks must be on the same voxel grid.")


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of one comparison; add them to pool a cohort (global DSC)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def confusion(pred: np.ndarray, truth: np.ndarray) -> Confusion:
    """TP, FP, FN voxel counts of two masks of equal shape (binarised at 0.5)."""
    check_same_shape(pred, truth)
    p, t = binarize(pred), binarize(truth)
    tp = int(np.count_nonzero(p & t))
    return Confusion(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp)


def _ratio(num: int, den: int, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def dice(c: Confusion) -> float:
    """2TP/(2TP+FP+FN); 1.0 when both masks are empty."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, both_empty=True)


def precision(c: Confusion) -> float:
    """TP/(TP+FP); 1.0 when both masks are empty, 0.0 for an empty prediction of a lesion."""
    return _ratio(c.tp, c.tp + c.fp, both_empty=c.fn == 0)


def recall(c: Confusion) -> float:
    """TP/(TP+FN); 1.0 when both masks are empty, 0.0 for a lesion predicted where none is."""
    return _ratio(c.tp, c.tp + c.fn, both_empty=c.fp == 0)


def global_dice(confusions: Iterable[Confusion]) -> float:
    """DSC of the pooled TP/FP/FN of a cohort (paper's "DSC global"); 1.0 if all are empty."""
    return dice(sum(confusions, Confusion()))


def label_components(mask: np.ndarray, connectivity: int = 6) -> tuple[np.ndarray, int]:
    """Connected components of a 3D mask: (label image, count). ``connectivity`` is 6 or 26."""
    if connectivity not in _STRUCTURES:
        raise InputError(f"connectivity must be 6 or 26, got {connectivity}.")
    mask = binarize(mask)
    if mask.ndim != 3:
        raise InputError(f"expected a 3D mask, got shape {mask.shape}.")
    labels, n = ndimage.label(mask, structure=_STRUCTURES[connectivity])
    return labels, int(n)


@dataclass(frozen=True)
class LesionCounts:
    """Component-level detection counts (ATLAS/ISLES scorer definitions)."""

    n_pred: int
    n_truth: int
    tp: int
    fp: int
    fn: int

    @property
    def count_difference(self) -> int:
        """|#components pred - #components truth|."""
        return abs(self.n_pred - self.n_truth)

    @property
    def f1(self) -> float:
        """TP/(TP + (FP+FN)/2); 1.0 when both masks are empty, 0.0 when only one is."""
        den = self.tp + (self.fp + self.fn) / 2
        return 1.0 if den == 0 else self.tp / den


def lesion_counts(pred: np.ndarray, truth: np.ndarray, connectivity: int = 6) -> LesionCounts:
    """Match components: a reference component overlapping the prediction by >= 1 voxel is a TP,
    otherwise an FN; a predicted component overlapping no reference voxel is an FP."""
    check_same_shape(pred, truth)
    p, t = binarize(pred), binarize(truth)
    pred_labels, n_pred = label_components(p, connectivity)
    truth_labels, n_truth = label_components(t, connectivity)
    found = np.unique(truth_labels[p & t]).size  # reference components hit by the prediction
    touching = np.unique(pred_labels[p & t]).size  # predicted components that touch the reference
    return LesionCounts(n_pred, n_truth, tp=found, fp=n_pred - touching, fn=n_truth - found)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face neighbour outside the mask (outside the array counts)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_STRUCTURES[6], border_value=0)


def hausdorff95(pred: np.ndarray, truth: np.ndarray,
                spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance between the mask surfaces, in mm.

    ``spacing`` is the voxel size per array axis. The larger of the two directed 95th
    percentiles (linear interpolation) is returned. Both masks empty: 0.0; one empty: ``inf``.
    """
    check_same_shape(pred, truth)
    p, t = binarize(pred), binarize(truth)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not (has_p or has_t):
        return 0.0
    if not (has_p and has_t):
        return float("inf")
    # The union's bounding box (plus one empty voxel each side) holds both surfaces, so distances
    # computed inside it equal those on the whole grid at a fraction of the cost.
    box = ndimage.find_objects((p | t).astype(np.uint8))[0]
    p, t = (np.pad(m[box], 1) for m in (p, t))
    surf_p, surf_t = _surface(p), _surface(t)
    spacing = tuple(float(s) for s in spacing)
    to_t = ndimage.distance_transform_edt(~surf_t, sampling=spacing)[surf_p]
    to_p = ndimage.distance_transform_edt(~surf_p, sampling=spacing)[surf_t]
    return float(max(np.percentile(to_t, 95), np.percentile(to_p, 95)))


@dataclass(frozen=True)
class CaseMetrics:
    """All metrics of one prediction against one reference (see the module docstring)."""

    confusion: Confusion
    dsc: float
    precision: float
    recall: float
    pred_voxels: int
    truth_voxels: int
    volume_diff_voxels: int
    volume_diff_mm3: float
    pred_ml: float
    truth_ml: float
    lesions: LesionCounts
    hd95_mm: float
    connectivity: int

    @property
    def lesion_count_diff(self) -> int:
        return self.lesions.count_difference

    @property
    def lesion_f1(self) -> float:
        return self.lesions.f1


def compare_masks(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  voxel_volume_mm3: float | None = None, connectivity: int = 6) -> CaseMetrics:
    """Every metric of ``pred`` against the reference ``truth`` (3D, same shape, binarised at 0.5).

    ``spacing``: voxel size in mm per axis (HD95); ``voxel_volume_mm3`` defaults to its product
    (pass ``|det(affine[:3, :3])|`` for oblique grids).
    """
    check_same_shape(pred, truth)
    p, t = binarize(pred), binarize(truth)
    if p.ndim != 3:
        raise InputError(f"expected 3D masks, got shape {p.shape}.")
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise InputError(f"voxel spacing must be three positive numbers in mm, got {tuple(spacing)}.")
    voxel_mm3 = float(np.prod(spacing)) if voxel_volume_mm3 is None else float(voxel_volume_mm3)
    c = confusion(p, t)
    n_p, n_t = c.tp + c.fp, c.tp + c.fn
    return CaseMetrics(
        confusion=c, dsc=dice(c), precision=precision(c), recall=recall(c),
        pred_voxels=n_p, truth_voxels=n_t, volume_diff_voxels=abs(n_p - n_t),
        volume_diff_mm3=abs(n_p - n_t) * voxel_mm3,
        pred_ml=n_p * voxel_mm3 / 1000.0, truth_ml=n_t * voxel_mm3 / 1000.0,
        lesions=lesion_counts(p, t, connectivity), hd95_mm=hausdorff95(p, t, spacing),
        connectivity=connectivity)
