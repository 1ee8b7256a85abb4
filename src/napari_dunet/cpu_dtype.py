"""Which dtype ``auto`` runs on a CPU, chosen by measurement and remembered per machine.

A CPU that reports bf16 instructions does not always run bf16 convolutions faster than fp32
(oneDNN's kernels differ between CPU generations). The first whole-volume run on a machine
times the network on a few stacks in fp32 and in bf16 (about a second) and keeps the answer in
the user's cache folder (``$XDG_CACHE_HOME/napari-dunet/cpu-dtype.json``), keyed by the CPU,
its thread count, the torch version and the runtime (PyTorch or OpenVINO, which have kernels of
their own), so a new CPU, torch or runtime measures again. ``mixed`` (bf16, with the maps near
the threshold run again in fp32: the fp32 mask) is chosen only when bf16 is clearly faster;
otherwise ``fp32``. A CPU without bf16 instructions emulates bf16, slower: it
runs fp32 without measuring.

Training (``training_precision``) is chosen the same way, from a timed training step (forward
and backward) in each dtype, cached under its own key.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from .fast import (cpu_has_native_bf16, to_channels_last, use_depth_tap_convolutions,
                   warn_if_bf16_emulated)

#: bf16 must take at most this share of fp32's time to be chosen: ``mixed`` also reruns the
#: stacks near the threshold in fp32 (a few percent of a volume's stacks)
BF16_MARGIN = 0.8
MEASURE_STACKS = 4  # stacks per timed pass (192 x 192, the network's input)
TRAINING_MEASURE_SIZE = 96  # stacks of a timed training step (the crop size of CPU training)


def cache_file() -> Path:
    from .io import user_cache_dir

    return user_cache_dir() / "cpu-dtype.json"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(model: nn.Module) -> str:
    """What the measurement depends on: CPU model, threads, torch version and the runtime that
    runs ``model`` (``openvino_network.OpenVinoNetwork.runtime``, else PyTorch)."""
    runtime = getattr(model, "runtime", "pytorch")
    return (f"{cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__} | "
            f"{runtime}")


def measured_dtype(model: nn.Module, input_size: int = 192, training: bool = False) -> dict:
    """``{"dtype": "fp32" | "mixed", "fp32_seconds", "bf16_seconds", "key", "measured"}`` for
    ``model`` (an inference-ready copy; with ``training``, the model to train, timed by
    ``time_training_dtypes``) on this machine: from the cache, or measured now."""
    key = machine_key(model) + (" | training" if training else "")
    if not cpu_has_native_bf16():
        return {"dtype": "fp32", "key": key, "measured": False,
                "reason": "no bf16 instructions (bf16 would be emulated)"}
    known = _read_cache()
    if isinstance(known.get(key), dict):
        return known[key]
    fp32, bf16 = (time_training_dtypes if training else time_dtypes)(model, input_size)
    choice = {"dtype": "mixed" if bf16 <= BF16_MARGIN * fp32 else "fp32", "key": key,
              "measured": True, "fp32_seconds": round(fp32, 4), "bf16_seconds": round(bf16, 4)}
    known[key] = choice
    _write_cache(known)
    return choice


def time_dtypes(model: nn.Module, input_size: int = 192) -> tuple[float, float]:
    """Seconds of one pass over ``MEASURE_STACKS`` stacks in fp32 and in bf16 autocast (best
    of two, after a warm-up pass each)."""
    stacks = torch.rand(MEASURE_STACKS, 4, input_size, input_size)
    stacks = stacks.contiguous(memory_format=torch.channels_last)
    best = []
    with torch.inference_mode():
        for bf16 in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    model(stacks)
                    times.append(time.perf_counter() - start)
            best.append(min(times[1:]))
    return best[0], best[1]


def time_training_dtypes(model: nn.Module, input_size: int = TRAINING_MEASURE_SIZE
                         ) -> tuple[float, float]:
    """Seconds of one training step's forward and backward over ``MEASURE_STACKS`` stacks in
    fp32 and in bf16 autocast, each on a copy of ``model`` set up as ``training_precision``
    sets it up (best of two, after a warm-up step each); ``model`` and the RNG are untouched."""
    best = []
    with torch.random.fork_rng():
        stacks = torch.rand(MEASURE_STACKS, 4, input_size, input_size)
        stacks = stacks.contiguous(memory_format=torch.channels_last)
        for bf16 in (False, True):
            net = copy.deepcopy(model).train()
            if bf16:
                use_depth_tap_convolutions(net)
            to_channels_last(net)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = net(stacks)
                out.float().mean().backward()
                times.append(time.perf_counter() - start)
            best.append(min(times[1:]))
    return best[0], best[1]


def training_precision(model: nn.Module, precision: str) -> str:
    """Set ``model`` up, in place, to train on this CPU in ``precision`` and return that
    precision, ``auto`` resolved: ``mixed`` (bf16 steps, fp32 validation masks) where a bf16
    training step was measured clearly faster (``measured_dtype(training=True)``), else
    ``fp32``. Weights go channels-last; under bf16 the 3D convolutions run as
    ``fast.DepthTapConv3d`` (oneDNN's bf16 Conv3d weight gradient is not finite)."""
    if precision == "auto":
        precision = measured_dtype(model, TRAINING_MEASURE_SIZE, training=True)["dtype"]
    if precision in ("bf16", "mixed"):
        warn_if_bf16_emulated("bf16 training")
        use_depth_tap_convolutions(model)
    to_channels_last(model)
    return precision


def _read_cache() -> dict:
    """``{machine key: choice}``; a file of an older layout or unreadable: empty."""
    try:
        known = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) and "key" not in known else {}


def _write_cache(known: dict) -> None:
    from .io import atomic_write

    try:
        atomic_write(cache_file(), lambda tmp: tmp.write_text(json.dumps(known, indent=2)),
                     overwrite=True)
    except Exception:  # noqa: BLE001 - a read-only home only costs a measurement next time
        pass
