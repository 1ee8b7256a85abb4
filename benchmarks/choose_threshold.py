"""Which probability thresholds suit a checkpoint? Mean DSC, precision and recall over folders of
traced cases at several thresholds and seed thresholds (``segmentation.threshold_mask``: a region
is kept only where it reaches the seed; 0: no seed), from one fp32 probability map per case.

    python benchmarks/choose_threshold.py --weights FILE --cases DIR [DIR ...]
        [--thresholds 0.3 0.5 0.7] [--seed-thresholds 0 0.99] [--json out.json]

Pick the threshold on cases that are not the ones the checkpoint is judged on (e.g. ``dunet
synth`` cases on another anatomy than the checks'), several folders together where users bring
several kinds of scan (whole heads, brain-extracted); the pair with the best mean DSC over all
the cases is marked. Prints a table, and the JSON (``-``: to stdout instead of the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_dunet import metrics
from napari_dunet.checkpoint import load_checkpoint
from napari_dunet.cpu_dtype import cpu_name
from napari_dunet.evaluation import load_mask_files
from napari_dunet.io import find_cases, load_volume
from napari_dunet.options import SegmentOptions
from napari_dunet.segmentation import (checkpoint_seed_threshold, checkpoint_threshold, segment,
                                       threshold_mask)
from napari_dunet.weights import default_checkpoint

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def sweep(probability: np.ndarray, truth: np.ndarray, pairs) -> list[dict]:
    """DSC, precision and recall of ``threshold_mask(probability, t, seed)`` against ``truth``,
    for each ``(t, seed)`` pair."""
    rows = []
    for t, seed in pairs:
        c = metrics.confusion(threshold_mask(probability, t, seed), truth)
        rows.append({"threshold": t, "seed_threshold": seed, "dsc": metrics.dice(c),
                     "precision": metrics.precision(c), "recall": metrics.recall(c)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint (default: the bundled default weights)")
    parser.add_argument("--cases", type=Path, nargs="+", required=True,
                        help="folders of images with their lesion masks (any layout dunet reads)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    parser.add_argument("--seed-thresholds", type=float, nargs="+", default=[0.0],
                        help="seed thresholds to pair with each threshold (0: none; default 0)")
    parser.add_argument("--limit", type=int, default=None, help="at most N cases")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="write the results here (- : print them)")
    args = parser.parse_args(argv)
    if any(not 0 < t < 1 for t in args.thresholds):
        parser.error("thresholds lie strictly between 0 and 1")
    if any(not 0 <= s < 1 for s in args.seed_thresholds):
        parser.error("seed thresholds lie in [0, 1)")
    pairs = [(t, s) for s in args.seed_thresholds for t in args.thresholds if s == 0 or s > t]
    sources = " ".join(map(str, args.cases))
    cases = [c for folder in args.cases for c in find_cases(folder) if c.masks][:args.limit]
    if not cases:
        parser.error(f"{sources}: no image with a lesion mask")
    weights = args.weights or default_checkpoint()
    model, meta = load_checkpoint(weights)
    options = SegmentOptions(device=args.device, precision="fp32")  # maps exact at every t
    per_case = []
    for case in cases:
        start = time.perf_counter()
        result = segment(load_volume(case.image), model, meta, options)
        truth = load_mask_files(case.masks)[0]
        per_case.append({"case": case.name, "seconds": time.perf_counter() - start,
                         "rows": sweep(result.probability, truth, pairs)})
        print(f"{case.name}: {per_case[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    summary = [{key: float(np.mean([c["rows"][i][key] for c in per_case]))
                for key in ("dsc", "precision", "recall")} | {"threshold": t, "seed_threshold": s}
               for i, (t, s) in enumerate(pairs)]
    best = max(summary, key=lambda row: row["dsc"])
    out = {"weights": str(weights), "checkpoint_threshold": checkpoint_threshold(meta),
           "checkpoint_seed_threshold": checkpoint_seed_threshold(meta), "cpu": cpu_name(),
           "cases": len(per_case), "best_threshold": best["threshold"],
           "best_seed_threshold": best["seed_threshold"], "summary": summary,
           "per_case": per_case}
    if args.json == "-":
        print(json.dumps(out, indent=2))
        return 0
    print(f"{len(per_case)} cases from {sources}, weights {weights} "
          f"(its threshold {out['checkpoint_threshold']}, seed threshold "
          f"{out['checkpoint_seed_threshold']}); CPU {out['cpu']}\n")
    print(f"{'threshold':>9} {'seed':>6} {'mean DSC':>9} {'precision':>9} {'recall':>9}")
    for row in summary:
        mark = "  <- best" if row is best else ""
        print(f"{row['threshold']:>9.2f} {row['seed_threshold'] or '-':>6} {row['dsc']:>9.3f} "
              f"{row['precision']:>9.3f} {row['recall']:>9.3f}{mark}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
