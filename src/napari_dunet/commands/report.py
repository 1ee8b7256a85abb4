"""``dunet report``: lesions normalised to MNI152 2009a, with their size, side and regions."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import add_output_argument

HELP = ("Report each lesion's volume, hemisphere, MNI centroid and regions, with the scan and "
        "mask registered to MNI152 2009a (needs the report extra).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="SCAN MASK (two NIfTI files), or scans and folders whose masks lie "
                             "beside them (BIDS/ATLAS layouts, as dunet segment finds them) or "
                             "in --masks")
    add_output_argument(parser, required=True, help="output folder")
    parser.add_argument("--masks", type=Path, metavar="FOLDER",
                        help="take each scan's mask from here: <name>_mask.nii.gz, as dunet "
                             "segment writes it")
    parser.add_argument("--resolution", type=float, default=2.0, metavar="MM",
                        help="voxel size the registration works at (default 2 mm; 1 is "
                             "about 8 times slower)")
    parser.add_argument("--affine-only", action="store_true",
                        help="stop after the affine registration (no SyN; faster, coarser)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    outputs = parser.add_mutually_exclusive_group()
    outputs.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    outputs.add_argument("--skip-existing", action="store_true",
                         help="leave cases whose report exists as they are (to finish a "
                              "cohort run that was interrupted)")


def find_pairs(inputs: list[str], masks: Path | None) -> list[tuple[str, Path, Path]]:
    """(name, scan, mask) for each case: two files are SCAN MASK; otherwise each input is a
    scan or folder (``io.find_cases``) whose mask is beside it or in ``masks``."""
    from ..errors import InputError
    from ..io import case_name, find_cases

    paths = [Path(p) for p in inputs]
    if masks is None and len(paths) == 2 and all(p.is_file() for p in paths):
        return [(case_name(paths[0]), paths[0], paths[1])]
    if masks is not None and not masks.is_dir():
        raise InputError(f"--masks {masks}: no such folder.")
    pairs = []
    for case in (c for p in paths for c in find_cases(p)):
        if masks is not None:
            mask = masks / f"{case.name}_mask.nii.gz"
            if not mask.is_file():
                raise InputError(f"{case.image}: no mask {mask.name} in {masks}.")
        elif len(case.masks) == 1:
            mask = case.masks[0]
        else:
            raise InputError(f"{case.image}: {'several' if case.masks else 'no'} lesion masks "
                             f"beside it; give SCAN MASK, or --masks FOLDER.")
        pairs.append((case.name, case.image, mask))
    names = [name for name, _, _ in pairs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"several inputs would write the same report name: {', '.join(dupes)}.")
    return pairs


def run(args: argparse.Namespace) -> int:
    from ..errors import DunetError, InputError
    from ..io import load_mask, load_volume
    from ..report import output_paths, report_case
    from ..registration import require_packages
    from .segment import check_output_folder

    if not 0.5 <= args.resolution <= 8.0:
        raise InputError(f"--resolution must be between 0.5 and 8 mm, got {args.resolution}.")
    require_packages()  # the install hint before any work
    check_output_folder(args.output)
    pairs = find_pairs(args.inputs, args.masks)
    todo, skipped = [], []
    for name, scan, mask in pairs:
        existing = [p for p in output_paths(args.output, name).values() if p.exists()]
        if existing and args.skip_existing and output_paths(args.output, name)["json"].exists():
            skipped.append(name)
        elif existing and not args.overwrite and not args.skip_existing:
            raise InputError(f"{existing[0]} exists; pass --overwrite to replace it or "
                             f"--skip-existing to leave it.")
        else:
            todo.append((name, scan, mask))
    failed = []
    for number, (name, scan, mask) in enumerate(todo, 1):
        start = time.monotonic()

        def say(message: str, name: str = name, number: int = number) -> None:
            if not args.quiet:
                print(f"dunet report: [{number}/{len(todo)}] {name}: {message}", file=sys.stderr,
                      flush=True)
        try:
            report, paths = report_case(load_volume(scan), load_mask(mask), args.output, name,
                                        overwrite=args.overwrite or args.skip_existing,
                                        mm=args.resolution, nonlinear=not args.affine_only,
                                        progress=say)
        except Exception as exc:  # noqa: BLE001 - one case's failure must not end a cohort
            failed.append(name)
            problem = (str(exc) if isinstance(exc, DunetError) else
                       f"{scan}: unexpected {type(exc).__name__} ({exc}); please report it")
            print(f"dunet report: error: {problem}", file=sys.stderr)
            continue
        for warning in report.warnings:
            print(f"dunet report: warning: {name}: {warning}", file=sys.stderr)
        s = report.summary
        say(f"done in {time.monotonic() - start:.0f} s")
        print(f"{name}: {s['lesion_count']} lesions, {s['total_native_ml']:.2f} mL, "
              f"{s['hemisphere']}; {paths['markdown']}")
    if len(pairs) > 1:
        print(f"dunet report: {len(todo) - len(failed)} done, {len(failed)} failed, "
              f"{len(skipped)} skipped" + (f" ({len(skipped)} with existing reports)"
                                            if skipped else "") + ".", file=sys.stderr)
    return 2 if failed else 0
