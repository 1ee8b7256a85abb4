"""``dunet synth``: realistic chronic-stroke T1 cases with known masks, in the ATLAS v2.0 layout."""

from __future__ import annotations

import argparse
import sys

from . import add_output_argument

HELP = ("Synthesise chronic-stroke T1 cases (real anatomy + lesion shapes) with their masks, "
        "written in the ATLAS v2.0 BIDS layout.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output_argument(parser, required=True, help="output BIDS folder")
    parser.add_argument("--anatomy", default="mni",
                        help="'mni' (default: the MNI152 2009a template bundled with nilearn) or a "
                             "T1 NIfTI file")
    parser.add_argument("--lesions", nargs="+", metavar="MASK",
                        help="lesion mask files or folders, one case each (moved onto the anatomy "
                             "through world coordinates); default: procedural lesions")
    parser.add_argument("-n", "--cases", type=int, default=1,
                        help="number of cases with procedural lesions (ignored with --lesions)")
    parser.add_argument("--first-index", type=int, default=1,
                        help="number of the first case: subjects are sub-r<SITE>s<NNN> (default 1)")
    parser.add_argument("--site", type=int, default=1,
                        help="site number in the subject names, as in ATLAS (default 1: sub-r001s...); "
                             "keeps the names of sets made from other anatomies apart")
    parser.add_argument("--seed", type=int, default=0,
                        help="case k is drawn from the seed (seed, k): same seed, same files")
    parser.add_argument("--mirror-prob", type=float, default=0.5,
                        help="chance of mirroring a lesion to the other hemisphere (default 0.5)")
    parser.add_argument("--dtype", default="random", choices=("random", "uint8", "int16", "float32"),
                        help="data type of the images (default: random per case)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import InputError
    from ..io import load_mask
    from ..synth import (Appearance, bids_paths, case_metadata, lesion_files, load_anatomy,
                         synthesize_case, write_bids_case, write_dataset_description)

    if not 0.0 <= args.mirror_prob <= 1.0:
        raise InputError(f"--mirror-prob must be between 0 and 1, got {args.mirror_prob}.")
    sources = lesion_files(args.lesions) if args.lesions else [None] * args.cases
    if not sources:
        raise InputError("nothing to do: --cases must be at least 1.")
    if args.first_index < 0 or not 0 <= args.site <= 999:
        raise InputError(f"--first-index must be 0 or more and --site between 0 and 999, got "
                         f"{args.first_index} and {args.site}.")
    anatomy = load_anatomy(args.anatomy)
    indices = range(args.first_index, args.first_index + len(sources))
    subjects = [f"r{args.site:03d}s{index:03d}" for index in indices]
    if not args.overwrite:
        for subject in subjects:
            for path in bids_paths(args.output, subject, anatomy.space):
                if path.exists():
                    raise InputError(f"{path} exists; pass --overwrite to replace it.")
    write_dataset_description(args.output)
    dtype = None if args.dtype == "random" else args.dtype
    print(f"{'subject':<14} {'lesion source':<24} {'mirrored':>8} {'lesion mL':>10} {'dtype':>8}  image")
    for index, subject, source in zip(indices, subjects, sources):
        rng = np.random.default_rng([args.seed, index])
        appearance = Appearance.sample(rng, dtype)
        mirrored = bool(source is not None and rng.random() < args.mirror_prob)
        lesion = load_mask(source) if source is not None else None
        image, mask = synthesize_case(anatomy, lesion, rng, appearance, mirror=mirrored)
        metadata = case_metadata(appearance, args.seed, index, source, mirrored, anatomy)
        image_path, _ = write_bids_case(args.output, subject, image, mask, space=anatomy.space,
                                        metadata=metadata, overwrite=args.overwrite)
        lesion_ml = float(mask.data.sum()) * image.voxel_volume_ml
        label = source.name if source is not None else "procedural"
        print(f"{subject:<14} {label:<24} {'yes' if mirrored else 'no':>8} {lesion_ml:>10.1f} "
              f"{appearance.dtype:>8}  {image_path}")
        sys.stdout.flush()
    return 0
