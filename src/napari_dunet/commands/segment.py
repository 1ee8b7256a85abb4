"""``dunet segment``: lesion masks for NIfTI files and BIDS folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import add_device_argument, add_dtype_argument, add_output_argument

if TYPE_CHECKING:  # annotations only
    from ..io import Case
    from ..segmentation import SegmentationResult

HELP = "Segment stroke lesions in T1 volumes (files or BIDS/ATLAS folders)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI files or folders")
    add_output_argument(parser, required=True, help="output folder")
    parser.add_argument("--weights", type=Path, help="checkpoint (.safetensors)")
    add_device_argument(parser)
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability threshold (default: the checkpoint's, 0.5)")
    parser.add_argument("--batch-size", type=int, default=16, help="stacks per forward pass")
    add_dtype_argument(parser, help="compute dtype; auto (default): bf16 autocast on GPUs, "
                       "mixed on CPUs with bf16 instructions, else fp32; mixed: bf16, with the "
                       "slices near the threshold run again in fp32 (the fp32 mask); bf16: bf16 "
                       "only")
    parser.add_argument("--save-prob", action="store_true", help="also write <name>_prob.nii.gz")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..errors import DunetError, InputError
    from ..inference import prefetch
    from ..io import find_cases, load_volume
    from ..options import SegmentOptions
    from ..segmentation import output_paths, segment, write_outputs

    from .. import weights as bundled

    weights = args.weights or bundled.default_checkpoint()
    if weights is None:
        raise DunetError("no weights given and no default weights are bundled; pass --weights FILE.")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1, got {args.threshold}.")
    options = SegmentOptions(device=args.device, batch_size=args.batch_size,
                             precision=args.precision, threshold=args.threshold)
    options.check()
    cases = [case for item in args.inputs for case in find_cases(item)]
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise InputError(f"several inputs would write the same output name: {', '.join(sorted(dupes))}.")
    for case in cases:
        for p in output_paths(args.output, case.name, args.save_prob):
            if p is not None and p.exists() and not args.overwrite:
                raise InputError(f"{p} exists; pass --overwrite to replace it.")
    model, meta = load_checkpoint(weights, device="cpu")
    scored = any(case.masks for case in cases)  # reference masks beside the inputs: score them
    score_titles = f" {'DSC':>6} {'prec.':>6} {'recall':>6} {'true mL':>8}" if scored else ""
    print(f"{'case':<32} {'lesion mL':>10}{score_titles}  mask")
    # the next scans are read and decompressed while the network runs on this one
    for case, volume in prefetch(cases, lambda c: load_volume(c.image)):
        if isinstance(volume, Exception):
            raise volume
        result = write_outputs(segment(volume, model, meta, options), args.output, case.name,
                               save_prob=args.save_prob, overwrite=args.overwrite)
        for note in result.notes:
            print(f"dunet segment: warning: {case.name}: {note}", file=sys.stderr)
        scores = score_case(case, result) if scored else ""
        print(f"{case.name:<32} {result.lesion_ml:>10.2f}{scores}  {result.mask_path}")
        sys.stdout.flush()
    return 0


def score_case(case: Case, result: SegmentationResult) -> str:
    """DSC, precision, recall and reference volume of a new mask against the case's own masks
    (blank columns when it has none or they cannot be used; the reason goes to stderr)."""
    from ..errors import DunetError
    from ..evaluation import evaluate_against_files

    blank = f" {'':>6} {'':>6} {'':>6} {'':>8}"
    if not case.masks:
        return blank
    try:
        scored = evaluate_against_files(result.mask, result.volume.affine, case.masks,
                                        name=case.name, pred_label="the new mask")
    except DunetError as exc:
        print(f"dunet segment: warning: not scored: {exc}", file=sys.stderr)
        return blank
    for note in scored.notes:
        print(f"dunet segment: warning: {case.name}: {note}", file=sys.stderr)
    m = scored.metrics
    return f" {m.dsc:>6.3f} {m.precision:>6.3f} {m.recall:>6.3f} {m.truth_ml:>8.2f}"
