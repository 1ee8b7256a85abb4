"""Whole-volume inference benchmark: napari-dunet's path against the plain path, the hardware
floor and a 3D nnU-Net-style peer, in one run (ratios stay meaningful on a busy machine).

    python benchmarks/bench_inference.py [--device cpu|cuda] [--json] [--quick]

The volume is ATLAS-sized (197x233x189, 1 mm MNI): nilearn's bundled MNI152 2009a template,
which is exactly that grid (or, without nilearn, a synthetic head of that shape). Rows:

* fast: ``segmentation.segment`` as the CLI and the widget run it (default precision on a CPU:
  ``mixed`` or fp32, whichever ``cpu_dtype`` measured faster), end to end: read the NIfTI,
  predict, threshold, write the mask. Every path runs each stack twice, plain and left-right
  mirrored (``SegmentOptions.mirror``, the default; ``--no-mirror``: once), and the stack
  counts count both passes.
* fp32, bf16: the same with the other precisions (bf16 where the device runs it natively).
* torch: where the default runtime is OpenVINO (``openvino_network``), the default path run by
  PyTorch instead (``--runtime torch``), with the precision ``auto`` measured for it.
* naive: the same model, eager fp32, every slice in batches of 16, no other optimisation.
* floor: FLOPs actually computed / the rate of a plain matrix product on the same device.
* peer: MONAI's DynUNet (nnU-Net 3D full-resolution layout) with ``sliding_window_inference``
  (128^3 windows, 0.5 overlap, Gaussian blending, no test-time mirroring), random weights.

Weights: the bundled default D-UNet (the ``mixed`` default reruns in fp32 the slices whose map
comes near a threshold, so its time depends on what the network sees); masks are compared at
the checkpoint's thresholds (its threshold and seed threshold). ``--image`` times another scan,
e.g. one with a lesion.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from napari_dunet.cpu_dtype import cpu_name
from napari_dunet.fast import cpu_has_native_bf16, prepare_model
from napari_dunet.inference import prepare_network, resolve_device, resolve_precision
from napari_dunet.io import load_volume, save_mask
from napari_dunet.metrics import confusion, dice
from napari_dunet.models import build_model
from napari_dunet.options import SegmentOptions
from napari_dunet.preprocessing import INPUT_SIZE, SliceGeometry
from napari_dunet.segmentation import (checkpoint_seed_threshold, checkpoint_threshold, segment,
                                       threshold_mask)

ATLAS_SHAPE = (197, 233, 189)
MNI_TEMPLATE = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
QUICK_SLICES = 8  # --quick: the top 4 slices of the head and 4 above it


def predict(volume, model: nn.Module, *, device: torch.device, **options) -> np.ndarray:
    """The probability map of ``segmentation.segment``, the path the CLI and the widget run."""
    return segment(volume, model, {}, SegmentOptions(device=str(device), **options)).probability


# -- input ------------------------------------------------------------------------------------
def atlas_sized_image(quick: bool) -> tuple[nib.Nifti1Image, str]:
    """The MNI152 2009a T1 template (197x233x189, 1 mm), else a synthetic head of that shape."""
    try:
        import nilearn

        image = nib.load(Path(nilearn.__file__).parent / MNI_TEMPLATE)
        data, affine, source = np.asarray(image.dataobj), image.affine, "MNI152 2009a (nilearn)"
    except (ImportError, FileNotFoundError):
        data, affine, source = synthetic_head(ATLAS_SHAPE), np.diag([1.0, 1.0, 1.0, 1.0]), "synthetic head"
    if quick:  # the top of the head, where it ends: a short run that still skips stacks
        last = int(np.flatnonzero(data.reshape(-1, data.shape[2]).any(0))[-1])
        start = min(max(last - 3, 0), data.shape[2] - QUICK_SLICES)
        data = data[..., start:start + QUICK_SLICES]
        source += f", slices {start}..{start + QUICK_SLICES - 1}"
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    out.set_qform(affine, 1)
    out.set_sform(affine, 4)
    return out, source


def synthetic_head(shape: tuple[int, int, int]) -> np.ndarray:
    """A uint8 head: bright scalp shell, grey brain with darker ventricles, zero air around it
    (about 3/4 of the voxels) and no head in the top and bottom 8% of the slices."""
    grid = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*grid, indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.84) ** 2)
    vent = np.sqrt((x / 0.15) ** 2 + (y / 0.35) ** 2 + ((z - 0.1) / 0.25) ** 2)
    head = np.where(r < 1, 110.0, 0.0) + np.where((r > 0.9) & (r < 1), 90.0, 0.0)
    head -= np.where(vent < 1, 70.0, 0.0)
    rng = np.random.default_rng(0)
    head += np.where(r < 1, rng.normal(0, 6, shape), 0.0)
    return np.clip(head, 0, 255).astype(np.uint8)


# -- measuring --------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class ModelClock:
    """Wall time spent inside ``model.forward`` and the stacks it saw, per precision."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.seconds, self._t, self.device = 0.0, 0.0, device
        self.stacks = {"fp32": 0, "bf16": 0}
        self._handles = [model.register_forward_pre_hook(self._pre),
                         model.register_forward_hook(self._post)]

    def _pre(self, _module, args):
        sync(self.device)
        autocast = torch.is_autocast_enabled(self.device.type)
        self.stacks["bf16" if autocast else "fp32"] += len(args[0])
        self._t = time.perf_counter()

    def _post(self, _module, _args, _out):
        sync(self.device)
        self.seconds += time.perf_counter() - self._t

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def segment_file(path: Path, model: nn.Module, out: Path, device: torch.device, *, clock_on,
                 threshold: float, seed_threshold: float | None, **options) -> dict:
    """Read -> predict -> threshold -> write, timed per stage (what ``dunet segment`` does)."""
    clock = ModelClock(clock_on, device)
    try:
        t0 = time.perf_counter()
        volume = load_volume(path)
        t1 = time.perf_counter()
        prob = predict(volume, model, device=device, threshold=threshold,
                       seed_threshold=seed_threshold, **options)
        t2 = time.perf_counter()
        save_mask(threshold_mask(prob, threshold, seed_threshold), volume, out, overwrite=True)
        t3 = time.perf_counter()
    finally:
        clock.close()
    return dict(seconds=t3 - t0, read=t1 - t0, predict=t2 - t1, write=t3 - t2,
                model=clock.seconds, stacks=sum(clock.stacks.values()),
                stacks_by_precision=clock.stacks, prob=prob)


def flops_per_stack(model: nn.Module, device: torch.device) -> int:
    """Convolution and matrix FLOPs of one stack (the plain model: the counter does not know
    the oneDNN calls of the prepared copy, which does the same convolutions)."""
    x = torch.zeros(1, 4, INPUT_SIZE, INPUT_SIZE, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype, quick: bool) -> dict:
    """FLOP/s of a plain matrix product: ``torch.mm``, and on CPU also the same product run by
    oneDNN (a 1x1 convolution), the library the network's convolutions use; best of a few."""
    n = 1024 if quick else (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    rates = {"mm": best_rate(lambda: a @ b, 2 * n**3, device, 3 if quick else 5)}
    if device.type == "cpu":
        x = torch.randn(1, n, n, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = b.reshape(n, n, 1, 1)  # out[o, h] = sum_c w[o, c] x[c, h]: an n x n x n product
        rates["onednn"] = best_rate(lambda: nn.functional.conv2d(x, w), 2 * n**3, device,
                                    3 if quick else 5)
    return rates


def best_rate(fn, flops: int, device: torch.device, repeats: int) -> float:
    with torch.inference_mode():
        fn()
        sync(device)
        best = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            sync(device)
            best = min(best, time.perf_counter() - t)
    return flops / best


def peak_rss_mb(maxrss: int | None = None) -> float:
    """``ru_maxrss`` in MB: this process's, or ``maxrss`` as another process reported it."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if maxrss is None else maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB else


def command_peak_mb(path: Path, out: Path, args: argparse.Namespace) -> float:
    """Peak resident memory (MB) of ``dunet segment`` on ``path`` in a process of its own, as a
    user runs it (this benchmark's own process also holds the naive model and other runtimes)."""
    cli = ["segment", str(path), "-o", str(out), "-q", "--overwrite", "--device", args.device,
           "--runtime", args.runtime]
    if args.weights:
        cli += ["--weights", str(args.weights)]
    code = ("import resource, sys; from napari_dunet.cli import main; code = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, *cli], capture_output=True, text=True,
                          check=True)
    return peak_rss_mb(int(done.stdout.split()[-1]))


def agreement(reference: np.ndarray, other: np.ndarray, threshold: float,
              seed_threshold: float | None) -> float:
    """DSC of the two masks ``dunet segment`` would write from these maps."""
    return dice(confusion(threshold_mask(reference, threshold, seed_threshold),
                          threshold_mask(other, threshold, seed_threshold)))


# -- the peer ---------------------------------------------------------------------------------
def run_peer(path: Path, out: Path, device: torch.device, quick: bool) -> dict:
    """MONAI DynUNet in nnU-Net's 3D full-resolution layout, sliding windows over the volume,
    end to end like the fast path: read, predict, write the mask. ``quick``: a 64x64 in-plane
    crop, 32^3 windows and four levels (only checks that the peer runs)."""
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import DynUNet

    from napari_dunet.preprocessing import normalize_intensity

    roi, levels = ((32, 32, 32), 4) if quick else ((128, 128, 128), 6)
    torch.manual_seed(0)
    net = DynUNet(3, 1, 2, kernel_size=[3] * levels, strides=[1] + [2] * (levels - 1),
                  upsample_kernel_size=[2] * (levels - 1),
                  filters=[32, 64, 128, 256, 320, 320][:levels]).to(device).eval()
    windows = []

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        windows.append(len(patch))
        return net(patch)

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, 1, *roi, device=device))
    t0 = time.perf_counter()
    volume = load_volume(path)
    data = normalize_intensity(volume.data)
    if quick:
        x0, y0 = (data.shape[0] - 64) // 2, (data.shape[1] - 64) // 2
        data = data[x0:x0 + 64, y0:y0 + 64]
    x = torch.from_numpy(np.ascontiguousarray(data))[None, None].to(device)
    with torch.inference_mode(), peer_precision(device):
        logits = sliding_window_inference(x, roi, 1, predictor, overlap=0.5, mode="gaussian")
        mask = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
    if not quick:
        save_mask(mask, volume, out, overwrite=True)
    sync(device)
    return dict(seconds=time.perf_counter() - t0, windows=sum(windows), roi=list(roi),
                flops=int(counter.get_total_flops()) * sum(windows))


def peer_precision(device: torch.device):
    """The peer runs as nnU-Net predicts: mixed precision on GPUs, fp32 on CPUs."""
    return (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
            else contextlib.nullcontext())


# -- a cohort -------------------------------------------------------------------------------
def run_cohort(path: Path, model: nn.Module, folder: Path, device: torch.device, n: int,
               options: dict) -> dict:
    """``n`` scans one after another, then streamed: the next scans read by ``prefetch`` and
    the masks written by a background thread while the network works on the current scan."""
    from concurrent.futures import ThreadPoolExecutor

    from napari_dunet.inference import prefetch

    def segment(volume, i: int):
        prob = predict(volume, model, device=device, **options)
        mask = threshold_mask(prob, options["threshold"], options["seed_threshold"])
        return mask, volume, folder / f"mask_{i}.nii.gz"

    paths = [path] * n
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        mask, volume, out = segment(load_volume(p), i)
        save_mask(mask, volume, out, overwrite=True)
    t1 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as writer:
        writes = []
        for i, (_, volume) in enumerate(prefetch(paths, load_volume)):
            if isinstance(volume, Exception):
                raise volume
            mask, volume, out = segment(volume, i)
            writes.append(writer.submit(save_mask, mask, volume, out, overwrite=True))
        for w in writes:
            w.result()
    t2 = time.perf_counter()
    return dict(cohort_volumes=n, cohort_sequential_seconds=t1 - t0,
                cohort_streamed_seconds=t2 - t1, cohort_volumes_per_second=n / (t2 - t1))


# -- the run ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    model, (threshold, seed), weights = benchmark_model(args.weights, device)
    load_before = os.getloadavg()
    image, source = (nib.load(args.image), str(args.image)) if args.image else atlas_sized_image(args.quick)
    n = image.shape[SliceGeometry.for_volume(image.shape, image.affine).axial_axis]
    t = time.perf_counter()  # the one-off preparation (an OpenVINO conversion if not cached)
    prepared = prepare_network(model, device, args.runtime, n)
    prepare_seconds = time.perf_counter() - t
    runtime = getattr(prepared, "runtime", "pytorch")
    default = resolve_precision(args.precision, device, n, prepared)
    results: dict = {"device": str(device), "torch": torch.__version__, "quick": args.quick,
                     "volume": source, "shape": list(image.shape), "batch_size": args.batch_size,
                     "threads": torch.get_num_threads(), "precision": args.precision,
                     "precision_resolved": default, "runtime": runtime,
                     "prepare_seconds": prepare_seconds, "weights": weights, "threshold": threshold,
                     "seed_threshold": seed, "mirror": args.mirror,
                     "cpu": cpu_name(),
                     "cpu_native_bf16": cpu_has_native_bf16(), "load_average_before": load_before}
    bf16_native = device.type == "cuda" or cpu_has_native_bf16()
    others = [] if args.quick else [v for v in ("fp32", "bf16") if v != default
                                    and (v == "fp32" or bf16_native)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t1.nii.gz"
        nib.save(image, path)
        out = Path(tmp) / "mask.nii.gz"
        fast_opts = dict(batch_size=args.batch_size, precision=args.precision,
                         runtime=args.runtime, mirror=args.mirror)
        variant_opts = {v: dict(fast_opts, precision=v) for v in others}
        clocks = dict.fromkeys(others, prepared)
        if runtime != "pytorch" and not args.quick:
            variant_opts["torch"] = dict(fast_opts, runtime="torch")
            clocks["torch"] = prepare_model(model, device)
        naive_opts = dict(batch_size=16, precision="fp32", optimize=False, mirror=args.mirror)

        # warm-up (oneDNN/cuDNN kernel selection, OpenVINO compilation)
        warm = load_volume(path)
        middle = n // 2
        warm_range = (max(middle - 8, 0), min(middle + 8, n))  # one batch of 16, as timed below
        for opts in (fast_opts, naive_opts, *variant_opts.values()):
            predict(warm, model, device=device, slice_range=warm_range, **opts)

        fast_runs, naive_runs = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            fast_runs.append(segment_file(path, model, out, device, clock_on=prepared,
                                          threshold=threshold, seed_threshold=seed,
                                          **fast_opts))
            if not naive_runs:
                results["peak_memory_mb"] = peak_rss_mb()
                if device.type == "cuda":
                    results["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
            naive_runs.append(segment_file(path, model, out, device, clock_on=model,
                                           threshold=threshold, seed_threshold=seed,
                                           **naive_opts))
        fast = min(fast_runs, key=lambda r: r["seconds"])
        naive = min(naive_runs, key=lambda r: r["seconds"])

        # the current slice, as the widget segments it (volume already loaded, model prepared)
        slice_times = []
        for _ in range(3):
            t = time.perf_counter()
            predict(warm, model, device=device, slice_range=(middle, middle + 1), **fast_opts)
            slice_times.append(time.perf_counter() - t)

        variants = {v: segment_file(path, model, out, device, clock_on=clocks[v],
                                    threshold=threshold, seed_threshold=seed, **opts)
                    for v, opts in variant_opts.items()}
        per_stack = flops_per_stack(model, device)
        rates = {"fp32": matmul_rate(device, torch.float32, args.quick)}
        if any(r["stacks_by_precision"]["bf16"] for r in (fast, *variants.values())):
            rates["bf16"] = matmul_rate(device, torch.bfloat16, args.quick)
        peer = None if args.skip_peer else run_peer(path, out, device, args.quick)
        results["segment_peak_memory_mb"] = command_peak_mb(path, Path(tmp) / "command", args)
        cohort = (run_cohort(path, model, Path(tmp), device, args.cohort,
                             dict(fast_opts, threshold=threshold, seed_threshold=seed))
                  if args.cohort else {})

    best = {dtype: max(r.values()) for dtype, r in rates.items()}
    passes = 2 if args.mirror else 1  # a volume's stacks go through the network this often

    def floor(run: dict) -> float:
        """Seconds the run's stacks need at the matrix-product rate of their precision."""
        return sum(per_stack * k / best.get(dtype, best["fp32"])
                   for dtype, k in run["stacks_by_precision"].items())

    results.update(
        volume_seconds=fast["seconds"], model_seconds=fast["model"],
        read_seconds=fast["read"], predict_seconds=fast["predict"], write_seconds=fast["write"],
        naive_seconds=naive["seconds"], naive_model_seconds=naive["model"],
        volume_runs=[r["seconds"] for r in fast_runs], naive_runs=[r["seconds"] for r in naive_runs],
        speedup=naive["seconds"] / fast["seconds"], model_speedup=naive["model"] / fast["model"],
        stacks_total=n * passes, stacks_run=fast["stacks"], stacks_by_precision=fast["stacks_by_precision"],
        flops_per_stack=per_stack, flops_per_volume=per_stack * n * passes,
        flops_actually_computed=per_stack * fast["stacks"],
        matmul_flops_per_second=best["fp32"], matmul_rates=rates["fp32"],
        floor_seconds=floor(fast),
        dsc_vs_naive=agreement(naive["prob"], fast["prob"], threshold, seed),
        max_abs_diff_vs_naive=float(np.abs(naive["prob"] - fast["prob"]).max()),
        slice_seconds=statistics.median(slice_times), slice_runs=slice_times,
        load_average_after=os.getloadavg())
    if "bf16" in rates:
        results.update(bf16_matmul_flops_per_second=best["bf16"], bf16_matmul_rates=rates["bf16"])
    results["floor_ratio"] = results["model_seconds"] / results["floor_seconds"]
    results.update(cohort)
    for v, r in variants.items():
        results.update({
            f"{v}_volume_seconds": r["seconds"], f"{v}_model_seconds": r["model"],
            f"{v}_speedup": naive["seconds"] / r["seconds"], f"{v}_stacks_run": r["stacks"],
            f"{v}_dsc_vs_naive": agreement(naive["prob"], r["prob"], threshold, seed),
            f"{v}_max_abs_diff_vs_naive": float(np.abs(naive["prob"] - r["prob"]).max()),
            f"{v}_floor_seconds": floor(r), f"{v}_floor_ratio": r["model"] / floor(r)})
    if peer:
        results.update(peer_seconds=peer["seconds"], peer_windows=peer["windows"],
                       peer_roi=peer["roi"], peer_flops=peer["flops"],
                       peer_ratio=peer["seconds"] / fast["seconds"])
    return results


def benchmark_model(weights: Path | None, device: torch.device
                    ) -> tuple[nn.Module, tuple[float, float | None], str]:
    """The network timed: ``weights``, else the bundled default weights, else a seeded random
    D-UNet; with its threshold and seed threshold and where it came from."""
    from napari_dunet.checkpoint import load_checkpoint
    from napari_dunet.weights import default_checkpoint

    path = weights or default_checkpoint()
    if path is None:
        torch.manual_seed(0)
        return build_model("dunet").to(device).eval(), (0.5, None), "random (seed 0)"
    model, meta = load_checkpoint(path, device=device)
    return model.eval(), (checkpoint_threshold(meta), checkpoint_seed_threshold(meta)), str(path)


# -- output -----------------------------------------------------------------------------------
VARIANTS = ("fp32", "bf16", "torch")  # other precisions, the PyTorch runtime (keys ``<v>_*``)
VARIANT_NAMES = {"fp32": "fp32", "bf16": "bf16", "torch": "PyTorch runtime"}


def table(r: dict) -> str:
    g = 1e9
    by = r["stacks_by_precision"]
    lines = [f"napari-dunet inference on {r['device']} ({r['cpu']}, {r['threads']} threads, "
             f"torch {r['torch']}, runtime {r.get('runtime', 'pytorch')}), volume "
             f"{'x'.join(map(str, r['shape']))}: {r['volume']}",
             f"weights: {r['weights']}, threshold {r['threshold']}, seed threshold "
             f"{r['seed_threshold']}; load average before/after: "
             f"{r['load_average_before'][0]:.1f} / {r['load_average_after'][0]:.1f}",
             "",
             f"{'path':<34}{'end to end s':>13}{'model s':>10}{'stacks':>8}{'vs naive':>10}"
             f"{'DSC vs naive':>14}",
             f"{'naive (eager fp32, batch 16)':<34}{r['naive_seconds']:>13.2f}"
             f"{r['naive_model_seconds']:>10.2f}{r['stacks_total']:>8}{1:>10.2f}{1:>14.5f}",
             f"{'fast, default (' + r['precision_resolved'] + ')':<34}"
             f"{r['volume_seconds']:>13.2f}{r['model_seconds']:>10.2f}{r['stacks_run']:>8}"
             f"{r['volume_seconds'] / r['naive_seconds']:>10.2f}{r['dsc_vs_naive']:>14.5f}"]
    for v in VARIANTS:
        if f"{v}_volume_seconds" in r:
            lines.append(f"{'fast ' + VARIANT_NAMES[v]:<34}{r[v + '_volume_seconds']:>13.2f}"
                         f"{r[v + '_model_seconds']:>10.2f}{r[v + '_stacks_run']:>8}"
                         f"{r[v + '_volume_seconds'] / r['naive_seconds']:>10.2f}"
                         f"{r[v + '_dsc_vs_naive']:>14.5f}")
    lines.append(f"{'floor of the default (FLOPs/matmul)':<34}{'':>13}{r['floor_seconds']:>10.2f}"
                 f"{r['stacks_run']:>8}")
    if "peer_seconds" in r:
        lines.append(f"{'peer: DynUNet 3D, sliding window':<34}{r['peer_seconds']:>13.2f}"
                     f"{'':>10}{r['peer_windows']:>8}{r['peer_seconds'] / r['naive_seconds']:>10.2f}")
    rates = [("fp32", r["matmul_rates"])] + ([("bf16", r["bf16_matmul_rates"])]
                                              if "bf16_matmul_rates" in r else [])
    lines += [
        "",
        f"fast / naive end to end        {r['volume_seconds'] / r['naive_seconds']:.2f}   (target <= 0.5)",
        f"fast model / floor             {r['floor_ratio']:.2f}   (target <= 1.5)",
        f"current slice                  {r['slice_seconds']:.2f} s   (target < 0.5 s)",
        f"peak memory, dunet segment     {r['segment_peak_memory_mb']:.0f} MB   (target < 2500 MB; "
        f"this benchmark's process, all runtimes: {r['peak_memory_mb']:.0f} MB)",
        f"fast: read {r['read_seconds']:.2f} s, predict {r['predict_seconds']:.2f} s, "
        f"write {r['write_seconds']:.2f} s; preparing the model once {r['prepare_seconds']:.2f} s",
        f"fast: stacks run in fp32 {by['fp32']}, in bf16 {by['bf16']}; agreement with naive: "
        f"DSC {r['dsc_vs_naive']:.5f} at the checkpoint's thresholds, "
        f"max |dp| {r['max_abs_diff_vs_naive']:.1e}",
        f"FLOPs: {r['flops_per_stack'] / g:.1f} G per stack, {r['flops_per_volume'] / g:.0f} G per "
        f"volume, {r['flops_actually_computed'] / g:.0f} G computed",
    ] + [f"matmul {dtype}: " + ", ".join(f"{k} {v / g:.0f} GFLOP/s" for k, v in rate.items())
         for dtype, rate in rates]
    for v in VARIANTS:
        if f"{v}_volume_seconds" in r:
            lines.append(f"{v}: model / floor {r[v + '_floor_ratio']:.2f}, max |dp| vs naive "
                         f"{r[v + '_max_abs_diff_vs_naive']:.1e}")
    if "cohort_volumes" in r:
        lines.append(f"cohort of {r['cohort_volumes']}: one after another "
                     f"{r['cohort_sequential_seconds']:.2f} s, streamed "
                     f"{r['cohort_streamed_seconds']:.2f} s ({r['cohort_volumes_per_second']:.3f} scans/s)")
    if "peer_seconds" in r:
        lines.append(f"peer: {r['peer_windows']} windows of {'x'.join(map(str, r['peer_roi']))}, "
                     f"{r['peer_flops'] / g:.0f} GFLOP, {r['peer_ratio']:.1f}x napari-dunet's time")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    """Horizontal bars: end-to-end seconds per path, with the model's share and the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("naive (eager fp32)", r["naive_seconds"], r["naive_model_seconds"]),
            (f"napari-dunet, default ({r['precision_resolved']})", r["volume_seconds"],
             r["model_seconds"])]
    rows += [(f"napari-dunet, {VARIANT_NAMES[v]}", r[f"{v}_volume_seconds"], r[f"{v}_model_seconds"])
             for v in VARIANTS if f"{v}_volume_seconds" in r]
    rows.append(("floor of the default (FLOPs / matmul)", r["floor_seconds"], r["floor_seconds"]))
    if "peer_seconds" in r:
        rows.append(("peer: DynUNet 3D sliding window", r["peer_seconds"], float("nan")))
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(rows) + 1.8), layout="constrained")
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [t for _, t, _ in rows], color="#c9d6e8", label="end to end (read, predict, write)")
    ax.barh(y, [m for _, _, m in rows], height=0.45, color="#2f5d9b", label="network")
    for yi, (name, total, _) in zip(y, rows):
        ratio = "" if name.startswith("floor") else f"  ({total / r['naive_seconds']:.2f}x naive)"
        ax.text(total, yi, f" {total:.1f} s{ratio}", va="center", fontsize=8.5)
    ax.set_yticks(y, [name for name, _, _ in rows])
    ax.set_xlabel("seconds per " + "x".join(map(str, r["shape"])) + " volume"
                  if not r["quick"] else "seconds (quick run)")
    ax.set_xlim(0, max(t for _, t, _ in rows) * 1.35)
    load = r["load_average_before"][0], r["load_average_after"][0]
    ax.set_title(f"Whole-volume inference on {r['device']}, {r['threads']} threads "
                 f"(load average {load[0]:.1f} / {load[1]:.1f})", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SLICES} slices, small peer windows, no other precisions "
                             "(CI smoke run)")
    parser.add_argument("--batch-size", type=int, default=16, help="fast path batch (default 16)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "mixed"),
                        help="fast path precision (default auto: mixed on CPUs with bf16 "
                             "instructions, else fp32; bf16 autocast on GPUs)")
    parser.add_argument("--runtime", default="auto", choices=("auto", "torch", "openvino"),
                        help="fast path runtime (default auto: OpenVINO on a CPU where it is "
                             "installed, else PyTorch)")
    parser.add_argument("--weights", type=Path,
                        help="checkpoint to time (default: the bundled default weights)")
    parser.add_argument("--image", type=Path,
                        help="time this NIfTI instead of the ATLAS-sized template")
    parser.add_argument("--repeats", type=int, default=1,
                        help="end-to-end runs of fast and naive, interleaved; the best counts")
    parser.add_argument("--no-mirror", dest="mirror", action="store_false",
                        help="one pass per stack, without the mirrored one (dunet segment "
                             "--no-mirror)")
    parser.add_argument("--skip-peer", action="store_true", help="leave out the MONAI peer")
    parser.add_argument("--cohort", type=int, default=0, metavar="N",
                        help="also segment N scans in a row, plain and streamed (prefetch)")
    parser.add_argument("--save", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--plot", type=Path, help="also draw the results as a PNG")
    parser.add_argument("--from-json", type=Path, metavar="FILE",
                        help="do not measure: print (and --plot) results saved with --save")
    args = parser.parse_args(argv)
    results = json.loads(args.from_json.read_text()) if args.from_json else run(args)
    text = json.dumps(results, indent=1)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")
    if args.plot:
        plot(results, args.plot)
    print(text if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
