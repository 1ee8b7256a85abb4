"""The paper's comparison (its Table 2) on synthesised cases: D-UNet vs 2D UNet vs 3D UNet.

Every model is trained with the same ``dunet train`` options (data, steps, batch, crops,
precision, seed) and keeps its last epoch, then segments the held-out cases with
``dunet segment`` and is scored with ``dunet evaluate``, each command in its own process.
Prints a table: DSC mean +- sd, global DSC, precision, recall, parameters (Keras convention,
as the paper counts) and training time.

    python benchmarks/compare_models.py --train runs/default-weights/mni/train \\
        --heldout runs/default-weights/mni/heldout --epochs 4 --steps-per-epoch 200
    python benchmarks/compare_models.py ... --device cuda --batch-size 36 --json

Models may be any names of ``dunet models``; ``--work`` keeps every checkpoint, mask and score.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("dunet", "unet2d-transform", "unet3d-transform")


def dunet(*args: object, capture: bool = False) -> str:
    """Run one ``dunet`` command in a fresh process; its output (``capture``: returned)."""
    command = [sys.executable, "-m", "napari_dunet.cli", *map(str, args)]
    print("$ dunet " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    done = subprocess.run(command, check=True, text=True, stdout=subprocess.PIPE if capture else sys.stderr)
    return done.stdout


def compare(model: str, args: argparse.Namespace) -> dict:
    """Train ``model``, segment and score the held-out cases; the table row."""
    from napari_dunet.models import build_model, count_parameters

    work = args.work / model
    checkpoint = work / "model.safetensors"
    started = time.perf_counter()
    dunet("train", "--model", model, "--data", *args.train, "--output", checkpoint,
          "--val-fraction", args.val_fraction, "--epochs", args.epochs,
          "--steps-per-epoch", args.steps_per_epoch, "--batch-size", args.batch_size,
          "--crop-size", args.crop_size, "--lr", args.lr, "--patience", 0,
          "--dtype", args.precision, "--seed", args.seed, "--device", args.device,
          "--overwrite")
    train_seconds = time.perf_counter() - started
    dunet("segment", args.heldout, "-o", work / "heldout", "--weights", checkpoint,
          "--dtype", args.precision, "--device", args.device, "--overwrite")
    scores = dunet("evaluate", "--pred", work / "heldout", "--truth", args.heldout, "--json",
                   capture=True)
    summary = json.loads(scores)["summary"]
    return {"model": model, "n_cases": summary["n_cases"],
            "dsc_mean": summary["dsc_mean"], "dsc_sd": summary["dsc_sd"],
            "dsc_global": summary["dsc_global"], "precision": summary["precision_mean"],
            "recall": summary["recall_mean"],
            "parameters": count_parameters(build_model(model))[1],
            "train_seconds": train_seconds}


def table(rows: list[dict]) -> str:
    lines = ["| model | DSC (mean +- sd) | global DSC | precision | recall | parameters | training |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dsc_mean']:.3f} +- {r['dsc_sd']:.3f} | "
                     f"{r['dsc_global']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['parameters']:,} | {r['train_seconds'] / 60:.0f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="+", required=True, type=Path, help="training folders")
    parser.add_argument("--heldout", required=True, type=Path,
                        help="held-out folder (BIDS, with lesion masks)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--work", type=Path, default=Path("runs/compare"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=96)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="validation cases per epoch (default none: every model keeps its "
                             "last epoch and the held-out cases are the test)")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = [compare(model, args) for model in args.models]
    print(json.dumps(rows, indent=2) if args.json else table(rows))


if __name__ == "__main__":
    main()
