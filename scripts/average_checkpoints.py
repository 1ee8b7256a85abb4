"""Average the weights of several checkpoints of one run (the last epochs smooth out the swings
of single epochs) and store the mean, float16, with the thresholds to ship.

    python scripts/average_checkpoints.py OUT IN [IN ...] [--threshold 0.7] [--seed-threshold 0.99]

With one input: a float16 copy that keeps its metadata (its record of averaged epochs too),
with the thresholds set.
"""

from __future__ import annotations

import argparse
import sys

from napari_dunet.checkpoint import average_checkpoints, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the mask threshold to record (default: the last input's)")
    parser.add_argument("--seed-threshold", type=float, default=None,
                        help="the seed threshold to record (segmentation.threshold_mask; "
                             "default: the last input's; 0: none)")
    args = parser.parse_args(argv)
    model, metadata = average_checkpoints(args.inputs)
    if args.threshold is not None:
        metadata["threshold"] = args.threshold
    if args.seed_threshold is not None:
        metadata["seed_threshold"] = args.seed_threshold or None
    save_checkpoint(args.output, model, metadata, half=True)
    print(f"wrote {args.output}: mean of {len(args.inputs)} checkpoints (float16), "
          f"threshold {metadata.get('threshold', 0.5)}, seed threshold "
          f"{metadata.get('seed_threshold')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
