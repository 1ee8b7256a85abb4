"""Whole-volume inference: a native-grid probability map from a T1 volume.

Long runs report ``progress(done, total)`` and stop when ``cancel()`` returns True (raising
``Cancelled``); nothing here knows about Qt.

``predict_volume`` runs an inference-ready copy of the model by default (``fast.prepare_model``:
BatchNorm folded, channels-last) and skips the work that cannot change the result: stacks whose
four slices are all zero (no head in them) give the model's output for an all-zero stack, which
is computed once per call; a slice range reads and writes only the slices it needs.
``SegmentOptions(optimize=False)`` is the plain path (the caller's model, every stack), kept as
the reference the benchmarks and tests compare with.

Precision ``mixed`` (the CPU default where ``cpu_dtype`` measured bf16 faster than fp32) runs
every stack in bfloat16 and runs again in float32 each stack whose map has a voxel near a
threshold (the mask's or its seed's, within ``MIXED_LOGIT_MARGIN`` in logits): the mask is the
float32 mask, at about the cost of bf16 when few slices hold lesion boundaries.

Mirror (``SegmentOptions.mirror``, on by default): every stack also runs left-right mirrored and
the two maps are averaged (the mirrored one flipped back), in every path and precision; training
draws mirrored slices, so both are the network's answer for the same anatomy, and their mean
is steadier than either (docs/performance.md, "Mirrored pass").

Runtime: on a CPU, whole volumes run in OpenVINO where it is installed (``openvino_network``,
the ``openvino`` extra; several times faster than PyTorch there), else in PyTorch; both go
through the same batching and precision logic.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Callable, Literal, TypeVar, get_args

import numpy as np
import torch
from torch import nn

from . import options as names
from .errors import Cancelled, DunetError, InputError
from .fast import prepare_model, warn_if_bf16_emulated
from .io import Volume
from .options import SegmentOptions
from .preprocessing import DEFAULT_SCHEME, STACK_OFFSETS, make_stacks, preprocess

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]
Precision = Literal["auto", "fp32", "bf16", "mixed"]
PRECISIONS = get_args(Precision)
names.agree("precision", PRECISIONS, names.PRECISIONS)
MIXED_LOGIT_MARGIN = 0.5
"""``mixed``: how close (in logits) a bf16 voxel may come to the threshold before its stack is
recomputed in fp32; the largest bf16 error measured within one logit of the threshold with the
bundled weights was 0.27 (docs/performance.md)."""
MIXED_MIN_STACKS = 16  # fewer stacks (the current slice) run in fp32: a rerun would cost more
T = TypeVar("T")
R = TypeVar("R")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    name = str(name).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DunetError("CUDA was requested but no CUDA GPU is available; use --device cpu or auto.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DunetError("MPS was requested but is not available on this machine; use cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DunetError(f"Unknown device {name!r}; use auto, cpu, cuda or mps.") from exc


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on GPUs (bf16 where supported, else fp16); full precision on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def precision_context(device: torch.device, precision: Precision = "auto"
                      ) -> contextlib.AbstractContextManager:
    """``auto``: ``autocast_for(device)`` (mixed precision on GPUs, fp32 on CPU); ``fp32``: full
    precision everywhere; ``bf16``: bfloat16 autocast, also on CPU (fast where the CPU has
    bf16 instructions, see ``fast.cpu_has_native_bf16``)."""
    check_precision(precision)
    if precision == "auto":
        return autocast_for(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def resolve_precision(precision: Precision, device: torch.device, n_stacks: int,
                      model: nn.Module) -> Precision:
    """What ``auto`` means for ``predict_volume`` with ``model`` (inference-ready): on a CPU,
    for runs of at least ``MIXED_MIN_STACKS`` stacks, the dtype measured fastest on this
    machine (``cpu_dtype``: ``mixed`` or ``fp32``), else ``fp32``; on GPUs autocast (``auto``).
    Warns when ``bf16`` or ``mixed`` asks PyTorch for bf16 on a CPU that would emulate it."""
    check_precision(precision)
    if device.type == "cpu" and precision in ("bf16", "mixed") and not hasattr(model, "runtime"):
        warn_if_bf16_emulated(f"{precision} inference in PyTorch")  # OpenVINO picks its own
    if precision != "auto" or device.type != "cpu":
        return precision
    if n_stacks < MIXED_MIN_STACKS:
        return "fp32"
    from .cpu_dtype import measured_dtype

    return measured_dtype(model)["dtype"]


def resolve_runtime(runtime: str, device: torch.device, n_stacks: int) -> str:
    """``torch`` or ``openvino`` for a run of ``n_stacks`` on ``device``: ``auto`` takes OpenVINO
    on a CPU where it is installed, for runs of at least ``MIXED_MIN_STACKS`` stacks (its
    first conversion of a model takes seconds, more than a few stacks gain)."""
    if problem := names.check_choice("runtime", runtime, names.RUNTIMES):
        raise InputError(problem.capitalize() + ".")
    from . import openvino_network

    runtime = runtime.lower()
    if runtime == "openvino":
        if device.type != "cpu":
            raise InputError(f"the OpenVINO runtime runs on the CPU only, not {device}; use "
                             f"--device cpu or --runtime torch.")
        if not openvino_network.available():
            raise DunetError("OpenVINO is not installed: pip install 'napari-dunet[openvino]', "
                             "or use --runtime torch.")
        return "openvino"
    if (runtime == "auto" and device.type == "cpu" and n_stacks >= MIXED_MIN_STACKS
            and openvino_network.available()):
        return "openvino"
    return "torch"


def prepare_network(model: nn.Module, device: torch.device, runtime: str = "auto",
                    n_stacks: int = MIXED_MIN_STACKS) -> nn.Module:
    """``fast.prepare_model`` in the runtime ``resolve_runtime`` picks; a model that OpenVINO
    cannot convert runs in PyTorch when the runtime was ``auto`` (with a warning)."""
    chosen = resolve_runtime(runtime, device, n_stacks)
    if chosen == "openvino" and runtime.lower() == "auto":
        try:
            return prepare_model(model, device, "openvino")
        except Exception as exc:  # noqa: BLE001 - any conversion failure: PyTorch still runs it
            warnings.warn(f"OpenVINO could not convert the network ({exc}); running it in "
                          f"PyTorch.", RuntimeWarning, stacklevel=2)
            return prepare_model(model, device)
    return prepare_model(model, device, chosen)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(names.check_choice("precision", precision, PRECISIONS).capitalize() + ".")


def predict_slices(model: nn.Module, stacks: torch.Tensor, device: torch.device,
                   batch_size: int = 16, progress: ProgressCallback | None = None,
                   cancel: CancelCallback | None = None, *, precision: Precision = "auto",
                   channels_last: bool = False, thresholds: tuple[float, ...] = (0.5,),
                   mirror: bool = False) -> torch.Tensor:
    """Run ``model`` over ``(N, 4, H, W)`` stacks in batches; returns ``(N, H, W)`` float32 on CPU.

    On a CUDA out-of-memory error the batch is halved and retried, down to one stack.
    ``channels_last`` feeds the batches as NHWC (for a model from ``fast.prepare_model``);
    ``thresholds`` are where ``precision="mixed"`` checks the bf16 maps; ``mirror`` averages
    each map with that of the left-right mirrored stack.
    """
    out = torch.empty(stacks.shape[0], *stacks.shape[2:], dtype=torch.float32)
    if device.type == "cuda" and len(stacks):
        stacks = stacks.pin_memory()  # lets the copies to the GPU run asynchronously
    done = 0
    with torch.inference_mode():
        while done < len(stacks):
            if cancel is not None and cancel():
                raise Cancelled("Segmentation cancelled.")
            batch = stacks[done:done + batch_size].to(device, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            try:
                probs = _forward(model, batch, device, precision, thresholds, mirror)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                continue
            out[done:done + len(batch)] = probs[:, 0].float().cpu()
            done += len(batch)
            if progress is not None:
                progress(done, len(stacks))
    return out


def _forward(model: nn.Module, batch: torch.Tensor, device: torch.device, precision: Precision,
             thresholds: tuple[float, ...], mirror: bool) -> torch.Tensor:
    """One pass (``mirror``: the mean with the pass over the left-right mirrored batch); under
    ``mixed`` the stacks whose map has a voxel near a threshold run again in fp32."""
    layout = (torch.channels_last if batch.is_contiguous(memory_format=torch.channels_last)
              else torch.contiguous_format)

    def run(stacks: torch.Tensor, dtype: Precision) -> torch.Tensor:
        with precision_context(device, dtype):
            probs = model(stacks).float()
            if mirror:
                flipped = stacks.flip(-1).contiguous(memory_format=layout)
                probs = (probs + model(flipped).float().flip(-1)) / 2
        return probs

    if precision != "mixed":
        return run(batch, precision)
    probs = run(batch, "bf16")
    unsure = near_threshold(probs, thresholds)
    if unsure.any():
        probs[unsure] = run(batch[unsure].contiguous(memory_format=layout), "fp32")
    return probs


def near_threshold(probs: torch.Tensor, thresholds: tuple[float, ...]) -> torch.Tensor:
    """Per map of ``(N, ...)`` probabilities: has it a voxel within ``MIXED_LOGIT_MARGIN`` (in
    logits) of one of ``thresholds``?"""
    near = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
    for threshold in thresholds:
        centre, margin = math.log(threshold / (1.0 - threshold)), MIXED_LOGIT_MARGIN
        low, high = (1.0 / (1.0 + math.exp(-x)) for x in (centre - margin, centre + margin))
        near |= ((probs > low) & (probs < high)).flatten(1).any(dim=1)
    return near


def predict_volume(volume: Volume, model: nn.Module, options: SegmentOptions = SegmentOptions(),
                   *, progress: ProgressCallback | None = None,
                   cancel: CancelCallback | None = None) -> np.ndarray:
    """Probability map (float32, the volume's native shape and orientation) of lesion per voxel.

    ``options.slice_range`` = ``(start, stop)`` limits the work to those axial slices (RAS+
    order, inferior to superior, see ``SliceGeometry.axial_index``); other slices get
    probability 0. ``options.optimize`` (default) runs the inference-ready copy and skips empty
    stacks (module docstring); ``options.precision``: ``resolve_precision`` (``mixed`` keeps the
    fp32 mask at ``options.threshold``, 0.5 when None, and at ``options.seed_threshold``), then
    ``precision_context``; the plain path takes ``auto`` as it is; ``options.preprocessing``: the scheme the model was trained
    with (None: the default); ``options.mirror``: average with the mirrored pass (module
    docstring). Segmenting a case: ``segmentation.segment``.
    """
    options.check()
    device = resolve_device(options.device)
    batch_size, precision = options.batch_size, options.precision
    thresholds = ((0.5 if options.threshold is None else options.threshold),
                  *([options.seed_threshold] if options.seed_threshold else []))
    geometry, normalized = preprocess(volume.data, volume.affine,
                                      scheme=options.preprocessing or DEFAULT_SCHEME)
    n, f = geometry.n_slices, geometry.z_factor
    start, stop = options.slice_range or (0, n)
    if not 0 <= start < stop <= n:
        raise DunetError(f"slice range {start}..{stop} is outside 0..{n}.")
    if not options.optimize:
        slices = geometry.forward(normalized)
        model = model.to(device).eval()
        probs = predict_slices(model, make_stacks(slices, range(start * f, stop * f)), device,
                               batch_size, progress, cancel, precision=precision,
                               thresholds=thresholds, mirror=options.mirror)
        maps = torch.zeros_like(slices)
        maps[start * f:stop * f] = probs
        return geometry.inverse(maps)

    # the stacks of slices start..stop-1 read slices start-2..stop (zero outside the volume);
    # split thick slices need no more: their neighbours lie within one native slice
    first, last = max(start + STACK_OFFSETS[0], 0), min(stop + STACK_OFFSETS[-1], n)
    read_geometry, read_index = geometry.slab(first, last)
    stacks = make_stacks(read_geometry.forward(normalized[read_index]),
                         range((start - first) * f, (stop - first) * f))
    del normalized
    ready = prepare_network(model, device, options.runtime, len(stacks))
    precision = resolve_precision(precision, device, len(stacks), ready)
    probs = _predict_nonempty(ready, stacks, device, batch_size, progress, cancel,
                              dict(precision=precision, thresholds=thresholds,
                                   mirror=options.mirror))
    if (start, stop) == (0, n):
        return geometry.inverse(probs)
    out_geometry, out_index = geometry.slab(start, stop)
    out = np.zeros(geometry.native_shape, np.float32)
    out[out_index] = out_geometry.inverse(probs)
    return out


def _predict_nonempty(model: nn.Module, stacks: torch.Tensor, device: torch.device,
                      batch_size: int, progress: ProgressCallback | None,
                      cancel: CancelCallback | None, options: dict) -> torch.Tensor:
    """``predict_slices`` (channels-last, ``options``) that runs an all-zero stack once and
    reuses its output for every stack with no non-zero voxel: the model is a fixed function of
    its input (eval mode), so those stacks would all give that same map."""
    run = dict(options, channels_last=True)
    empty = ~stacks.flatten(1).any(dim=1)
    n_empty, total = int(empty.sum()), len(stacks)
    if n_empty == 0:
        return predict_slices(model, stacks, device, batch_size, progress, cancel, **run)
    out = torch.empty(total, *stacks.shape[2:], dtype=torch.float32)
    out[empty] = predict_slices(model, torch.zeros_like(stacks[:1]), device, 1, None, cancel,
                                **run)
    if progress is not None:
        progress(n_empty, total)
    if n_empty < total:
        offset = None if progress is None else (lambda done, _: progress(n_empty + done, total))
        out[~empty] = predict_slices(model, stacks[~empty], device, batch_size, offset, cancel,
                                     **run)
    return out


def prefetch(items: Iterable[T], load: Callable[[T], R], depth: int = 2
             ) -> Iterator[tuple[T, R | Exception]]:
    """``(item, load(item))`` in order, loading up to ``depth`` items ahead in a background
    thread, so that reading and decompressing the next scans overlaps the network's work on
    the current one. A failed load yields its exception (the caller reports it and goes on).
    Stopping the iteration early stops the reader after its current item."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def reader() -> None:
        for item in items:
            if stop.is_set():
                return
            try:
                result: R | Exception = load(item)
            except Exception as exc:  # handed to the consumer, in order
                result = exc
            slots.put((item, result))
        slots.put(done)

    thread = threading.Thread(target=reader, name="napari-dunet-prefetch", daemon=True)
    thread.start()
    try:
        while (entry := slots.get()) is not done:
            yield entry
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            slots.get_nowait()  # free a reader blocked on a full queue
