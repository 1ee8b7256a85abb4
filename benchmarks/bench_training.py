"""Training throughput (stacks per second, FLOP/s) and peak memory of the real training loop.

Every configuration runs in a fresh process: a synthetic head on the ATLAS grid (197x233x189,
1 mm) is prepared like a real case, then ``training.engine.training_events`` runs ``--steps``
optimizer steps (batch assembly, augmentation, forward, loss, backward, update) after
``--warmup`` untimed ones, on whole slices (crop 0) or random crops. Peak memory is the
process's peak resident set size on CPU, and ``torch.cuda.max_memory_allocated`` on a GPU
(mixed precision there, as in training).

CPU configurations (``--configs``; ``CONFIGS``): what training does by default (``auto``:
channels-last, and the dtype ``cpu_dtype.training_precision`` measured fastest), and fp32 or
bf16 with or without channels-last, with the 3D convolutions as oneDNN's Conv3d (in fp32 under
bf16: its bf16 weight gradient is not finite, the training default before depth taps) or as
``fast.DepthTapConv3d``, and with ``torch.compile``. Each row also gives the process CPU
seconds per step (robust on a shared machine with ``--threads 1``), the model's FLOP/s (training
counted as 3x the forward FLOPs of ``torch.utils.flop_counter``) and this process's best fp32
and bf16 matrix-product rate, measured just before its steps. ``--repeats`` runs the
configurations in turn that many times and keeps each one's fastest run.

    python benchmarks/bench_training.py                       # CPU: configurations, 192 and 96 crops
    python benchmarks/bench_training.py --threads 1 --repeats 2 --json
    python benchmarks/bench_training.py --device cuda --configs auto --batch-size 36 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATLAS_SHAPE = (197, 233, 189)
# name: (precision, channels-last, 3D convolutions: "taps" | "conv3d" | "conv3d-fp32", compile)
CONFIGS = {
    "auto": ("auto", True, "auto", False),
    "fp32": ("fp32", False, "conv3d", False),
    "fp32-cl": ("fp32", True, "conv3d", False),
    "bf16-conv3d-fp32": ("bf16", False, "conv3d-fp32", False),
    "bf16-conv3d-fp32-cl": ("bf16", True, "conv3d-fp32", False),
    "bf16-taps": ("bf16", False, "taps", False),
    "bf16-taps-cl": ("bf16", True, "taps", False),
    "bf16-taps-cl-compile": ("bf16", True, "taps", True),
}
DEFAULT_CONFIGS = ["auto", "fp32", "fp32-cl", "bf16-conv3d-fp32", "bf16-conv3d-fp32-cl",
                   "bf16-taps", "bf16-taps-cl"]


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


def matmul_gflops(dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best rate of an ``n x n`` matrix product in ``dtype`` on this process's threads."""
    import torch

    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def forward_flops(model_name: str, size: int) -> int:
    """FLOPs of one forward pass of one ``4 x size x size`` stack (``FlopCounterMode``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_dunet.models import build_model

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        build_model(model_name).eval()(torch.rand(1, 4, size, size))
    return counter.get_total_flops()


def _conv3d_in_float32(model) -> None:
    """The CPU bf16 path before depth taps: plain Conv3d, run in fp32 under autocast."""
    import torch
    from torch import nn

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            return nn.Conv3d.forward(self, x.float())

    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            module.__class__ = type("Conv3dInFloat32", (nn.Conv3d,), {"forward": forward})


def set_up(trainer, config: str) -> None:
    """Turn the trainer that ``training_events`` built into configuration ``config``."""
    import torch
    from torch import nn

    from napari_dunet.fast import DepthTapConv3d

    _, channels_last, conv3d, compiled = CONFIGS[config]
    if conv3d not in ("auto", "taps"):
        for module in trainer.model.modules():
            if isinstance(module, DepthTapConv3d):
                module.__class__ = nn.Conv3d
        if conv3d == "conv3d-fp32":
            _conv3d_in_float32(trainer.model)
    if not channels_last:
        trainer.channels_last = False
        for param in trainer.model.parameters():
            param.data = param.data.contiguous()
    if compiled:
        trainer.net = torch.compile(trainer.net)


def measure(model: str, size: int, crop: int, batch: int, steps: int, warmup: int, device: str,
            config: str = "auto", threads: int | None = None) -> dict:
    """Run one configuration in this process and return its figures."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)

    from napari_dunet.fast import cpu_has_native_bf16
    from napari_dunet.training import engine
    from napari_dunet.training.config import TrainConfig
    from napari_dunet.training.data import prepare_case
    from napari_dunet.training.engine import StepProgress, training_events

    precision = CONFIGS[config][0] if device == "cpu" else "auto"
    built = engine._Trainer.__init__

    def init(trainer, *args, **kwargs):
        built(trainer, *args, **kwargs)
        if device == "cpu":
            set_up(trainer, config)
        chosen.append(trainer.precision)

    chosen: list[str] = []
    engine._Trainer.__init__ = init
    image, mask = synthetic_volume()
    case = prepare_case(image, mask, np.eye(4), "synthetic", input_size=size)
    train_config = TrainConfig(model=model, epochs=1, batch_size=batch, input_size=size,
                               crop_size=crop or None, steps_per_epoch=warmup + steps,
                               device=device, patience=0, precision=precision)
    rates = {}
    if device == "cpu":  # an emulated bf16 product (no bf16 instructions) takes about a minute
        rates = {"matmul_fp32_gflops": matmul_gflops(torch.float32)}
        if cpu_has_native_bf16():
            rates["matmul_bf16_gflops"] = matmul_gflops(torch.bfloat16)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for event in training_events([case], [], train_config, Path(tmp) / "bench.safetensors"):
            if isinstance(event, StepProgress):
                times.append(time.perf_counter())
                cpu_times.append(time.process_time())
                if event.step == warmup + steps:
                    break
    seconds = times[-1] - times[warmup - 1]  # from the end of the last warm-up step
    pixels = crop or size
    flops = 3 * forward_flops(model, pixels) * batch  # per step: forward + backward (~2x)
    row = {"model": model, "config": config, "precision": chosen[0], "input": size,
           "crop": crop, "batch": batch, "device": device, "threads": torch.get_num_threads(),
           "steps": steps, "seconds_per_step": seconds / steps,
           "cpu_seconds_per_step": (cpu_times[-1] - cpu_times[warmup - 1]) / steps,
           "stacks_per_second": steps * batch / seconds,
           "steps_per_hour": 3600 * steps / seconds, "gflop_per_step": flops / 1e9,
           "gflops": flops / 1e9 * steps / seconds,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **rates}
    if device.startswith("cuda"):
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        row["gpu"] = torch.cuda.get_device_name()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dunet"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[192], help="input size")
    parser.add_argument("--crop-sizes", nargs="+", type=int, default=[0, 96],
                        help="random crops of this size (0: whole slices)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=DEFAULT_CONFIGS,
                        help="CPU configurations (a GPU runs auto)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (at least 1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (fastest kept)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--warmup, --steps and --repeats must be at least 1")
    if args.one:
        print(json.dumps(measure(args.models[0], args.sizes[0], args.crop_sizes[0],
                                 args.batch_size, args.steps, args.warmup, args.device,
                                 args.configs[0], args.threads)))
        return 0
    configs = args.configs if args.device == "cpu" else ["auto"]
    runs = [(m, size, crop, c) for m in args.models for size in args.sizes
            for crop in args.crop_sizes for c in configs]
    best: dict[tuple, dict] = {}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):  # configurations in turn, so each repeat sees the same load
        for run in runs:
            model, size, crop, config = run
            cmd = [sys.executable, __file__, "--one", "--models", model, "--sizes", str(size),
                   "--crop-sizes", str(crop), "--configs", config,
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{config}: exit {done.returncode}\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            row = json.loads(done.stdout.strip().splitlines()[-1])
            if run not in best or row["seconds_per_step"] < best[run]["seconds_per_step"]:
                best[run] = row
            load.append(os.getloadavg()[0])
    rows = [best[run] for run in runs]
    for row in rows:
        same = [r for r in rows if (r["model"], r["input"], r["crop"])
                == (row["model"], row["input"], row["crop"])]
        base = next((r for r in same if r["config"] == "bf16-conv3d-fp32"), None)
        if base is not None:  # speed against the CPU bf16 path before depth taps
            row["speedup_vs_bf16_conv3d_fp32"] = base["seconds_per_step"] / row["seconds_per_step"]
            row["cpu_speedup_vs_bf16_conv3d_fp32"] = (base["cpu_seconds_per_step"]
                                                      / row["cpu_seconds_per_step"])
        peak = row.get("matmul_fp32_gflops" if row["precision"] == "fp32" else "matmul_bf16_gflops")
        if peak:
            row["share_of_matmul"] = row["gflops"] / peak
    if args.json:
        print(json.dumps({"cpu": cpu_name(), "load_average": load, "rows": rows}, indent=2))
        return 0
    gpu = args.device.startswith("cuda")
    print(f"{cpu_name()}; load average {load[0]:.1f} at the start, {max(load):.1f} at most")
    header = (f"{'model':<8} {'config':<20} {'dtype':>5} {'crop':>4} {'batch':>5} {'thr':>3} "
              f"{'s/step':>7} {'cpu s':>6} {'stacks/s':>8} {'steps/h':>7} {'GFLOP/s':>8} "
              f"{'mm fp32':>7} {'mm bf16':>7} {'x before':>8} {'RSS MiB':>7}"
              + ("  peak GPU MiB" if gpu else ""))
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<8} {r['config']:<20} {r['precision']:>5} {r['crop'] or r['input']:>4} "
              f"{r['batch']:>5} {r['threads']:>3} {r['seconds_per_step']:>7.2f} "
              f"{r['cpu_seconds_per_step']:>6.2f} {r['stacks_per_second']:>8.2f} "
              f"{r['steps_per_hour']:>7.0f} {r['gflops']:>8.1f} "
              f"{r.get('matmul_fp32_gflops', math.nan):>7.0f} "
              f"{r.get('matmul_bf16_gflops', math.nan):>7.0f} "
              f"{r.get('speedup_vs_bf16_conv3d_fp32', math.nan):>8.2f} {r['peak_rss_mib']:>7.0f}"
              + (f"  {r['peak_gpu_mib']:>12.0f}" if gpu else ""))
    return 0


def cpu_name() -> str:
    from napari_dunet.cpu_dtype import cpu_name as name

    return name()


if __name__ == "__main__":
    sys.exit(main())
