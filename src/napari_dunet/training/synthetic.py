"""Training cases drawn on the fly from label maps (``labelsynth``) by a worker process.

``SynthStream`` keeps a pool of prepared cases; background processes draw new ones (one thread
each: one process shares a small CPU with the training, several feed a GPU) and each epoch takes
the newest into the pool, dropping the oldest. The engine accepts a stream in place of a list of
training cases. Draws are seeded by (seed, rank, draw number) and worker ``w`` of ``n`` draws
numbers ``w, w + n, ...``, taken in number order, so a stream repeats for the same seed whatever
the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import DunetError, InputError
from ..preprocessing import DEFAULT_SCHEME, INPUT_SIZE
from .data import TrainingCase, prepare_case


@dataclass(frozen=True)
class SynthSource:
    """What the draws are made of: anatomies (``"mni"`` or T1 files) and lesion mask files."""

    anatomies: tuple[str, ...]
    lesions: tuple[Path, ...]
    mirror: bool = True  # also use each lesion reflected to the other hemisphere
    input_size: int = INPUT_SIZE
    scheme: str = DEFAULT_SCHEME

    def record(self) -> dict:
        """What a checkpoint records of its synthetic training data."""
        from ..labelsynth import SynthRanges

        return {"anatomies": [Path(a).name for a in self.anatomies],
                "lesions": [p.name for p in self.lesions], "mirror": self.mirror,
                "ranges": asdict(SynthRanges())}

    def check(self) -> "SynthSource":
        if not self.anatomies:
            raise InputError("synthesis needs at least one anatomy ('mni' or a T1 file).")
        if not self.lesions:
            raise InputError("synthesis needs at least one lesion mask file.")
        for path in [Path(a) for a in self.anatomies if a.lower() != "mni"] + list(self.lesions):
            if not Path(path).is_file():
                raise InputError(f"{path}: no such file.")
        return self


class CaseDrawer:
    """Draws prepared training cases from a ``SynthSource`` in this process."""

    def __init__(self, source: SynthSource):
        from .. import labelsynth
        from ..io import load_mask

        self.source = source
        self.anatomies = [labelsynth.load_label_anatomy(a) for a in source.anatomies]
        self.lesions = [load_mask(p) for p in source.lesions]
        self._placed: dict[tuple[int, int, bool], np.ndarray] = {}

    def draw(self, seed: Sequence[int], label: str = "synth") -> TrainingCase:
        """One case; the same ``seed`` gives the same case. Named ``synth-<anatomy>-<lesion
        shape>-<seed>``, or ``<label>-<lesion shape>`` for another ``label``."""
        from .. import labelsynth

        rng = np.random.default_rng(list(seed))
        for _ in range(20):  # a mirrored lesion may miss a small anatomy's brain: draw again
            a, k = int(rng.integers(len(self.anatomies))), int(rng.integers(len(self.lesions)))
            mirror = bool(self.source.mirror and rng.random() < 0.5)
            lesion = self._lesion(a, k, mirror)
            if lesion.any():
                break
        else:
            raise InputError("no lesion mask reaches the anatomies' brains.")
        image, mask = labelsynth.draw_scan(self.anatomies[a], lesion, rng)
        shape = f"{self.source.lesions[k].name.split('.')[0]}{'-mirrored' if mirror else ''}"
        name = f"{label}-{self.anatomies[a].name}-{shape}-{'-'.join(map(str, seed))}" \
            if label == "synth" else f"{label}-{shape}"
        with warnings.catch_warnings():  # lesion-free draws are meant (SynthRanges.lesion_free)
            warnings.filterwarnings("ignore", message=".*the lesion mask is empty")
            return prepare_case(image.data, mask.data, image.affine, name,
                                self.source.input_size, scheme=self.source.scheme)

    def _lesion(self, a: int, k: int, mirror: bool) -> np.ndarray:
        from .. import labelsynth

        key = (a, k, mirror)
        if key not in self._placed:
            self._placed[key] = labelsynth.lesion_on(self.anatomies[a], self.lesions[k], mirror)
        return self._placed[key]


def _worker(source: SynthSource, seed: int, rank: int, first: int, step: int, out: mp.Queue,
            stop) -> None:
    """Draw numbers ``first, first + step, ...`` into ``out``, in order; ``None`` for a draw
    that failed, so that the reader keeps the order."""
    torch.set_num_threads(1)
    try:
        os.nice(5)  # drawing must not slow the training it feeds
    except OSError:
        pass
    out.cancel_join_thread()  # on stop, exit without flushing cases nobody will read
    drawer = CaseDrawer(source)
    index = first
    while not stop.is_set():
        try:
            case = drawer.draw((seed, rank, index))
            item = (case.name, case.slices, case.masks)
        except DunetError as exc:  # one unusable draw: say so and draw the next
            print(f"napari-dunet synthesis: draw {index} skipped: {exc}", file=sys.stderr,
                  flush=True)
            item = None
        index += step
        while not stop.is_set():
            try:
                out.put(item, timeout=0.5)
                break
            except queue.Full:
                continue


class SynthStream:
    """A pool of ``pool_size`` synthetic cases, refreshed from ``workers`` processes each epoch."""

    def __init__(self, source: SynthSource, *, seed: int = 0, rank: int = 0,
                 pool_size: int = 48, queue_size: int = 16, workers: int = 1):
        if workers < 1:
            raise InputError(f"synthesis needs at least one worker process, got {workers}.")
        self.source = source.check()
        context = mp.get_context("spawn")
        self._queues: list[mp.Queue] = [context.Queue(maxsize=max(2, queue_size // workers))
                                        for _ in range(workers)]
        self._stop = context.Event()
        self._processes = [
            context.Process(target=_worker, daemon=True, name=f"napari-dunet-synth-{w}",
                            args=(source, seed, rank, w, workers, q, self._stop))
            for w, q in enumerate(self._queues)]
        self.pool: list[TrainingCase] = []
        self.pool_size = pool_size
        self.drawn = 0  # draws taken (failed ones too): the next comes from worker drawn % n
        for process in self._processes:
            process.start()

    def refresh(self, minimum: int = 8) -> list[TrainingCase]:
        """The pool after taking every case drawn since the last call, in draw order (waiting
        until it holds at least ``minimum``, or as many as it keeps)."""
        minimum = min(minimum, self.pool_size)
        while True:
            short = len(self.pool) < minimum
            source = self._queues[self.drawn % len(self._queues)]
            try:
                item = source.get(timeout=5) if short else source.get_nowait()
            except queue.Empty:
                self._check_alive()  # a stopped worker would leave the pool stale
                if short:
                    continue
                return list(self.pool)
            except (OSError, EOFError) as exc:  # a case whose worker died as it was sent
                self._check_alive()
                raise InputError(f"a synthesised case could not be read ({exc}).") from exc
            self.drawn += 1
            if item is not None:
                self.pool.append(TrainingCase(*item))
                self.pool = self.pool[-self.pool_size:]

    def _check_alive(self) -> None:
        for process in self._processes:
            if not process.is_alive():
                raise InputError(f"a synthesis worker stopped (exit code {process.exitcode}).")

    def close(self) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for source in self._queues:
            source.close()


def validation_cases(source: SynthSource, count: int, seed: int = 10_000) -> list[TrainingCase]:
    """``count`` fixed synthetic cases (drawn here, seeded apart from the training stream)."""
    drawer = CaseDrawer(source)
    return [drawer.draw((seed, i)) for i in range(count)]


def rehearsal_cases(count: int, seed: int = 0, input_size: int = INPUT_SIZE,
                    scheme: str = DEFAULT_SCHEME) -> list[TrainingCase]:
    """``count`` synthetic cases to mix into a fine-tune against forgetting: draws of the
    default weights' own training distribution (``labelsynth.draw_scan``: random contrast,
    shape, resolution and view) on nilearn's MNI152 template (needs nilearn), with the real
    lesion shapes shipped in ``sample_data/lesion_shapes`` (16 of those they were trained on)."""
    return list(rehearsal_draws(count, seed, input_size, scheme))


def rehearsal_draws(count: int, seed: int = 0, input_size: int = INPUT_SIZE,
                    scheme: str = DEFAULT_SCHEME) -> Iterator[TrainingCase]:
    """``rehearsal_cases`` one at a time (the template is read at the first)."""
    from .._sample_data import LESION_SHAPES
    from ..io import nifti_files

    drawer = CaseDrawer(SynthSource(("mni",), tuple(nifti_files(LESION_SHAPES)),
                                    input_size=input_size, scheme=scheme))
    for index in range(count):
        yield drawer.draw((seed, index), label=f"rehearsal-{index}")  # rehearsal-0-Subject_066
