"""Training throughput (stacks per second) and peak memory of the real training loop.

Every configuration runs in a fresh process: a synthetic head on the ATLAS grid (197x233x189,
1 mm) is prepared like a real case, then ``training.engine.training_events`` runs ``--steps``
optimizer steps (batch assembly, augmentation, forward, loss, backward, update) after
``--warmup`` untimed ones. Peak memory is the process's peak resident set size on CPU, and
``torch.cuda.max_memory_allocated`` on a GPU (mixed precision there, as in training).

    python benchmarks/bench_training.py                       # CPU, D-UNet and 2D UNet at 192
    python benchmarks/bench_training.py --device cuda --batch-size 36 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATLAS_SHAPE = (197, 233, 189)


def synthetic_volume(shape=ATLAS_SHAPE, seed=0):
    """A bright ellipsoid 'head' with a dark spherical 'lesion' and noise, and its mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, np.float32) - 1) / 2
    radii = np.array(shape, np.float32) * 0.42
    head = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) < 1
    lesion_centre = centre + np.array([shape[0] * 0.15, shape[1] * 0.1, 0], np.float32)
    mask = (((grid - lesion_centre[:, None, None, None]) ** 2).sum(0) < 15 ** 2) & head
    image = 600 * head - 400 * mask + rng.normal(0, 10, shape)
    return np.clip(image, 0, None).astype(np.float32), mask.astype(np.uint8)


def measure(model: str, size: int, batch: int, steps: int, warmup: int, device: str,
            threads: int | None = None) -> dict:
    """Run one configuration in this process and return its figures."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)

    from napari_dunet.training.config import TrainConfig
    from napari_dunet.training.data import prepare_case
    from napari_dunet.training.engine import StepProgress, training_events

    image, mask = synthetic_volume()
    case = prepare_case(image, mask, np.eye(4), "synthetic", input_size=size)
    config = TrainConfig(model=model, epochs=1, batch_size=batch, input_size=size,
                         steps_per_epoch=warmup + steps, device=device, patience=0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for event in training_events([case], [], config, Path(tmp) / "bench.safetensors"):
            if isinstance(event, StepProgress):
                times.append(time.perf_counter())
                if event.step == warmup + steps:
                    break
    seconds = times[-1] - times[warmup - 1]  # from the end of the last warm-up step
    row = {"model": model, "input": size, "batch": batch, "device": device,
           "threads": torch.get_num_threads(), "steps": steps,
           "seconds_per_step": seconds / steps, "stacks_per_second": steps * batch / seconds,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        row["gpu"] = torch.cuda.get_device_name()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dunet", "unet2d-transform"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[192])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (at least 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.one:
        print(json.dumps(measure(args.models[0], args.sizes[0], args.batch_size, args.steps,
                                 args.warmup, args.device, args.threads)))
        return 0
    rows = []
    for model in args.models:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--one", "--models", model, "--sizes", str(size),
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    gpu = args.device.startswith("cuda")
    header = (f"{'model':<18} {'input':>5} {'batch':>5} {'device':>6} {'threads':>7} "
              f"{'s/step':>8} {'stacks/s':>9} {'peak RSS MiB':>13}" + ("  peak GPU MiB" if gpu else ""))
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<18} {r['input']:>5} {r['batch']:>5} {r['device']:>6} {r['threads']:>7} "
              f"{r['seconds_per_step']:>8.2f} {r['stacks_per_second']:>9.2f} "
              f"{r['peak_rss_mib']:>13.0f}" + (f"  {r['peak_gpu_mib']:>12.0f}" if gpu else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
