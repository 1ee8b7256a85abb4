"""``dunet evaluate``: score predicted lesion masks against reference masks."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HELP = ("Score predicted lesion masks against reference masks: DSC, precision, recall, global DSC "
        "and the ATLAS v2.0 challenge metrics, for two files or two folders.")

_COLUMNS = (("case", "{:<28}", 28), ("DSC", "{:>6.3f}", 6), ("prec.", "{:>6.3f}", 6),
            ("recall", "{:>6.3f}", 6), ("pred mL", "{:>8.2f}", 8), ("true mL", "{:>8.2f}", 8),
            ("|dV| mm3", "{:>9.0f}", 9), ("|dN|", "{:>4d}", 4), ("les.F1", "{:>6.3f}", 6),
            ("HD95 mm", "{:>7.2f}", 7))


LEGEND = """
DSC, precision, recall: voxel overlap. |dV|: volume difference. Lesions are {connectivity}-connected
components; a reference lesion is found when a predicted one overlaps it by a voxel: |dN| is the
difference in lesion counts, les.F1 the F1 score of found lesions (ATLAS v2.0 challenge metrics).
HD95: 95th percentile of the distances between the two masks' surfaces (docs/evaluation.md)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, metavar="P",
                        help="predicted mask file, or a folder of them")
    parser.add_argument("--truth", required=True, type=Path, metavar="T",
                        help="reference mask file, or a folder (BIDS or *_mask files), matched to "
                             "the predictions by subject/session or file stem")
    parser.add_argument("--connectivity", type=int, choices=(6, 26), default=6,
                        help="lesion components: 6 = face neighbours (ATLAS, default), 26 (ISLES'22)")
    parser.add_argument("--voxelwise", action="store_true",
                        help="score masks whose affines differ voxel by voxel (with a warning); "
                             "by default that is an error, since they are not on the same grid")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="write per-case rows and the summary as CSV; for folders also writes "
                             "the DSC box plot beside it as <FILE stem>_dsc.png")
    parser.add_argument("--plot", type=Path, metavar="FILE",
                        help="write the per-case DSC box plot (PNG) here")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (cases, summary) instead of the table")
    parser.add_argument("--overwrite", action="store_true", help="replace existing CSV/PNG files")


def plot_path(args: argparse.Namespace) -> Path | None:
    """``--plot``, else beside ``--csv`` for a folder (cohort) run, else no plot."""
    if args.plot is not None:
        return args.plot
    if args.csv is not None and args.pred.is_dir():
        return args.csv.with_name(f"{args.csv.name.removesuffix('.csv')}_dsc.png")
    return None


def format_row(row: dict) -> str:
    keys = ("case", "dsc", "precision", "recall", "pred_ml", "truth_ml", "volume_diff_mm3",
            "lesion_count_diff", "lesion_f1", "hd95_mm")
    cells = []
    for key, (_, fmt, width) in zip(keys, _COLUMNS):
        value = row[key]
        cells.append(f"{value:>{width}}" if isinstance(value, float) and math.isinf(value)
                     else fmt.format(value))
    return " ".join(cells)


def format_summary(summary: dict) -> list[str]:
    def stat(key: str) -> str:
        mean, sd, median = (summary[f"{key}_{s}"] for s in ("mean", "sd", "median"))
        sd_text = "" if math.isnan(sd) else f" +- {sd:.3f}"
        return f"mean {mean:.3f}{sd_text}, median {median:.3f}"

    lines = [f"{summary['n_cases']} case(s)",
             f"DSC        {stat('dsc')}, global {summary['dsc_global']:.3f}",
             f"precision  {stat('precision')}",
             f"recall     {stat('recall')}",
             f"lesion F1  {stat('lesion_f1')}"]
    n_inf = summary["hd95_mm_n_infinite"]
    if n_inf < summary["n_cases"]:
        lines.append(f"HD95 mm    {stat('hd95_mm')}"
                     + (f" ({n_inf} case(s) with one empty mask left out)" if n_inf else ""))
    return lines


def run(args: argparse.Namespace) -> int:
    from ..errors import DunetError, OutputExistsError
    from ..evaluation import (evaluate_cohort, match_cases, plot_dsc_boxplot, report, summarize,
                              write_csv)

    plot = plot_path(args)
    for out in (args.csv, plot):
        if out is not None and out.exists() and not args.overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite (or choose another name).")
    matching = match_cases(args.pred, args.truth)
    for side, names in (("prediction", matching.pred_only), ("reference", matching.truth_only)):
        if names:
            print(f"dunet evaluate: warning: {len(names)} case(s) have a {side} only and are not "
                  f"scored: {', '.join(names)}", file=sys.stderr)
    if not args.json:
        print(" ".join(f"{title:<{w}}" if i == 0 else f"{title:>{w}}"
                       for i, (title, _, w) in enumerate(_COLUMNS)))
    results, failed = [], 0
    for result in evaluate_cohort(matching, args.connectivity, args.voxelwise):
        if isinstance(result, DunetError):
            failed += 1
            print(f"dunet evaluate: error: {result}", file=sys.stderr)
            continue
        results.append(result)
        for note in result.notes:
            print(f"dunet evaluate: warning: {result.case}: {note}", file=sys.stderr)
        if not args.json:
            print(format_row(result.row()))
            sys.stdout.flush()
    if not results:
        return 2  # each case's error is printed above
    if args.json:
        print(json.dumps(report(results, matching, args.connectivity), indent=2))
    else:
        print()
        print("\n".join(format_summary(summarize(results))))
        print(LEGEND.format(connectivity=args.connectivity))
    if args.csv is not None:
        write_csv(results, args.csv, overwrite=args.overwrite)
        print(f"wrote {args.csv}", file=sys.stderr)
    if plot is not None:
        plot_dsc_boxplot(results, plot, label=args.pred.name or "prediction", overwrite=args.overwrite)
        print(f"wrote {plot}", file=sys.stderr)
    if failed:
        print(f"dunet evaluate: {len(results)} case(s) scored, {failed} failed.", file=sys.stderr)
    return 2 if failed else 0
