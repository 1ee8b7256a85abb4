"""Train the next stage of the default weights on a GPU, fed by many synthesis processes.

Made for a GPU machine with no network, commands of at most 10 minutes and files back of at most
16 MiB (docs/training.md, "Training on a GPU machine"). `scripts/prepare_device.sh` fills the
git-ignored `.device/` here; `scripts/train_on_device.sh` runs this script there. It trains
`dunet train --synth`'s recipe (the anatomies in DATA/anatomies, MNI152 unless --no-mni, the
lesion shapes in DATA/lesions) from --init for --minutes, then stores in OUT:

- dunet.safetensors.part1, .part2: the mean of the last --average epochs' weights, float16,
  with --init's thresholds (choose them again on the validation cases), split under 16 MiB;
  join them with `cat OUT/dunet.safetensors.part* > W.safetensors`;
- dunet-half.safetensors.part1, .part2: the same, stored once half the time had passed (a run
  that can be made once gives two candidates for the validation cases to choose between);
- summary.json: epochs, steps, stacks a second, cases drawn, losses, the files' sha256.

    python scripts/train_on_device.py --data .device/data --out OUT [--minutes 6] [--device cuda]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from napari_dunet.checkpoint import average_checkpoints, read_metadata, save_checkpoint
from napari_dunet.io import nifti_files
from napari_dunet.synth import lesion_files
from napari_dunet.training.config import TrainConfig
from napari_dunet.training.engine import EpochMetrics, StepProgress, training_events
from napari_dunet.training.synthetic import SynthSource, SynthStream

PART_BYTES = 15 * 2**20  # files come back from the machine when under 16 MiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(".device/data"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/device")))
    parser.add_argument("--init", default="default", help="weights to start from ('default')")
    parser.add_argument("--minutes", type=float, default=6.0, help="training time (default 6)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 3),
                        help="synthesis processes (default: all cores but three)")
    parser.add_argument("--pool-size", type=int, default=160,
                        help="synthesised cases trained on at a time (default 160)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-size", type=int, default=None,
                        help="train on N x N windows (default: whole 192 x 192 slices, the "
                             "paper's; the CPU recipe's 96 saves time there)")
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--lesion-fraction", type=float, default=0.35)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--average", type=int, default=5, help="epochs averaged (default 5)")
    parser.add_argument("--no-mni", dest="mni", action="store_false",
                        help="leave out the MNI152 anatomy (it needs nilearn)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", dest="precision", default="auto",
                        help="auto (default): mixed precision on a GPU, the dtype measured "
                             "fastest on a CPU (fp32 where it has no bf16 instructions)")
    args = parser.parse_args(argv)

    if args.init == "default":
        from napari_dunet import weights

        args.init = weights.default_checkpoint()
    anatomies = (("mni",) if args.mni else ()) + tuple(
        str(p) for p in nifti_files(args.data / "anatomies", recursive=False))
    source = SynthSource(anatomies, tuple(lesion_files([args.data / "lesions"])))
    initial = read_metadata(args.init)
    config = TrainConfig(
        epochs=10_000, batch_size=args.batch_size, lr=args.lr, lesion_fraction=args.lesion_fraction,
        patience=0, seed=args.seed, crop_size=args.crop_size, steps_per_epoch=args.steps_per_epoch,
        device=args.device, precision=args.precision, max_minutes=args.minutes,
        warmup_steps=args.warmup_steps, model=initial["model"],
        preprocessing=initial["preprocessing"]["scheme"])
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"dunet-device-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(2, (os.cpu_count() or 2) - args.workers))  # the rest draw cases
    print(f"{len(anatomies)} anatomies, {len(source.lesions)} lesion shapes, {args.workers} "
          f"synthesis processes, device {args.device}, {args.minutes:g} minutes", flush=True)

    started = time.perf_counter()
    stream = SynthStream(source, seed=args.seed, pool_size=args.pool_size, workers=args.workers)
    checkpoint, kept, history, steps, stored = work / "dunet.safetensors", [], [], 0, {}
    for event in training_events(stream, [], config, checkpoint, init=args.init):
        if isinstance(event, StepProgress):
            steps = event.done
        elif isinstance(event, EpochMetrics):
            kept.append(work / f"epoch{event.epoch:04d}.safetensors")
            shutil.copyfile(checkpoint, kept[-1])
            for old in kept[:-args.average]:
                old.unlink(missing_ok=True)
            kept = kept[-args.average:]
            history.append({"epoch": event.epoch, "loss": round(event.train_loss, 4),
                            "seconds": event.seconds, "cases_drawn": stream.drawn})
            print(f"epoch {event.epoch}: loss {event.train_loss:.4f}, {event.seconds:.1f} s, "
                  f"{stream.drawn} cases drawn", flush=True)
            if "half" not in stored and sum(h["seconds"] for h in history) >= 30 * args.minutes:
                stored["half"] = store(kept, initial, work, args.out / "dunet-half.safetensors")
    seconds, trained = time.perf_counter() - started, sum(h["seconds"] for h in history)
    if not kept:
        raise SystemExit("no epoch finished: nothing to store.")
    stored["end"] = store(kept, initial, work, args.out / "dunet.safetensors")
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "init": str(args.init), "minutes": args.minutes, "workers": args.workers,
        "epochs": len(history), "steps": steps, "seconds": round(seconds, 1),
        "training_seconds": round(trained, 1),
        "stacks_per_second": round(steps * args.batch_size / trained, 1),
        "cases_drawn": stream.drawn, "stored": stored,
        "options": {k: str(v) for k, v in vars(args).items()}, "history": history}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}), flush=True)
    return 0


def store(kept: list[Path], initial: dict, work: Path, out: Path) -> dict:
    """The mean of the ``kept`` epochs, float16, with the starting file's thresholds, written
    as ``out``.part1, .part2, ...; returns what was stored."""
    model, metadata = average_checkpoints(kept)
    for key in ("threshold", "seed_threshold"):
        metadata[key] = initial.get(key)
    metadata["averaged"] = [p.name for p in kept]
    whole = work / "mean.safetensors"
    save_checkpoint(whole, model, metadata, half=True)
    data = whole.read_bytes()
    for i, start in enumerate(range(0, len(data), PART_BYTES), start=1):
        Path(f"{out}.part{i}").write_bytes(data[start:start + PART_BYTES])
    return {"file": out.name, "averaged": metadata["averaged"], "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


if __name__ == "__main__":
    sys.exit(main())
