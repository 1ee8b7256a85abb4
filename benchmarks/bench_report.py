"""How long ``dunet report`` takes and how well it normalises, on real anatomy.

    python benchmarks/bench_report.py [--cases ...] [--json] [--resolution 2]

Cases (data from ``../shared/data``):

* sample: the bundled sample (ch2 at 1.5 mm, a left MCA lesion painted in).
* ch2-right: ch2 whole head at 1 mm (skull, eyes, neck) with LESYMAP lesion 90 mirrored to the
  right and carved in (``carve.py``): the time of a whole-head 1 mm T1.
* ch2-right-tilted: the same scan turned (12, -8, 6 degrees) and shifted (20, -15, 10 mm) as a
  head lies in a scanner, stored in radiological order (LAS): the side must stay right and the
  MNI mask must match the untilted one's (DSC).
* stroke-t2: a real chronic stroke patient's T2 in native space (not a T1: the registration
  quality should be reported poor); the expected side is the lesion's side of the head's centre.
* ms-t1: MS patient 19's T1 (brain-extracted, already in MNI space, LAS): DSC of the normalised
  mask with the mask as it lies.

Columns: seconds (wall, and the CPU time of all threads: on a busy machine the wall time
overstates what an idle one takes), correlation with the template in its brain, lesions, native and MNI mL and
their ratio, the side found and expected, and the DSC where there is one to compare with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from napari_dunet import metrics, synth
from napari_dunet.cpu_dtype import cpu_name
from napari_dunet.io import Volume, load_mask, load_volume
from napari_dunet.registration import load_template, resample
from napari_dunet.report import make_report

sys.path.insert(0, str(Path(__file__).resolve().parent))  # carve.py beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CASES = ("sample", "ch2-right", "ch2-right-tilted", "stroke-t2", "ms-t1")


def carved_ch2() -> tuple[Volume, Volume]:
    from carve import carve

    t1 = load_volume(DATA / "ch2.nii.gz")
    t1.data = t1.data.astype(np.float32)
    lesion = load_volume(DATA / "lesions" / "Subject_090.nii.gz")
    image, mask, _ = carve(synth.anatomy_from_t1(t1), lesion, np.random.default_rng(90),
                           mirror=True)
    return image, mask


def tilted(volume: Volume, order: int) -> Volume:
    """The volume turned and shifted in the world, on a LAS grid of the same voxels."""
    move = np.eye(4)  # new world -> old world
    move[:3, :3] = Rotation.from_euler("xyz", [12, -8, 6], degrees=True).as_matrix()
    move[:3, 3] = [20.0, -15.0, 10.0]
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = volume.data.shape[0] - 1
    grid = volume.affine @ flip  # LAS, same field of view
    data = resample(volume.data, volume.affine, volume.data.shape, move @ grid, order=order)
    return Volume(data, grid)


def native_side(scan: Volume, mask: Volume) -> str:
    """Which side of the head's centre the lesion lies on (native world x)."""
    from napari_dunet.tissue import head_mask

    def mean_x(where: np.ndarray) -> float:
        ijk = np.argwhere(where)
        return float((ijk @ scan.affine[:3, :3].T + scan.affine[:3, 3])[:, 0].mean())

    return "left" if mean_x(mask.data > 0) < mean_x(head_mask(scan.data, step=1)) else "right"


def on_template_grid(mask: Volume) -> np.ndarray:
    """A mask already in MNI space, taken onto the 2009a 1 mm grid through world coordinates."""
    t1, affine = load_template("t1")
    return resample(mask.data.astype(np.float32), mask.affine, t1.shape, affine, order=1) >= 0.5


def row(name: str, scan: Volume, mask: Volume, expected: str, resolution: float,
        truth: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    start, cpu = time.perf_counter(), time.process_time()
    report = make_report(scan, mask, mm=resolution)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    s = report.summary
    dsc = (metrics.dice(metrics.confusion(report.mni_mask, truth))
           if truth is not None else None)
    return {"case": name, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "correlation": s["registration"]["template_correlation"],
            "quality": s["registration"]["quality"], "lesions": s["lesion_count"],
            "native_ml": s["total_native_ml"], "mni_ml": s["total_mni_ml"],
            "ratio": round(s["total_mni_ml"] / max(s["total_native_ml"], 1e-9), 3),
            "side": s["hemisphere"], "expected_side": expected,
            "dsc": None if dsc is None else round(dsc, 3)}, report.mni_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--resolution", type=float, default=2.0, help="registration mm")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rows, untilted = [], None
    sample = ROOT / "src" / "napari_dunet" / "sample_data"
    for case in args.cases:
        if case == "sample":
            scan = load_volume(sample / "sub-ch2_T1w.nii.gz")
            mask = load_mask(sample / "sub-ch2_label-L_desc-T1lesion_mask.nii.gz")
            result, _ = row(case, scan, mask, "left", args.resolution)
        elif case in ("ch2-right", "ch2-right-tilted"):
            scan, mask = carved_ch2()
            if case == "ch2-right-tilted":
                scan, mask = tilted(scan, 1), tilted(mask, 0)
            result, mni = row(case, scan, mask, "right", args.resolution,
                              untilted if case == "ch2-right-tilted" else None)
            untilted = mni if case == "ch2-right" else untilted
        elif case == "stroke-t2":
            folder = DATA / "real" / "stroke_t2"
            scan, mask = load_volume(folder / "T2.nii.gz"), load_mask(folder / "lesionT2.nii.gz")
            result, _ = row(case, scan, mask, native_side(scan, mask), args.resolution)
        else:
            folder = DATA / "real" / "ms_t1" / "patient19"
            scan, mask = load_volume(folder / "T1w.nii.gz"), load_mask(folder / "lesion_mask.nii.gz")
            result, _ = row(case, scan, mask, native_side(scan, mask), args.resolution,
                            on_template_grid(mask))
        rows.append(result)
        if not args.json:
            print(result, file=sys.stderr, flush=True)
    out = {"cpu": cpu_name(), "resolution_mm": args.resolution, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"dunet report on {out['cpu']}, registration at {args.resolution:g} mm")
    print(f"{'case':<18} {'s':>6} {'CPU s':>6} {'corr':>5} {'n':>3} {'native mL':>9} {'MNI mL':>8} "
          f"{'ratio':>5} {'side':>6} {'expect':>6} {'DSC':>5}")
    for r in rows:
        dsc = "" if r["dsc"] is None else f"{r['dsc']:.3f}"
        print(f"{r['case']:<18} {r['seconds']:>6.1f} {r['cpu_seconds']:>6.1f} {r['correlation']:>5.2f} {r['lesions']:>3} "
              f"{r['native_ml']:>9.2f} {r['mni_ml']:>8.2f} {r['ratio']:>5.2f} {r['side']:>6} "
              f"{r['expected_side']:>6} {dsc:>5}")


if __name__ == "__main__":
    main()
