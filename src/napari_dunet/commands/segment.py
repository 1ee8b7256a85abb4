"""``dunet segment``: lesion masks for NIfTI files and BIDS folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    from ..io import Case
    from ..segmentation import SegmentationResult

HELP = "Segment stroke lesions in T1 volumes (files or BIDS/ATLAS folders)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI files or folders")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("--weights", type=Path, help="checkpoint (.safetensors)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability threshold (default: the checkpoint's, 0.5)")
    parser.add_argument("--batch-size", type=int, default=16, help="stacks per forward pass")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "mixed"), default="auto",
                        help="auto (default): bf16 autocast on GPUs, mixed on CPUs with bf16 "
                             "instructions, else fp32; mixed: bf16, with the slices near the "
                             "threshold run again in fp32 (the fp32 mask); bf16: bf16 only")
    parser.add_argument("--save-prob", action="store_true", help="also write <name>_prob.nii.gz")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args: argparse.Namespace) -> int:
    from ..errors import DunetError, InputError
    from ..segmentation import segment_case

    from .. import weights as bundled

    weights = args.weights or bundled.default_checkpoint()
    if weights is None:
        raise DunetError("no weights given and no default weights are bundled; pass --weights FILE.")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1, got {args.threshold}.")
    from ..checkpoint import load_checkpoint, preprocessing_scheme
    from ..inference import resolve_device
    from ..io import find_cases

    device = resolve_device(args.device)
    model, meta = load_checkpoint(weights, device=device)
    threshold = args.threshold if args.threshold is not None else float(meta.get("threshold", 0.5))
    cases = [case for item in args.inputs for case in find_cases(item)]
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise InputError(f"several inputs would write the same output name: {', '.join(sorted(dupes))}.")
    for case in cases:
        mask_path = args.output / f"{case.name}_mask.nii.gz"
        prob_path = args.output / f"{case.name}_prob.nii.gz" if args.save_prob else None
        for p in (mask_path, prob_path):
            if p is not None and p.exists() and not args.overwrite:
                raise InputError(f"{p} exists; pass --overwrite to replace it.")
    scored = any(case.masks for case in cases)  # reference masks beside the inputs: score them
    score_titles = f" {'DSC':>6} {'prec.':>6} {'recall':>6} {'true mL':>8}" if scored else ""
    print(f"{'case':<32} {'lesion mL':>10}{score_titles}  mask")
    for case in cases:
        result = segment_case(case.image, model, args.output, threshold=threshold,
                              device=device, batch_size=args.batch_size,
                              save_prob=args.save_prob, overwrite=args.overwrite, name=case.name,
                              precision=args.precision, scheme=preprocessing_scheme(meta))
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
