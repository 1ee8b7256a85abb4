"""The lesion report: a T1 and its lesion mask normalised to MNI152 2009a, and per lesion its
volume, side, MNI centroid and the regions it overlaps (``dunet report``, docs/report.md).

``make_report`` does the work and returns a ``Report``; ``write_report`` writes its files;
``report_case`` does both, as ``dunet report`` and the Segment lesion panel run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .io import Volume
from .registration import (Cancel, MniTransform, Progress, load_template, quality,
                           register_to_mni, sample)

#: below this correlation with the template the normalisation needs checking by eye
POOR_QUALITY = 0.6
#: regions under this share of a lesion are left out of its list
MIN_REGION_PERCENT = 1.0
CST_NOTE = ("corticospinal tract overlap: not reported; no corticospinal tract map with a "
            "licence that allows shipping it is available offline.")


@dataclass
class Report:
    """Everything ``write_report`` writes: the numbers (``summary``, JSON-ready) and the images
    on the 1 mm MNI grid (``mni_affine``)."""

    summary: dict
    mni_t1: np.ndarray
    mni_mask: np.ndarray
    mni_affine: np.ndarray
    transform: MniTransform
    warnings: list[str] = field(default_factory=list)


def check_same_grid(scan: Volume, mask: Volume) -> None:
    """Raise ``InputError`` unless the mask lies on the scan's voxel grid."""
    if mask.data.shape != scan.data.shape or not np.allclose(mask.affine, scan.affine, atol=1e-3):
        raise InputError(f"{mask.path or 'the mask'} and {scan.path or 'the scan'} are on "
                         f"different grids (shape {mask.data.shape} against "
                         f"{scan.data.shape}, or another affine); give the mask drawn on this "
                         f"scan.")


def make_report(scan: Volume, mask: Volume, *, mm: float = 2.0, nonlinear: bool = True,
                transform: MniTransform | None = None, progress: Progress | None = None,
                cancel: Cancel | None = None, mask_label: str | None = None) -> Report:
    """Register ``scan`` to MNI (the lesion out of the cost) and summarise each lesion of
    ``mask`` (binary, on the scan's grid; an empty mask gives 0 lesions). A ``transform``
    given (of this scan) is used instead of a new registration; ``cancel`` stops the
    registration (``Cancelled``). ``mask_label`` names the mask in the report (default: its
    file)."""
    from .atlas import NAMES, lobe_atlas

    check_same_grid(scan, mask)
    say = progress or (lambda message: None)
    lesion = np.asarray(mask.data) > 0
    if transform is None:
        say("registering to MNI152 2009a")
        transform = register_to_mni(scan, lesion, mm=mm, nonlinear=nonlinear, progress=say,
                                    cancel=cancel)
    atlas, mni_affine = lobe_atlas()
    template, _ = load_template("t1")
    gm, _ = load_template("gm")
    shape = atlas.shape
    say("resampling onto the MNI grid")
    voxels = transform.native_voxels(scan.affine, shape, mni_affine)
    mni_t1 = sample(scan.data, voxels)
    labels, count = ndi.label(lesion, structure=np.ones((3, 3, 3)))
    mni_mask = sample(lesion, voxels) >= 0.5
    mni_labels = np.where(mni_mask, sample(labels, voxels, order=0).round().astype(np.int32), 0)
    brain = template > 10
    score = quality(mni_t1, template, brain, mni_mask)
    voxel_ml = scan.voxel_volume_ml
    native_ml = np.bincount(labels.ravel(), minlength=count + 1)[1:] * voxel_ml
    centroids = ndi.center_of_mass(lesion, labels, range(1, count + 1)) if count else []
    lesions = []
    for number, (ml, centroid) in enumerate(zip(native_ml, centroids), 1):
        where = mni_labels == number
        if not where.any():  # smaller than the MNI voxels: the voxel its centre maps to
            where = np.zeros(shape, bool)
            where[_nearest_mni_voxel(transform, scan.affine, centroid, mni_affine, shape)] = True
        lesions.append({"number": number, "native_ml": round(float(ml), 3),
                        **_describe(where, mni_affine, atlas, NAMES, gm)})
    lesions.sort(key=lambda item: -item["native_ml"])
    for rank, item in enumerate(lesions, 1):
        item["number"] = rank
    overall = _describe(mni_mask, mni_affine, atlas, NAMES, gm) if mni_mask.any() else {}
    warnings = []
    if score < POOR_QUALITY:
        warnings.append(f"poor registration: the normalised T1 correlates {score:.2f} with the "
                        f"template (below {POOR_QUALITY}); check the PNG before using the "
                        f"MNI numbers.")
    summary = {
        "scan": str(scan.path) if scan.path else None,
        "mask": mask_label or (str(mask.path) if mask.path else None),
        "template": "MNI152 2009a nonlinear symmetric (ICBM 2009a, 1 mm)",
        "atlas": "napari-dunet coarse hemisphere x lobe atlas (docs/report.md)",
        "registration": {"method": transform.method,
                         "resolution_mm": round(float(abs(transform.affine[0, 0])), 3),
                         "lesion_masked": bool(lesion.any()),
                         "template_correlation": round(score, 3),
                         "quality": "poor" if score < POOR_QUALITY else "good"},
        "lesion_count": count,
        "total_native_ml": round(float(native_ml.sum()), 3),
        "total_mni_ml": round(float(mni_mask.sum()) * _voxel_ml(mni_affine), 3),
        "hemisphere": overall.get("hemisphere", "none"),
        "regions": overall.get("regions", []),
        "lesions": lesions,
        "corticospinal_tract": None,
        "notes": [CST_NOTE],
        "warnings": warnings,
    }
    return Report(summary, mni_t1, mni_mask, mni_affine, transform, warnings)


def report_case(scan: Volume, mask: Volume, folder: str | Path, name: str, *,
                overwrite: bool = False, mm: float = 2.0, nonlinear: bool = True,
                transform: MniTransform | None = None, progress: Progress | None = None,
                cancel: Cancel | None = None, mask_label: str | None = None
                ) -> tuple[Report, dict[str, Path]]:
    """``make_report`` then ``write_report`` into ``folder`` (nothing is written when the
    registration fails or is stopped): the report and the paths of its files."""
    report = make_report(scan, mask, mm=mm, nonlinear=nonlinear, transform=transform,
                         progress=progress, cancel=cancel, mask_label=mask_label)
    return report, write_report(report, folder, name, overwrite=overwrite)


def _voxel_ml(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0


def _describe(where: np.ndarray, affine: np.ndarray, atlas: np.ndarray, names: dict[int, str],
              gm: np.ndarray) -> dict:
    """Volume, side, centroid, regions and grey-matter share of a region of the MNI grid."""
    ijk = np.argwhere(where)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    left = float(np.mean(xyz[:, 0] < 0)) * 100
    side = "left" if left >= 90 else "right" if left <= 10 else "both"
    found = atlas[where]
    counts = np.bincount(found, minlength=max(names) + 1)
    regions = [{"region": names.get(k, "outside the brain"), "percent": round(100 * n / found.size, 1)}
               for k, n in enumerate(counts) if n and 100 * n / found.size >= MIN_REGION_PERCENT]
    regions.sort(key=lambda r: -r["percent"])
    return {"mni_ml": round(len(ijk) * _voxel_ml(affine), 3), "hemisphere": side,
            "left_percent": round(left, 1),
            "centroid_mni_mm": [round(float(v), 1) for v in xyz.mean(0)],
            "regions": regions, "grey_matter_percent": round(float(gm[where].mean()) * 100, 1)}


def _nearest_mni_voxel(transform: MniTransform, native_affine: np.ndarray,
                       centroid: tuple[float, ...], mni_affine: np.ndarray,
                       shape: tuple[int, ...]) -> tuple[int, ...]:
    """The MNI voxel whose native point lies nearest a native voxel position."""
    point = native_affine[:3, :3] @ np.asarray(centroid) + native_affine[:3, 3]
    distance = np.linalg.norm(transform.coords - point, axis=-1)
    coarse = np.unravel_index(np.argmin(distance), distance.shape)
    world = transform.affine[:3, :3] @ np.asarray(coarse) + transform.affine[:3, 3]
    fine = np.linalg.inv(mni_affine) @ np.r_[world, 1.0]
    return tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(fine[:3], shape))


# ---- files ------------------------------------------------------------------------------

#: the files ``write_report`` writes for a case, by key (``report.json`` last)
OUTPUTS = {"t1": "_T1w_mni.nii.gz", "mask": "_mask_mni.nii.gz",
           "transform": "_mni_to_native.nii.gz", "affine": "_mni_to_native_affine.txt",
           "png": "_report.png", "markdown": "_report.md", "json": "_report.json"}


def output_paths(folder: str | Path, name: str) -> dict[str, Path]:
    """Where ``write_report`` puts each file of case ``name``."""
    return {key: Path(folder) / f"{name}{suffix}" for key, suffix in OUTPUTS.items()}


def write_report(report: Report, folder: str | Path, name: str, *,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write the MNI T1 and mask, the transform (coordinate map + affine), the PNG, the
    Markdown and, last, the JSON (its presence means the case is complete)."""
    import json

    import nibabel as nib

    from .figures import save_overlay_png
    from .io import atomic_write, save_volume

    paths = output_paths(folder, name)
    mni = nib.Nifti1Header()
    mni.set_qform(report.mni_affine, 4)
    mni.set_sform(report.mni_affine, 4)  # code 4: MNI152
    grid = Volume(report.mni_mask, report.mni_affine, mni)
    save_volume(report.mni_t1, grid, paths["t1"], dtype=np.float32, overwrite=overwrite)
    save_volume(report.mni_mask, grid, paths["mask"], dtype=np.uint8, overwrite=overwrite)
    report.transform.save(paths["transform"], overwrite=overwrite)
    atomic_write(paths["affine"], lambda tmp: np.savetxt(
        tmp, report.transform.linear, fmt="%.6f",
        header="affine part: MNI world (RAS mm) -> native world (RAS mm)"), overwrite)
    template, _ = load_template("t1")
    save_overlay_png(paths["png"], Volume(report.mni_t1, report.mni_affine),
                     {"template brain": template > 10, "lesion": report.mni_mask},
                     n_slices=5, title=f"{name} on MNI152 2009a", overwrite=overwrite)
    text = markdown(report.summary, name, paths["png"].name)
    atomic_write(paths["markdown"], lambda tmp: tmp.write_text(text), overwrite)
    blob = json.dumps(report.summary, indent=2) + "\n"
    atomic_write(paths["json"], lambda tmp: tmp.write_text(blob), overwrite)
    return paths


def markdown(summary: dict, name: str, png: str | None = None) -> str:
    """The report as Markdown: the totals, then a table of lesions and their regions."""
    reg = summary["registration"]
    lines = [f"# Lesion report: {name}", "",
             f"- scan: `{summary['scan']}`", f"- mask: `{summary['mask']}`",
             f"- lesions: {summary['lesion_count']}, total {summary['total_native_ml']:.2f} mL "
             f"native, {summary['total_mni_ml']:.2f} mL in MNI space",
             f"- hemisphere: {summary['hemisphere']}",
             f"- registration: {reg['method']} to {summary['template']} at "
             f"{reg['resolution_mm']:g} mm, lesion {'masked' if reg['lesion_masked'] else 'none'}; "
             f"correlation with the template {reg['template_correlation']:.2f} "
             f"({reg['quality']})"]
    lines += [f"- **warning:** {w}" for w in summary["warnings"]]
    lines += [f"- {note}" for note in summary["notes"]]
    if png:
        lines += ["", f"![{name} on MNI152 2009a]({png})"]
    if summary["lesions"]:
        lines += ["", "| # | native mL | MNI mL | side (% left) | centroid MNI mm | grey matter % "
                  "| regions (% of the lesion) |", "|---|---|---|---|---|---|---|"]
        for item in summary["lesions"]:
            regions = ", ".join(f"{r['region']} {r['percent']:g}" for r in item["regions"])
            x, y, z = item["centroid_mni_mm"]
            lines.append(f"| {item['number']} | {item['native_ml']:.2f} | {item['mni_ml']:.2f} | "
                         f"{item['hemisphere']} ({item['left_percent']:g}) | "
                         f"({x:g}, {y:g}, {z:g}) | {item['grey_matter_percent']:g} | {regions} |")
    else:
        lines += ["", "No lesion in the mask (0 lesions)."]
    return "\n".join(lines) + "\n"
