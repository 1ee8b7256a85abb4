"""``dunet demo``: the whole job in one command on a sample case with a known lesion.

Makes the case (a real lesion shape painted into the MNI152 template by ``napari_dunet.synth``
with its typical appearance, or the bundled sample scan when nilearn is missing), segments it,
writes the mask, an overlay PNG and the metrics against the known lesion, and opens napari when
a display is available.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from . import add_device_argument, add_output_argument, require_qt

HELP = ("Segment a sample stroke case end to end: writes the mask, an overlay PNG and the metrics "
        "against the known lesion, and shows them in napari.")
QUICK_SLICES = 4
NAME = "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output_argument(parser, default=Path("demo-output"),
                        help="output folder (default: ./demo-output)")
    parser.add_argument("--weights", type=Path,
                        help="checkpoint (.safetensors); default: the weights bundled with the package")
    parser.add_argument("--quick", action="store_true",
                        help=f"segment only the {QUICK_SLICES} axial slices through the lesion centre "
                             "(a fast check that everything works; the metrics and the overlay "
                             "cover those slices only)")
    parser.add_argument("--anatomy", default=None,
                        help="'mni' or a T1 NIfTI file to paint the lesion into (default: the "
                             "MNI152 template if nilearn is installed, else the bundled sample)")
    parser.add_argument("--lesion", type=Path,
                        help="lesion mask file to paint in (default: the bundled sample's lesion)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the case's noise and bias field (the lesion has the "
                             "synthesiser's typical look, synth.Appearance())")
    add_device_argument(parser)
    parser.add_argument("--no-viewer", action="store_true", help="do not open napari")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def output_paths(out: Path) -> dict[str, Path]:
    return {"image": out / f"{NAME}_T1w.nii.gz", "truth": out / f"{NAME}_truth_mask.nii.gz",
            "mask": out / f"{NAME}_mask.nii.gz", "overlay": out / f"{NAME}_overlay.png",
            "metrics": out / f"{NAME}_metrics.json"}


def make_case(anatomy: str | None, lesion: Path | None, seed: int):
    """(image Volume, known-lesion Volume, one-line description) of the demo case."""
    import numpy as np

    from .._sample_data import SAMPLE_IMAGE, SAMPLE_MASK
    from ..io import load_mask, load_volume
    from ..synth import Appearance, load_anatomy, synthesize_case

    if anatomy is None and lesion is None and importlib.util.find_spec("nilearn") is None:
        return (load_volume(SAMPLE_IMAGE), load_mask(SAMPLE_MASK),
                "the bundled sample scan (nilearn is not installed, so no MNI152 case was made)")
    lesion_path = lesion or SAMPLE_MASK
    image, truth = synthesize_case(load_anatomy(anatomy), load_mask(lesion_path),
                                   np.random.default_rng(seed), Appearance())
    where = "the MNI152 2009a template" if anatomy in (None, "mni") else anatomy
    return image, truth, f"lesion {lesion_path.name} painted into {where} (seed {seed})"


def quick_range(truth, geometry) -> tuple[int, int]:
    """The ``QUICK_SLICES`` axial slices (RAS+ numbering) centred on the known lesion."""
    import numpy as np

    native = np.nonzero(np.moveaxis(truth.data, geometry.axial_axis, -1).any(axis=(0, 1)))[0]
    centre = geometry.axial_index(int(round(float(np.median(native)))))
    start = min(max(centre - QUICK_SLICES // 2, 0), max(geometry.n_slices - QUICK_SLICES, 0))
    return start, min(start + QUICK_SLICES, geometry.n_slices)


def within_slices(mask, image, slice_range: tuple[int, int]):
    """``mask`` with the voxels outside the axial slices ``slice_range`` (RAS+ numbering) cleared."""
    import numpy as np

    from ..preprocessing import SliceGeometry

    geometry = SliceGeometry.for_volume(image.data.shape, image.affine)
    ras = np.array([geometry.axial_index(i) for i in range(geometry.n_slices)])
    keep = (ras >= slice_range[0]) & (ras < slice_range[1])
    shape = [1, 1, 1]
    shape[geometry.axial_axis] = -1
    return mask * keep.reshape(shape).astype(mask.dtype)


def demo_range(image, truth, quick: bool) -> tuple[int, int]:
    """The axial slices the demo segments: ``quick_range``, else all of them."""
    from ..preprocessing import SliceGeometry

    geometry = SliceGeometry.for_volume(image.data.shape, image.affine)
    return quick_range(truth, geometry) if quick else (0, geometry.n_slices)


def segment_case(image, truth, weights: Path, device: str, quick: bool):
    """``segmentation.segment`` of ``image`` over ``demo_range``, progress on stderr."""
    from ..checkpoint import load_checkpoint
    from ..inference import resolve_device
    from ..options import SegmentOptions
    from ..segmentation import segment

    start, stop = demo_range(image, truth, quick)
    print(f"segmenting {stop - start} axial slices on {resolve_device(device)} with {weights} ...")
    sys.stdout.flush()

    def progress(done: int, total: int) -> None:
        print(f"\r  {done}/{total} slices", end="\n" if done == total else "", file=sys.stderr,
              flush=True)

    model, meta = load_checkpoint(weights)
    result = segment(image, model, meta, SegmentOptions(device=device, slice_range=(start, stop)),
                     progress=progress)
    for note in result.notes:
        print(f"dunet demo: warning: {note}", file=sys.stderr)
    return result


def has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY")
                                                        or os.environ.get("WAYLAND_DISPLAY"))


def run(args: argparse.Namespace) -> int:
    from ..errors import DunetError, InputError
    from ..evaluation import evaluate_arrays, report
    from ..figures import save_overlay_png
    from ..io import atomic_write, save_mask, save_volume
    from .. import weights as bundled

    paths = output_paths(args.output)
    if not args.overwrite:
        for path in paths.values():
            if path.exists():
                raise InputError(f"{path} exists; pass --overwrite to replace it (or choose --output).")
    weights = args.weights or bundled.default_checkpoint()
    image, truth, description = make_case(args.anatomy, args.lesion, args.seed)
    save_volume(image.data, image, paths["image"], dtype=image.data.dtype.type, overwrite=args.overwrite)
    save_mask(truth.data, image, paths["truth"], overwrite=args.overwrite)
    print(f"sample case: {description}")
    print(f"  image  {paths['image']}\n  known lesion  {paths['truth']} "
          f"({float(truth.data.sum()) * image.voxel_volume_ml:.1f} mL)")
    if weights is None:
        save_overlay_png(paths["overlay"], image, {"known lesion": truth.data},
                         title="sample case (not segmented)", overwrite=args.overwrite)
        raise DunetError("no default weights are bundled with this version of napari-dunet, so the "
                         f"sample case in {args.output} was not segmented; pass --weights FILE "
                         "(a D-UNet .safetensors checkpoint).")

    segmented = segment_case(image, truth, weights, args.device, args.quick)
    mask = segmented.mask
    save_mask(mask, image, paths["mask"], overwrite=args.overwrite)
    # --quick: scored and drawn on the slices it segmented
    known = within_slices(truth.data, image, segmented.slice_range) if args.quick else truth.data
    result = evaluate_arrays(mask, known, name=NAME, pred_affine=image.affine,
                             truth_affine=image.affine, pred_label="the D-UNet mask",
                             truth_label="the known lesion")
    scores = report([result])
    scores.update(sample=description, weights=str(weights), quick=bool(args.quick),
                  slices=list(segmented.slice_range))
    text = json.dumps(scores, indent=2) + "\n"
    atomic_write(paths["metrics"], lambda tmp: tmp.write_text(text), overwrite=args.overwrite)
    m = result.metrics
    save_overlay_png(paths["overlay"], image, {"known lesion": known, "D-UNet": mask},
                     title=f"DSC {m.dsc:.2f}  precision {m.precision:.2f}  recall {m.recall:.2f}",
                     overwrite=args.overwrite)
    print(f"  D-UNet mask  {paths['mask']}\n  overlay  {paths['overlay']}\n  metrics  {paths['metrics']}")
    where = (f" on the {QUICK_SLICES} segmented slices (--quick)" if args.quick else "")
    print(f"DSC {m.dsc:.3f}  precision {m.precision:.3f}  recall {m.recall:.3f}  "
          f"lesion volume {m.pred_ml:.1f} mL (known {m.truth_ml:.1f} mL){where}")
    if args.no_viewer or not has_display():
        return 0
    try:
        require_qt()
    except DunetError as exc:  # the outputs are written: say how to see them in napari
        print(f"dunet demo: not opening napari: {exc}", file=sys.stderr)
        return 0
    show_in_napari(image, truth, mask)
    return 0


def show_in_napari(image, truth, mask) -> None:
    """Open napari with the scan, the known lesion and the D-UNet mask; returns when it closes."""
    import napari
    from napari.layers import Layer

    from ..io import Volume
    from ..layers import PREDICTION_COLORS, layer_data

    viewer = napari.Viewer(title="napari-dunet demo")
    viewer.add_layer(Layer.create(*layer_data(image, "image", name="sample T1")))
    viewer.add_layer(Layer.create(*layer_data(truth, "labels", name="known lesion", opacity=0.4)))
    viewer.add_layer(Layer.create(*layer_data(Volume(mask, image.affine, image.header), "labels",
                                              name="D-UNet lesion", colormap=PREDICTION_COLORS)))
    napari.run()
