"""``dunet segment``: lesion masks for NIfTI files and BIDS folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Segment stroke lesions in T1 volumes (files or BIDS/ATLAS folders)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI files or folders")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("--weights", type=Path, help="checkpoint (.safetensors)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability threshold (default: the checkpoint's, 0.5)")
    parser.add_argument("--batch-size", type=int, default=16, help="stacks per forward pass")
    parser.add_argument("--save-prob", action="store_true", help="also write <name>_prob.nii.gz")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def default_weights() -> Path | None:
    """The checkpoint bundled with the package, if any."""
    from importlib.resources import files

    path = Path(str(files("napari_dunet") / "weights" / "dunet_default.safetensors"))
    return path if path.is_file() else None


def run(args: argparse.Namespace) -> int:
    from ..errors import DunetError, InputError
    from ..segmentation import segment_case

    weights = args.weights or default_weights()
    if weights is None:
        raise DunetError("no weights given and no default weights are bundled; pass --weights FILE.")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1, got {args.threshold}.")
    from ..checkpoint import load_checkpoint
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
    print(f"{'case':<32} {'lesion mL':>10}  mask")
    for case in cases:
        result = segment_case(case.image, model, args.output, threshold=threshold,
                              device=device, batch_size=args.batch_size,
                              save_prob=args.save_prob, overwrite=args.overwrite, name=case.name)
        print(f"{case.name:<32} {result.lesion_ml:>10.2f}  {result.mask_path}")
        sys.stdout.flush()
    return 0
