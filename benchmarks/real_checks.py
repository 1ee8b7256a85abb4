"""Do the weights work on real scans? A checkpoint scored on the checks that decide it.

    python benchmarks/real_checks.py [--weights FILE] [--checks ...] [--json out.json]

Checks (data from ``../shared/data``; each a group of rows, with its target):

* stroke-t2: a real chronic stroke patient's T2 (skull on) against its hand-drawn mask.
* ms-t1: two real MS patients' T1 (brain-extracted); a stroke model should report < 5 mL.
* healthy-head: the ch2 T1, a whole head (skull, eyes, neck) without a lesion; < 5 mL. ch2 is a
  training anatomy, so this is a floor, not a test of generalisation: what it catches is false
  lesion outside the brain (the orbits) that a user's whole-head scan would show too.
* clinical: a thick-slice clinical domain, rebuilt from ``--seed``: MS patient 26's T1 as the
  anatomy, held-out LESYMAP lesions 81.. painted with the old appearance model
  (``synth.synthesize_case(appearance=None)``), then 4-6 mm axial slices (Gaussian of FWHM t
  along the superior-inferior axis, every t-th slice kept). Mean DSC >= 0.5.
* carved-t1: real T1 anatomy (MS patient 26, unseen in training; ch2 skull on; MS patient 19)
  with held-out LESYMAP lesions 81.. carved in as chronic tissue loss by ``carve.py`` (the
  scan's own CSF and grey-matter values, grey-scale erosion for the ex-vacuo widening: not the
  training synthesis), every second lesion mirrored to the right. Mean DSC >= 0.5.
* old-synthetic (``--heldout DIR``): cases of ``scripts/make_training_data.sh``. Mean DSC >= 0.75.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from napari_dunet import metrics, synth
from napari_dunet.checkpoint import load_checkpoint
from napari_dunet.cpu_dtype import cpu_name
from napari_dunet.io import Volume, find_cases, load_mask, load_volume, save_mask, save_volume
from napari_dunet.options import SegmentOptions
from napari_dunet.segmentation import (checkpoint_preprocessing, checkpoint_seed_threshold,
                                       checkpoint_threshold, segment)
from napari_dunet.weights import default_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))  # carve.py beside this script

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHECKS = ("stroke-t2", "ms-t1", "healthy-head", "clinical", "carved-t1", "old-synthetic")
CARVED_ANATOMIES = ("real/ms_t1/patient26/T1w.nii.gz", "ch2.nii.gz", "real/ms_t1/patient19/T1w.nii.gz")
TARGETS = {"stroke-t2": ("dsc", ">=", 0.4), "ms-t1": ("max_pred_ml", "<", 5.0),
           "healthy-head": ("max_pred_ml", "<", 5.0),
           "clinical": ("mean_dsc", ">=", 0.5), "carved-t1": ("mean_dsc", ">=", 0.5),
           "old-synthetic": ("mean_dsc", ">=", 0.75)}


class Segmenter:
    """The checkpoint, segmenting as ``dunet segment`` does; every call timed."""

    def __init__(self, weights: Path, device: str):
        self.model, self.meta = load_checkpoint(weights)
        self.options = SegmentOptions(device=device)

    def __call__(self, volume: Volume) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        result = segment(volume, self.model, self.meta, self.options)
        return result.mask, time.perf_counter() - t


def score(case: str, pred: np.ndarray, truth: np.ndarray | None, volume: Volume,
          seconds: float) -> dict:
    """One row: predicted mL, and against ``truth`` DSC, precision, recall and true mL."""
    row = {"case": case, "pred_ml": float(np.count_nonzero(pred)) * volume.voxel_volume_ml,
           "seconds": seconds}
    if truth is not None:
        c = metrics.confusion(pred, truth)
        row.update(dsc=metrics.dice(c), precision=metrics.precision(c), recall=metrics.recall(c),
                   true_ml=float(np.count_nonzero(truth)) * volume.voxel_volume_ml)
    return row


def thick_slices(image: Volume, mask: Volume,
                 rng: np.random.Generator) -> tuple[Volume, Volume, float]:
    """Resliced to a thickness t of 4, 5 or 6 mm along the superior-inferior axis: blurred with
    a Gaussian of FWHM t along it and every t-th slice kept (mask: blurred, then >= 0.5)."""
    t = float(rng.choice([4, 5, 6]))
    axis = [c in "SI" for c in nib.aff2axcodes(image.affine)].index(True)
    spacing = image.voxel_size[axis]
    step = max(int(round(t / spacing)), 1)
    keep = [slice(None)] * 3
    keep[axis] = slice(0, None, step)
    affine = image.affine.copy()
    affine[:3, axis] *= step  # first kept slice is index 0: the origin stays its centre

    def reslice(data: np.ndarray) -> np.ndarray:
        blurred = ndi.gaussian_filter1d(data.astype(np.float32), t / 2.355 / spacing, axis=axis)
        return blurred[tuple(keep)]

    data = reslice(image.data)
    if np.issubdtype(image.data.dtype, np.integer):
        info = np.iinfo(image.data.dtype)
        data = np.clip(np.rint(data), info.min, info.max).astype(image.data.dtype)
    return (Volume(data, affine, image.header.copy()),
            Volume((reslice(mask.data) >= 0.5).astype(np.uint8), affine, mask.header.copy()), t)


def t2_like(image: Volume, brain: np.ndarray) -> Volume:
    """The T1 case with its tissue order reversed as in a T2 scan: the brain's CSF, grey- and
    white-matter levels (a 3-class fit) mapped to 1.0, 0.62 and 0.42 (piecewise linear; below
    half the CSF level, background and its noise, to at most 0.1), so a chronic lesion is
    bright. Float32, on a scale of 1000."""
    csf, gm, wm = synth._three_class_means(image.data[brain].astype(np.float32))
    data = np.interp(image.data.astype(np.float32), [0.0, csf / 2, csf, gm, wm, 2 * wm],
                     [0.0, 100.0, 1000.0, 620.0, 420.0, 350.0]).astype(np.float32)
    return Volume(data, image.affine, image.header, image.path)


def save_case(folder: Path, name: str, image: Volume, mask: Volume) -> None:
    """Write a case as ``sub-<name>_T1w`` and ``sub-<name>_mask`` (BIDS names, underscores
    dropped), so that ``dunet segment`` / ``evaluate`` and ``choose_threshold.py`` pair them."""
    stem = folder / f"sub-{name.replace('_', '')}"
    save_volume(image.data, image, Path(f"{stem}_T1w.nii.gz"), dtype=np.float32, overwrite=True)
    save_mask(mask.data, mask, Path(f"{stem}_mask.nii.gz"), overwrite=True)


def clinical_cases(data: Path, n: int, seed: int, save_dir: Path | None, contrast: str = "t1"):
    """Yield (name, image, mask, thickness, build seconds) of the thick-slice clinical domain
    (the anatomy, built once, counts in the first case's build seconds); ``contrast="t2"``:
    its T2-like variant (``t2_like``)."""
    t = time.perf_counter()
    t1 = load_volume(data / "real" / "ms_t1" / "patient26" / "T1w.nii.gz")
    t1.data = np.clip(t1.data.astype(np.float32), 0, None)
    anatomy = synth.anatomy_from_t1(t1)
    for i, lesion_id in enumerate(range(81, 81 + n)):
        t = t if i == 0 else time.perf_counter()
        rng = np.random.default_rng([seed, i])
        lesion = load_volume(data / "lesions" / f"Subject_{lesion_id:03d}.nii.gz")
        image, mask = synth.synthesize_case(anatomy, lesion, rng, appearance=None)
        if contrast == "t2":
            image = t2_like(image, anatomy.brain)
        image, mask, thickness = thick_slices(image, mask, rng)
        name = f"clinical{'_t2' if contrast == 't2' else ''}_{lesion_id:03d}"
        if save_dir is not None:
            save_case(save_dir, name, image, mask)
        yield name, image, mask, thickness, time.perf_counter() - t


def carved_cases(data: Path, n: int, seed: int, save_dir: Path | None):
    """Yield (name, image, mask, carving parameters) of the carved-t1 check."""
    from carve import carve

    anatomies = {}
    for i, lesion_id in enumerate(range(81, 81 + n)):
        path = CARVED_ANATOMIES[i % len(CARVED_ANATOMIES)]
        if path not in anatomies:
            t1 = load_volume(data / path)
            t1.data = np.clip(t1.data.astype(np.float32), 0, None)
            anatomies[path] = synth.anatomy_from_t1(t1)
        lesion = load_volume(data / "lesions" / f"Subject_{lesion_id:03d}.nii.gz")
        image, mask, params = carve(anatomies[path], lesion, np.random.default_rng([seed, i]),
                                    mirror=i % 2 == 1)
        name = f"carved_{Path(path).parent.name if 'ms_t1' in path else 'ch2'}_{lesion_id:03d}"
        if save_dir is not None:
            save_case(save_dir, name, image, mask)
        yield name, image, mask, params


def run_check(check: str, args: argparse.Namespace, segment: Segmenter) -> list[dict]:
    """The rows of one check."""
    rows = []
    if check == "stroke-t2":
        folder = args.data / "real" / "stroke_t2"
        volume = load_volume(folder / "T2.nii.gz")
        pred, seconds = segment(volume)
        rows.append(score("T2", pred, load_mask(folder / "lesionT2.nii.gz").data, volume, seconds))
    elif check == "ms-t1":
        for patient in ("patient19", "patient26"):
            volume = load_volume(args.data / "real" / "ms_t1" / patient / "T1w.nii.gz")
            pred, seconds = segment(volume)
            rows.append(score(patient, pred, None, volume, seconds))
    elif check == "healthy-head":
        volume = load_volume(args.data / "ch2.nii.gz")
        pred, seconds = segment(volume)
        rows.append(score("ch2", pred, None, volume, seconds))
    elif check == "clinical":
        for name, image, mask, thickness, build in clinical_cases(
                args.data, args.clinical_cases, args.seed, args.save_dir):
            pred, seconds = segment(image)
            rows.append(score(name, pred, mask.data, image, seconds)
                        | {"thickness_mm": thickness, "build_seconds": build})
    elif check == "carved-t1":
        for name, image, mask, params in carved_cases(args.data, args.carved_cases, args.seed,
                                                      args.save_dir):
            pred, seconds = segment(image)
            rows.append(score(name, pred, mask.data, image, seconds) | params)
    else:
        for case in find_cases(args.heldout)[:args.limit]:
            volume = load_volume(case.image)
            truth = case.load_mask(volume)
            pred, seconds = segment(volume)
            truth = None if truth is None else truth.data
            rows.append(score(case.name, pred, truth, volume, seconds))
    return [{"check": check, **row} for row in rows]


def summary(check: str, rows: list[dict]) -> dict:
    """The check's number, its target and whether it is met."""
    key, op, target = TARGETS[check]
    value = {"dsc": lambda: rows[0]["dsc"], "max_pred_ml": lambda: max(r["pred_ml"] for r in rows),
             "mean_dsc": lambda: float(np.mean([r["dsc"] for r in rows if "dsc" in r]))}[key]()
    return {"metric": key, "value": value, "target": f"{op} {target}",
            "pass": bool(value >= target if op == ">=" else value < target)}


def table(r: dict) -> str:
    fields = ("dsc", "precision", "recall", "pred_ml", "true_ml", "thickness_mm", "build_seconds",
              "seconds")
    lines = [f"napari-dunet real-scan checks, weights {r['weights']} (threshold {r['threshold']}, "
             f"seed threshold {r['seed_threshold']}, scheme {r['scheme']}); device {r['device']}, "
             f"CPU {r['cpu']}; seed {r['seed']}", "",
             f"{'check':<15}{'case':<16}" + "".join(f"{f:>14}" for f in fields)]
    for row in r["rows"]:
        cells = "".join(f"{row[f]:>14.3f}" if f in row else f"{'-':>14}" for f in fields)
        lines.append(f"{row['check']:<15}{row['case']:<16}{cells}")
    lines.append("")
    for check, s in r["summary"].items():
        lines.append(f"{check:<15}{s['metric']} = {s['value']:.3f} (target {s['target']}): "
                     f"{'PASS' if s['pass'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=default_checkpoint(), metavar="FILE",
                        help="checkpoint (default: the bundled default weights)")
    parser.add_argument("--checks", nargs="+", choices=CHECKS,
                        help="default: every check that has its data")
    parser.add_argument("--data", type=Path, default=DATA, metavar="DIR",
                        help=f"shared data (default {DATA})")
    parser.add_argument("--heldout", type=Path, metavar="DIR",
                        help="old-synthetic cases (scripts/make_training_data.sh)")
    parser.add_argument("--seed", type=int, default=0, help="clinical domain's seed (default 0)")
    parser.add_argument("--clinical-cases", type=int, default=12, choices=range(1, 21),
                        metavar="N", help="clinical cases, lesions 81.. (1-20, default 12)")
    parser.add_argument("--carved-cases", type=int, default=9, choices=range(1, 21),
                        metavar="N", help="carved-t1 cases, lesions 81.. (1-20, default 9)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N old-synthetic cases")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="write the results here (- : print them instead of the table)")
    parser.add_argument("--save-dir", type=Path, metavar="DIR",
                        help="write the clinical and carved images and masks here")
    args = parser.parse_args(argv)
    if args.weights is None:
        parser.error("no bundled default weights; pass --weights FILE")
    available = {"stroke-t2": (args.data / "real" / "stroke_t2").is_dir(),
                 "ms-t1": (args.data / "real" / "ms_t1").is_dir(),
                 "healthy-head": (args.data / "ch2.nii.gz").is_file(),
                 "clinical": (args.data / "lesions").is_dir(),
                 "carved-t1": (args.data / "lesions").is_dir(),
                 "old-synthetic": args.heldout is not None and args.heldout.is_dir()}
    checks = args.checks or [c for c in CHECKS if available[c]]
    if missing := [c for c in checks if not available[c]]:
        parser.error(f"no data for {', '.join(missing)} (--data {args.data}, --heldout)")
    if args.heldout is not None and not args.heldout.is_dir():
        parser.error(f"--heldout {args.heldout}: no such folder")
    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
    segment = Segmenter(args.weights, args.device)
    rows = [row for check in checks for row in run_check(check, args, segment)]
    results = {"weights": str(args.weights), "threshold": checkpoint_threshold(segment.meta),
               "seed_threshold": checkpoint_seed_threshold(segment.meta),
               "scheme": checkpoint_preprocessing(segment.meta), "device": args.device,
               "cpu": cpu_name(),
               "seed": args.seed, "checks": checks,
               "summary": {c: summary(c, [r for r in rows if r["check"] == c]) for c in checks},
               "rows": rows}
    text = json.dumps(results, indent=1)
    if args.json and str(args.json) == "-":
        print(text)
        return 0
    if args.json:
        args.json.write_text(text + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
