"""Evaluating predicted lesion masks against references: one case or a whole cohort.

Qt-free; used by ``dunet evaluate``, ``dunet segment`` (on-the-fly scores) and the Evaluate
widget. The metrics themselves live in ``napari_dunet.metrics``.

Inputs are checked, never silently "fixed": masks of different shapes are an error naming both
shapes; so are masks whose affines differ (not on the same grid in world space: the error says
by how much), unless the caller asks to compare the voxel arrays as they are (``voxelwise``:
then a note names the difference, and the reference's voxel size is used); non-binary masks are thresholded at 0.5 with a note;
cases found on one side only are listed in ``Matching.pred_only`` / ``Matching.truth_only``.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import DunetError, InputError
from .io import Volume, as_3d, atomic_write, case_name, is_mask_name, load_volume, nifti_files
from .metrics import CaseMetrics, binarize, compare_masks, global_dice, is_binary

#: Per-case fields, in CSV column / JSON key order.
ROW_FIELDS = ("case", "dsc", "precision", "recall", "volume_diff_voxels", "volume_diff_mm3",
              "lesion_count_diff", "lesion_f1", "hd95_mm", "pred_ml", "truth_ml",
              "lesion_count_pred", "lesion_count_truth", "tp", "fp", "fn")
#: Metrics summarised over a cohort as ``<name>_mean``, ``<name>_sd`` and ``<name>_median``.
SUMMARY_METRICS = ("dsc", "precision", "recall", "lesion_f1", "hd95_mm", "volume_diff_mm3",
                   "lesion_count_diff")


@dataclass
class CaseResult:
    """The metrics of one case and the notes about its inputs (affine or value problems)."""

    case: str
    metrics: CaseMetrics
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict:
        """The documented per-case fields (``ROW_FIELDS``) plus ``notes``."""
        m = self.metrics
        return {"case": self.case, "dsc": m.dsc, "precision": m.precision, "recall": m.recall,
                "volume_diff_voxels": m.volume_diff_voxels, "volume_diff_mm3": m.volume_diff_mm3,
                "lesion_count_diff": m.lesion_count_diff, "lesion_f1": m.lesion_f1,
                "hd95_mm": m.hd95_mm, "pred_ml": m.pred_ml, "truth_ml": m.truth_ml,
                "lesion_count_pred": m.lesions.n_pred, "lesion_count_truth": m.lesions.n_truth,
                "tp": m.confusion.tp, "fp": m.confusion.fp, "fn": m.confusion.fn,
                "notes": list(self.notes)}


# ---- one case ------------------------------------------------------------------------------

def _fmt(values: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in np.round(values, 3))


def affine_difference(pred_affine: np.ndarray, truth_affine: np.ndarray,
                      tol: float = 1e-3) -> str | None:
    """Describe how two voxel-to-world affines differ (``None`` if they agree within ``tol`` mm)."""
    a, b = np.asarray(pred_affine, float), np.asarray(truth_affine, float)
    if np.allclose(a, b, atol=tol):
        return None
    parts = []
    size_a, size_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(size_a, size_b, atol=tol):
        parts.append(f"voxel size {_fmt(size_a)} mm vs {_fmt(size_b)} mm")
    cosines = np.clip(((a[:3, :3] / size_a) * (b[:3, :3] / size_b)).sum(axis=0), -1, 1)
    angle = float(np.degrees(np.arccos(cosines)).max())
    if angle > 0.01:
        parts.append(f"voxel axes differ by up to {angle:.1f} degrees")
    offset = a[:3, 3] - b[:3, 3]
    if not np.allclose(offset, 0, atol=tol):
        parts.append("origin offset (" + ", ".join(f"{v:.2f}" for v in offset) + ") mm")
    return "; ".join(parts) or "affines differ by less than the tolerance per entry"


def _binary_note(data: np.ndarray, source: str) -> str | None:
    if is_binary(data):
        return None
    return (f"{source} is not binary (values {np.min(data):g} to {np.max(data):g}); "
            f"voxels >= 0.5 count as lesion.")


def evaluate_arrays(pred: np.ndarray, truth: np.ndarray, *, name: str = "case",
                    pred_affine: np.ndarray | None = None, truth_affine: np.ndarray | None = None,
                    spacing: Sequence[float] | None = None, connectivity: int = 6,
                    pred_label: str = "the prediction",
                    truth_label: str = "the reference", voxelwise: bool = False) -> CaseResult:
    """Compare two 3D masks on the same voxel grid.

    Voxel size and voxel volume come from ``truth_affine`` if given, else ``spacing`` (mm per
    axis), else 1 mm. Raises ``InputError`` for non-3D input, NaN/Inf values, different shapes
    or (unless ``voxelwise``: then a note) different affines.
    """
    pred = as_3d(pred, pred_label)
    truth = as_3d(truth, truth_label)
    if pred.shape != truth.shape:
        raise InputError(f"{pred_label} has shape {pred.shape} but {truth_label} has shape "
                         f"{truth.shape}; both masks must be on the same voxel grid.")
    notes = [n for n in (_binary_note(pred, pred_label), _binary_note(truth, truth_label)) if n]
    if pred_affine is not None and truth_affine is not None:
        diff = affine_difference(pred_affine, truth_affine)
        if diff and not voxelwise:
            raise InputError(f"{pred_label} and {truth_label} are not on the same grid in world "
                             f"space ({diff}); resample one onto the other, or compare the voxel "
                             f"arrays as they are (dunet evaluate --voxelwise; 'Compare voxel "
                             f"arrays' in the Evaluate panel).")
        if diff:
            notes.append(f"the affines differ ({diff}); metrics are computed voxel by voxel "
                         f"with the reference's voxel size.")
    voxel_mm3 = None
    if truth_affine is not None:
        geometry = Volume(truth, np.asarray(truth_affine, float))
        spacing, voxel_mm3 = geometry.voxel_size, geometry.voxel_volume_ml * 1000.0
    metrics = compare_masks(binarize(pred), binarize(truth),
                            (1.0, 1.0, 1.0) if spacing is None else spacing,
                            voxel_volume_mm3=voxel_mm3, connectivity=connectivity)
    return CaseResult(name, metrics, notes)


def load_mask_files(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The union of one case's mask files: (boolean mask, affine of the first file, notes)."""
    union, affine, notes = None, None, []
    for path in paths:
        vol = load_volume(path)
        note = _binary_note(vol.data, str(path))
        if note:
            notes.append(note)
        if union is None:
            union, affine = binarize(vol.data), vol.affine
        elif vol.data.shape != union.shape:
            raise InputError(f"{path}: shape {vol.data.shape} differs from {paths[0]}'s "
                             f"{union.shape}; the mask files of one case must share a grid.")
        else:
            union = union | binarize(vol.data)
    if union is None:
        raise InputError("no mask files given.")
    return union, affine, notes


def evaluate_against_files(pred: np.ndarray, pred_affine: np.ndarray | None,
                           truth: Sequence[str | os.PathLike], *, name: str,
                           connectivity: int = 6, pred_label: str = "the prediction",
                           voxelwise: bool = False) -> CaseResult:
    """Evaluate a mask in memory against reference mask files (several files are united)."""
    truth_data, truth_affine, truth_notes = load_mask_files(truth)
    try:
        result = evaluate_arrays(pred, truth_data, name=name, pred_affine=pred_affine,
                                 truth_affine=truth_affine, connectivity=connectivity,
                                 pred_label=pred_label, voxelwise=voxelwise,
                                 truth_label="reference " + ", ".join(str(p) for p in truth))
    except InputError as exc:
        raise InputError(f"case {name}: {exc}") from exc
    result.notes[:0] = truth_notes
    return result


def evaluate_files(pred: Sequence[str | os.PathLike], truth: Sequence[str | os.PathLike], *,
                   name: str | None = None, connectivity: int = 6,
                   voxelwise: bool = False) -> CaseResult:
    """Evaluate one case from files (several files on one side are united, as in ATLAS R1.1)."""
    pred_data, pred_affine, pred_notes = load_mask_files(pred)
    result = evaluate_against_files(pred_data, pred_affine, truth, name=name or case_name(truth[0]),
                                    connectivity=connectivity, voxelwise=voxelwise,
                                    pred_label="prediction " + ", ".join(str(p) for p in pred))
    result.notes[:0] = pred_notes
    return result


# ---- cohorts -------------------------------------------------------------------------------

def find_masks(root: str | os.PathLike) -> dict[str, list[Path]]:
    """Mask files under a folder, grouped by case (BIDS ``sub``/``ses`` or file stem).

    If any file has a mask name (``_mask``, ``lesion``, ``_label`` ...) only those count, so T1
    images and probability maps beside them are ignored; otherwise every NIfTI file is a mask.
    """
    root = Path(root)
    files = nifti_files(root)
    masks = [p for p in files if is_mask_name(p)] or files
    cases: dict[str, list[Path]] = {}
    for path in masks:
        cases.setdefault(case_name(path), []).append(path)
    return cases


@dataclass
class Matching:
    """Prediction/reference pairs by case, and the cases found on one side only."""

    pairs: list[tuple[str, list[Path], list[Path]]]
    pred_only: list[str] = field(default_factory=list)
    truth_only: list[str] = field(default_factory=list)


def match_cases(pred: str | os.PathLike, truth: str | os.PathLike) -> Matching:
    """Pair predictions with references: two mask files, or two folders matched by case name."""
    pred, truth = Path(pred), Path(truth)
    for label, path in (("prediction", pred), ("reference", truth)):
        if not path.exists():
            raise InputError(f"{path}: no such {label} file or folder.")
    if pred.is_file() and truth.is_file():
        return Matching([(case_name(truth), [pred], [truth])])
    if pred.is_file() or truth.is_file():
        raise InputError(f"give two mask files or two folders, not a {'file' if pred.is_file() else 'folder'}"
                         f" ({pred}) and a {'file' if truth.is_file() else 'folder'} ({truth}).")
    preds, truths = find_masks(pred), find_masks(truth)
    if not truths:
        raise InputError(f"{truth}: no NIfTI masks found.")
    if not preds:
        raise InputError(f"{pred}: no NIfTI masks found.")
    common = sorted(set(preds) & set(truths))
    if not common:
        raise InputError(f"no case names in common between {pred} ({', '.join(sorted(preds)[:3])} ...) "
                         f"and {truth} ({', '.join(sorted(truths)[:3])} ...).")
    return Matching([(name, preds[name], truths[name]) for name in common],
                    pred_only=sorted(set(preds) - set(truths)),
                    truth_only=sorted(set(truths) - set(preds)))


def evaluate_cohort(matching: Matching, connectivity: int = 6, voxelwise: bool = False
                    ) -> Iterator[CaseResult | DunetError]:
    """Evaluate every matched pair, yielding results one by one (in case-name order); a case
    that cannot be scored yields its error, and the others go on."""
    for name, pred_paths, truth_paths in matching.pairs:
        try:
            yield evaluate_files(pred_paths, truth_paths, name=name, connectivity=connectivity,
                                 voxelwise=voxelwise)
        except DunetError as exc:
            yield exc


def summarize(results: Sequence[CaseResult]) -> dict:
    """Cohort statistics: ``n_cases``, ``dsc_global`` (pooled TP/FP/FN) and, for each of
    ``SUMMARY_METRICS``, mean, sample SD (ddof 1; NaN for one case) and median.

    Statistics use finite values only: ``hd95_mm`` is infinite where exactly one mask is empty,
    and ``hd95_mm_n_infinite`` counts those cases. Values are NaN when nothing is left.
    """
    rows = [r.row() for r in results]
    summary: dict = {"n_cases": len(rows)}
    for key in SUMMARY_METRICS:
        values = np.array([row[key] for row in rows], dtype=float)
        finite = values[np.isfinite(values)]
        summary[f"{key}_mean"] = float(finite.mean()) if finite.size else math.nan
        summary[f"{key}_sd"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        summary[f"{key}_median"] = float(np.median(finite)) if finite.size else math.nan
        if key == "dsc":
            summary["dsc_global"] = global_dice(r.metrics.confusion for r in results)
        if key == "hd95_mm":
            summary["hd95_mm_n_infinite"] = int(values.size - finite.size)
    return summary


def _json_safe(value):
    """JSON has no NaN/Infinity: undefined or infinite numbers become ``None`` (``null``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def report(results: Sequence[CaseResult], matching: Matching | None = None,
           connectivity: int = 6) -> dict:
    """JSON-ready report: ``cases`` (rows), ``summary``, ``connectivity`` and ``unmatched``
    (``pred_only``/``truth_only`` case names). Infinite/undefined numbers are ``None``."""
    return _json_safe({
        "cases": [r.row() for r in results],
        "summary": summarize(results),
        "connectivity": connectivity,
        "unmatched": {"pred_only": list(matching.pred_only) if matching else [],
                      "truth_only": list(matching.truth_only) if matching else []},
    })


def _csv_value(value) -> object:
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, list):
        return " | ".join(value)
    return value


def csv_text(results: Sequence[CaseResult]) -> str:
    """CSV of one row per case (``ROW_FIELDS`` + ``notes``), then rows ``mean``, ``sd``,
    ``median`` (the ``SUMMARY_METRICS`` columns) and ``global`` (pooled DSC in ``dsc``).
    Infinite HD95 is written ``inf``; undefined values are left empty."""
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*ROW_FIELDS, "notes"], lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({k: _csv_value(v) for k, v in result.row().items()})
    summary = summarize(results)
    for stat in ("mean", "sd", "median"):
        writer.writerow({"case": stat, **{k: _csv_value(summary[f"{k}_{stat}"])
                                          for k in SUMMARY_METRICS}})
    writer.writerow({"case": "global", "dsc": summary["dsc_global"]})
    return buffer.getvalue()


def write_csv(results: Sequence[CaseResult], path: str | os.PathLike, *,
              overwrite: bool = False) -> Path:
    """Write ``csv_text(results)`` atomically (an existing file is kept unless ``overwrite``)."""
    text = csv_text(results)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite)


def plot_dsc_boxplot(results: Sequence[CaseResult], path: str | os.PathLike, *,
                     label: str = "prediction", overwrite: bool = False) -> Path:
    """Box plot of per-case DSC with every case as a dot (as in the D-UNet paper's Fig. 4),
    written as PNG atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    dsc = np.array([r.metrics.dsc for r in results], dtype=float)
    if dsc.size == 0:
        raise InputError("no evaluated cases to plot.")
    summary = summarize(results)
    fig = Figure(figsize=(3.6, 4.2), dpi=150, layout="constrained")
    ax = fig.add_subplot()
    ax.boxplot(dsc, widths=0.5, showfliers=False, medianprops={"color": "tab:red"})
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, dsc.size)
    ax.scatter(1 + jitter, dsc, s=14, color="tab:blue", alpha=0.7, zorder=3)
    ax.set_xticks([1], [label])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("DSC per case")
    sd = summary["dsc_sd"]
    ax.set_title(f"n = {dsc.size}: mean {summary['dsc_mean']:.3f}"
                 + ("" if math.isnan(sd) else f" \u00b1 {sd:.3f}")
                 + f"\nmedian {summary['dsc_median']:.3f}, global {summary['dsc_global']:.3f}",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), overwrite)
