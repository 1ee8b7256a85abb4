"""A checked fine-tune on corrected cases, the one path of the Fine-tune panel, ``dunet train
--init`` and ``benchmarks/adaptation.py``.

``fine_tune_events`` prepares the cases (each one left at once on a stop request,
``interrupt.interruptible``), holds part of them back (``data.hold_back``), adds synthetic
rehearsal cases against forgetting, and trains from ``init`` with ``engine.training_events``,
which scores the starting weights on the held-back data first and writes the output only for
an epoch that beats them by more than ``config.min_gain`` (with the starting threshold and
seed threshold). Otherwise the starting weights stay in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np

from ..errors import Cancelled
from ..io import Case, Volume
from .config import TrainConfig
from .interrupt import interruptible


@dataclass
class CorrectedCase:
    """An image and its corrected lesion mask in memory (e.g. copied out of viewer layers)."""

    name: str
    volume: Volume
    mask: np.ndarray


@dataclass(frozen=True)
class Preparing:
    """Progress of reading and preprocessing the cases (rehearsal cases included)."""

    done: int
    total: int


def fine_tune_events(sources: Sequence[CorrectedCase | Case], config: TrainConfig, out: Path,
                     init: Path | None, *, hold_back: float, rehearsal: int = 0,
                     cancel: Callable[[], bool] | None = None) -> Generator[Any, None, Any]:
    """Fine-tune ``init`` (None: a new model) on ``sources`` with ``hold_back`` of them kept
    for the check (0: none, and no check); yields ``Preparing`` and the engine's events and
    returns its ``TrainResult`` (stop reason "cancelled" when stopped while preparing).

    ``config.model`` and ``config.preprocessing`` are set to the starting checkpoint's.
    """
    try:
        cases = yield from _prepare(sources, config, init, rehearsal, cancel)
        from .data import hold_back as split  # torch is in by now

        corrected, synthetic = cases[:len(sources)], cases[len(sources):]
        train_cases, val_cases = interruptible(
            lambda: split(corrected, hold_back, config.seed) if hold_back else (corrected, []),
            cancel)
    except Cancelled:
        from .engine import TrainResult

        return TrainResult(None, None, 0, None, None, stop_reason="cancelled",
                           message="Stopped while preparing the cases; nothing was trained.")
    from .engine import training_events

    return (yield from training_events(train_cases + synthetic, val_cases, config, out,
                                       init=init, cancel=cancel))


def _prepare(sources: Sequence[CorrectedCase | Case], config: TrainConfig, init: Path | None,
             rehearsal: int, cancel: Callable[[], bool] | None) -> Generator[Preparing, None, list]:
    """The sources and ``rehearsal`` synthetic cases as ``TrainingCase`` objects."""
    def start() -> None:  # torch and the starting model's network and preprocessing
        from ..checkpoint import read_metadata
        from ..segmentation import checkpoint_preprocessing
        from . import engine  # noqa: F401 - imported here, where a stop does not wait for it

        if init is not None:
            metadata = read_metadata(init)
            config.model = metadata["model"]
            config.preprocessing = checkpoint_preprocessing(metadata)

    interruptible(start, cancel)
    from .data import load_case, prepare_case
    from .synthetic import rehearsal_draws

    size, scheme = config.input_size, config.preprocessing
    total = len(sources) + rehearsal
    cases = []
    for source in sources:
        cases.append(interruptible(
            (lambda s=source: prepare_case(s.volume.data, s.mask, s.volume.affine, s.name, size,
                                           scheme)) if isinstance(source, CorrectedCase)
            else (lambda s=source: load_case(s, size, scheme)), cancel))
        yield Preparing(len(cases), total)
    draws = rehearsal_draws(rehearsal, config.seed, size, scheme)
    for _ in range(rehearsal):
        cases.append(interruptible(lambda: next(draws), cancel))
        yield Preparing(len(cases), total)
    return cases
