"""Option names and the segmentation options, torch-free (command-line parsing and widgets stay light).

The torch-side registries (``models.MODELS``, ``losses.LOSSES``, ``inference.PRECISIONS``) check
at import that they list exactly these names (``agree``), so a name is added here and there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InputError

MODELS = ("dunet", "unet2d-transform", "unet2d-original", "unet3d-transform", "add-1", "add-12",
          "add-23", "add-123", "seadd-12", "seadd-23", "seadd-123")
DEFAULT_MODEL = "dunet"
LOSSES = ("eml", "focal", "dice")
OPTIMIZERS = ("adam", "sgd")
TRAIN_LAYERS = ("all", "decoder")  # what training changes: every layer, or the decoder and head
PRECISIONS = ("auto", "fp32", "bf16", "mixed")
"""Compute dtypes (``--dtype``): ``auto`` bf16 autocast on GPUs; on CPUs ``mixed`` or fp32,
whichever ``cpu_dtype`` measured faster on this machine; ``mixed`` bf16 with the maps near the
threshold run again in fp32."""
DEVICES = ("auto", "cpu", "cuda", "mps")
RUNTIMES = ("auto", "torch", "openvino")
"""What runs the network (``--runtime``): ``auto`` OpenVINO on a CPU where it is installed
(the ``openvino`` extra) for whole volumes, else PyTorch; ``torch``; ``openvino`` (CPU only)."""
PREPROCESSING = ("physical", "legacy")
"""Preprocessing schemes (docs/architecture.md): ``physical`` (0.9375 mm pixels, window on the
head; checkpoints record it) and ``legacy`` (checkpoints written before schemes existed)."""
DEFAULT_PREPROCESSING = "physical"


def agree(kind: str, registry: Iterable[str], names: tuple[str, ...]) -> None:
    """Raise ``RuntimeError`` unless ``registry`` lists exactly ``names`` (a programming error)."""
    if tuple(registry) != names:
        raise RuntimeError(f"the {kind} registry {tuple(registry)} differs from options: {names}")


def check_choice(kind: str, value: str, names: tuple[str, ...]) -> str | None:
    """A problem sentence when ``value`` (any case) is not one of ``names``, else None."""
    if str(value).lower() in names:
        return None
    return f"unknown {kind} {value!r} (choose one of: {', '.join(names)})"


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment (``segmentation.segment``, ``inference.predict_volume``).

    ``threshold`` None: the checkpoint's recommended threshold; ``seed_threshold`` None: the
    checkpoint's (``segmentation.threshold_mask``; at or below the threshold, 0 too: plain).
    ``slice_range`` ``(start, stop)``: only those axial slices (RAS+ order, inferior to superior). ``optimize``: run the
    inference-ready model and skip empty stacks (``inference``); False is the plain reference.
    ``precision``: one of ``PRECISIONS`` (the command line's ``--dtype``). ``preprocessing``:
    one of ``PREPROCESSING``; None: the checkpoint's. ``runtime``: one of ``RUNTIMES``
    (the optimised path only; the plain path is always PyTorch). ``mirror``: average each map
    with the map of its left-right mirrored stack (test-time flip, as training draws mirrored
    slices; twice the network's work).
    """

    device: str = "auto"
    batch_size: int = 16
    precision: str = "auto"
    threshold: float | None = None
    seed_threshold: float | None = None
    slice_range: tuple[int, int] | None = None
    optimize: bool = True
    preprocessing: str | None = None
    runtime: str = "auto"
    mirror: bool = True

    def check(self) -> None:
        """Raise ``InputError`` for values segmentation cannot run with."""
        problems = [p for p in (check_choice("precision", self.precision, PRECISIONS),
                                check_choice("runtime", self.runtime, RUNTIMES),
                                check_choice("preprocessing", self.preprocessing or
                                             DEFAULT_PREPROCESSING, PREPROCESSING)) if p]
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            problems.append(f"the threshold must be between 0 and 1, got {self.threshold}")
        if self.seed_threshold is not None and not 0.0 <= self.seed_threshold < 1.0:
            problems.append("the seed threshold must be at least 0 and below 1, got "
                            f"{self.seed_threshold}")
        if self.batch_size < 1:
            problems.append(f"the batch size must be at least 1, got {self.batch_size}")
        if problems:
            raise InputError("; ".join(problems) + ".")
