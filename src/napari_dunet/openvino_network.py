"""The network run by OpenVINO on a CPU: the same weights, compiled for the CPU it runs on.

OpenVINO's CPU plugin runs D-UNet 2.3 times (fp32) and 3.9 times (bf16) as fast as PyTorch's
oneDNN path on a 2-core Intel Xeon (docs/performance.md), so ``inference`` uses it for whole
volumes wherever the ``openvino`` extra is installed. ``OpenVinoNetwork`` is called like the
prepared PyTorch model, ``(N, C, H, W)`` in, ``(N, 1, H, W)`` float32 out, and computes in bf16
when called under CPU bf16 autocast (``inference.precision_context``), else in fp32: the
precision logic (``mixed``, the measured choice of ``cpu_dtype``) is the same for both runtimes.

Converting a model (``openvino.convert_model``) takes a few seconds, so the converted model is
kept in the user's cache folder (``openvino/<digest of the weights>.xml`` and ``.bin``, the
``MAX_CACHED`` most recently used), and a later run with the same weights reads it instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn

from .fast import autocast_dtype
from .io import user_cache_dir
from .preprocessing import INPUT_SIZE, STACK_OFFSETS

MAX_CACHED = 4  # converted models kept on disk (fine-tuning makes a new one per weights)


def available() -> bool:
    """True when the ``openvino`` package is installed."""
    return importlib.util.find_spec("openvino") is not None


def cache_dir() -> Path:
    return user_cache_dir() / "openvino"


class OpenVinoNetwork(nn.Module):
    """A converted network, compiled per precision and input size on first use."""

    def __init__(self, converted, threads: int):
        super().__init__()
        import openvino as ov

        self.runtime = f"openvino {ov.__version__.split('-')[0]}"
        self._core, self._converted, self._threads = ov.Core(), converted, threads
        self._compiled: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bf16 = autocast_dtype("cpu") == torch.bfloat16
        request = self._compiled_for(bf16, tuple(x.shape[1:])).create_infer_request()
        request.infer({0: x.detach().float().contiguous().numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    def _compiled_for(self, bf16: bool, shape: tuple):
        with self._lock:
            key = (bf16, shape)
            if key not in self._compiled:
                fixed = self._converted.clone()
                fixed.reshape([-1, *shape])  # a fixed size runs faster than a dynamic one
                self._compiled[key] = self._core.compile_model(fixed, "CPU", {
                    "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                    "INFERENCE_NUM_THREADS": self._threads, "PERFORMANCE_HINT": "LATENCY"})
            return self._compiled[key]


def convert(folded: nn.Module) -> OpenVinoNetwork:
    """``OpenVinoNetwork`` of ``folded`` (an eval-mode model, BatchNorm folded, on the CPU): read
    from the cache when these weights were converted before, else converted and cached."""
    import openvino as ov

    path = cache_dir() / f"{weights_digest(folded, ov.__version__)}.xml"
    converted = _read_cached(ov.Core(), path)
    if converted is None:
        example = torch.zeros(1, len(STACK_OFFSETS), INPUT_SIZE, INPUT_SIZE)
        converted = ov.convert_model(folded, example_input=example,
                                     input=[(-1, len(STACK_OFFSETS), -1, -1)])
        _write_cached(ov, converted, path)
    return OpenVinoNetwork(converted, torch.get_num_threads())


def weights_digest(model: nn.Module, version: str) -> str:
    """A digest of the model's class, weights and buffers, and the OpenVINO version."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__} {version}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _read_cached(core, path: Path):
    if not (path.is_file() and path.with_suffix(".bin").is_file()):
        return None
    try:
        converted = core.read_model(str(path))
        os.utime(path)
        return converted
    except (RuntimeError, OSError):  # a damaged file: convert again and replace it
        return None


def _write_cached(ov, converted, path: Path) -> None:
    """Write ``.bin`` then ``.xml`` by renames (an ``.xml`` always has its whole ``.bin``), then
    keep the ``MAX_CACHED`` newest; an unwritable cache only costs a conversion next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".partial-") as tmp:
            staged = Path(tmp) / path.name
            ov.save_model(converted, str(staged), compress_to_fp16=False)
            os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(staged, path)
        for old in sorted(path.parent.glob("*.xml"), key=lambda p: p.stat().st_mtime)[:-MAX_CACHED]:
            old.unlink(missing_ok=True)
            old.with_suffix(".bin").unlink(missing_ok=True)
    except OSError:
        pass

