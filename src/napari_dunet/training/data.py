"""Training cases as preprocessed axial slices, case splits and lesion-balanced batches.

A case is kept in memory as its ``(Z, S, S)`` slices in float16 and its mask slices in uint8
(``S`` = the network input size, 192), about 21 MB per ATLAS case. Stacks (slices i-2..i+1)
are cut on the fly when a batch is drawn. Slices outside the head (almost no signal) are never
sampled; lesion slices are over-sampled so that a fixed share of every batch shows lesion.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch

from ..errors import InputError
from ..io import Case, find_cases, load_volume
from ..preprocessing import DEFAULT_SCHEME, INPUT_SIZE, STACK_OFFSETS, make_stacks, preprocess

HEAD_LEVEL = 0.1  # normalised intensity that counts as tissue
HEAD_AREA = 0.01  # a slice shows head if at least this share of its pixels is tissue

T = TypeVar("T")


@dataclass
class TrainingCase:
    """One scan and its lesion mask as network-sized axial slices."""

    name: str
    slices: torch.Tensor  # (Z, S, S) float16, intensities in [0, 1]
    masks: torch.Tensor  # (Z, S, S) uint8, 0/1
    # boolean (Z,): the slices this case lends (``hold_back``: training or held-back ones);
    # None: all. The others are still read as the neighbours of a stack.
    use: np.ndarray | None = None

    @property
    def head(self) -> np.ndarray:
        """Boolean (Z,): slices showing head (or lesion); the others are never sampled."""
        tissue = (self.slices > HEAD_LEVEL).float().mean(dim=(1, 2)) >= HEAD_AREA
        return self._used((tissue | self.lesion_slices()).numpy())

    def lesion_slices(self) -> torch.Tensor:
        return (self.masks.flatten(1) > 0).any(dim=1)

    @property
    def lesion(self) -> np.ndarray:
        """Boolean (Z,): slices with at least one lesion pixel."""
        return self._used(self.lesion_slices().numpy())

    def _used(self, slices: np.ndarray) -> np.ndarray:
        return slices if self.use is None else slices & self.use

    def stacks(self, indices: Sequence[int]) -> torch.Tensor:
        """``(N, 4, S, S)`` float32 stacks centred on ``indices`` (zero outside the volume)."""
        return torch.cat([self._stack(int(i)) for i in indices])

    def _stack(self, index: int) -> torch.Tensor:
        # make_stacks on the few slices around ``index`` only: same result, no whole-volume copy
        lo = max(0, index + STACK_OFFSETS[0])
        hi = min(self.slices.shape[0], index + STACK_OFFSETS[-1] + 1)
        return make_stacks(self.slices[lo:hi].float(), [index - lo])


def prepare_case(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, name: str = "case",
                 input_size: int = INPUT_SIZE, scheme: str = DEFAULT_SCHEME) -> TrainingCase:
    """Image and mask (same native grid) -> ``TrainingCase``, with the inference preprocessing.

    Raises ``InputError`` if the shapes differ; an empty mask is allowed but warned about.
    """
    image, mask = np.asarray(image), np.asarray(mask)
    if image.shape != mask.shape:
        raise InputError(f"{name}: the image has shape {image.shape} but the mask has shape "
                         f"{mask.shape}; the mask must be drawn on the image's voxel grid.")
    if image.ndim != 3:
        raise InputError(f"{name}: expected a 3D image, got shape {image.shape}.")
    if not np.any(mask):
        warnings.warn(f"{name}: the lesion mask is empty; the case only shows the network "
                      f"lesion-free slices.", stacklevel=2)
    try:
        geometry, normalized = preprocess(image, affine, scheme=scheme, size=input_size)
        slices = geometry.forward(normalized)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    masks = geometry.forward((mask > 0).astype(np.float32)) >= 0.5
    return TrainingCase(name, slices.half(), masks.to(torch.uint8))


def load_case(case: Case, input_size: int = INPUT_SIZE,
              scheme: str = DEFAULT_SCHEME) -> TrainingCase:
    """Read a ``io.Case`` (image and its mask files) from disk and prepare it."""
    volume = load_volume(case.image)
    mask = case.load_mask(volume)
    return prepare_case(volume.data, mask.data, volume.affine, case.name, input_size, scheme)


def find_training_cases(sources: Sequence[str | os.PathLike]) -> list[Case]:
    """Cases with lesion masks in folders (``io.find_cases`` layouts) or image files (the mask
    found beside the image as ``find_cases`` finds it in that folder), sorted by name.

    Cases without a mask are skipped with a warning; none left raises ``InputError``.
    """
    cases = [case for source in sources for case in _cases_in(Path(source))]
    unlabelled = [c.name for c in cases if not c.masks]
    if unlabelled:
        warnings.warn(f"{len(unlabelled)} case(s) have no lesion mask and are skipped: "
                      f"{', '.join(unlabelled[:5])}{' ...' if len(unlabelled) > 5 else ''}",
                      stacklevel=2)
    labelled = sorted((c for c in cases if c.masks), key=lambda c: c.name)
    if not labelled:
        raise InputError(f"no image with a lesion mask found in {', '.join(map(str, sources))}.")
    names = [c.name for c in labelled]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"several cases share a name: {', '.join(dupes)}.")
    return labelled


def _cases_in(source: Path) -> list[Case]:
    if source.is_file():
        beside = [c for c in find_cases(source.parent) if c.image.resolve() == source.resolve()]
        return beside or find_cases(source)
    return find_cases(source)


def split_cases(cases: Sequence[T], val_fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """Random split by case (seeded): ``(training, validation)``; same order on every rank.

    A positive ``val_fraction`` keeps at least one case on each side; otherwise ``InputError``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"the validation fraction must be in [0, 1), got {val_fraction}.")
    n = len(cases)
    if val_fraction == 0:
        return list(cases), []
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise InputError(f"too few cases for a validation split: {n} case(s) with validation "
                         f"fraction {val_fraction} leave(s) none to train on; add cases or "
                         f"use a validation fraction of 0.")
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [cases[i] for i in train], [cases[i] for i in val]


HOLD_BACK_BLOCK = 8  # network slices (about 8 mm) held back together: neighbours look alike
MIN_CASES_TO_HOLD_BACK = 4  # fewer cases: hold back slices of each case instead of cases
MAX_HELD_BACK_SLICES = 48  # checked, all cases together: a check then takes seconds on a CPU


def hold_back(cases: Sequence[TrainingCase], fraction: float,
              seed: int = 0) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """Split corrected cases into ``(training, held back)`` for a fine-tune's checks.

    With ``MIN_CASES_TO_HOLD_BACK`` cases or more, whole cases (``split_cases``). With fewer,
    blocks of ``HOLD_BACK_BLOCK`` adjacent slices of each case's head: every
    ``round(1 / fraction)``-th block (the first of a seeded order of offsets whose blocks show
    lesion, where the case has any); so a single case is both trained and checked on, on slices
    it does not learn from. Either way the checks read at most ``MAX_HELD_BACK_SLICES`` slices
    in all: whole blocks, a block with lesion and one without in turn.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"the held-back share must be between 0 and 1, got {fraction}.")
    whole = len(cases) >= MIN_CASES_TO_HOLD_BACK
    train, held = split_cases(cases, fraction, seed) if whole else ([], list(cases))
    period = 1 if whole else max(2, round(1 / fraction))
    per_case = max(1, MAX_HELD_BACK_SLICES // HOLD_BACK_BLOCK // len(held))
    checked = []
    for index, case in enumerate(held):
        head, lesion = case.head, case.lesion
        block = (np.arange(len(head)) - int(np.argmax(head))) // HOLD_BACK_BLOCK
        rng = np.random.default_rng([seed, index])
        offsets = rng.permutation(period)
        shown = [k for k in offsets if (lesion & (block % period == k)).any()]
        offset = (shown or list(offsets))[0]
        candidates = rng.permutation(np.unique(block[head & (block % period == offset)]))
        shows = [bool((lesion & (block == b)).any()) for b in candidates]
        order = _alternate([b for b, y in zip(candidates, shows) if y],
                           [b for b, y in zip(candidates, shows) if not y])
        back = head & np.isin(block, order[:per_case])
        if not whole and (not back.any() or not (head & ~back).any()):
            raise InputError(f"{case.name}: too few head slices to hold some back for the "
                             f"fine-tune's check.")
        if not whole:
            train.append(TrainingCase(case.name, case.slices, case.masks, head & ~back))
        checked.append(TrainingCase(case.name, case.slices, case.masks, back))
    return train, checked


def _alternate(first: Sequence[T], second: Sequence[T]) -> list[T]:
    """``first[0], second[0], first[1], ...``, then the rest of the longer one."""
    return [x for pair in zip(first, second) for x in pair] + \
        list(first[len(second):]) + list(second[len(first):])


class BalancedSampler:
    """Batches of ``(case, slice)`` picks: ``lesion_fraction`` of each from lesion slices.

    Each pool (lesion slices; other head slices) is shuffled and walked through, reshuffled when
    used up; an empty pool gives its share to the other one.
    """

    def __init__(self, cases: Sequence[TrainingCase], batch_size: int, lesion_fraction: float = 0.5):
        if batch_size < 1:
            raise InputError(f"the batch size must be at least 1, got {batch_size}.")
        lesion, background = [], []
        for c, case in enumerate(cases):
            head, les = case.head, case.lesion
            lesion += [(c, z) for z in np.flatnonzero(les)]
            background += [(c, z) for z in np.flatnonzero(head & ~les)]
        self.lesion = np.array(lesion, dtype=np.int64).reshape(-1, 2)
        self.background = np.array(background, dtype=np.int64).reshape(-1, 2)
        if not len(self.lesion) and not len(self.background):
            raise InputError("the training cases have no slice showing a head.")
        self.batch_size = batch_size
        n_lesion = int(round(batch_size * lesion_fraction)) if len(self.lesion) else 0
        self.n_lesion = batch_size if not len(self.background) else n_lesion

    @property
    def n_slices(self) -> int:
        """Slices that can be drawn (head slices)."""
        return len(self.lesion) + len(self.background)

    def batches(self, n_batches: int, rng: np.random.Generator) -> list[np.ndarray]:
        """``n_batches`` arrays of shape ``(batch_size, 2)`` holding (case index, slice index)."""
        n_bg = self.batch_size - self.n_lesion
        lesion = _cycle(self.lesion, n_batches * self.n_lesion, rng)
        background = _cycle(self.background, n_batches * n_bg, rng)
        return [np.concatenate([lesion[b * self.n_lesion:(b + 1) * self.n_lesion],
                                background[b * n_bg:(b + 1) * n_bg]]) for b in range(n_batches)]


def _cycle(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` rows of ``pool``: successive shuffled passes over it."""
    if count == 0:
        return pool[:0]
    passes = -(-count // len(pool))
    return np.concatenate([pool[rng.permutation(len(pool))] for _ in range(passes)])[:count]


def make_batch(cases: Sequence[TrainingCase], picks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 4, S, S)`` float32 stacks and ``(B, 1, S, S)`` float32 0/1 targets for the picks."""
    images = torch.cat([cases[c].stacks([z]) for c, z in picks])
    masks = torch.stack([cases[c].masks[z] for c, z in picks])[:, None].float()
    return images, masks


def load_cases(cases: Sequence[Case], input_size: int = INPUT_SIZE,
               progress: Callable[[int, int], None] | None = None,
               scheme: str = DEFAULT_SCHEME) -> list[TrainingCase]:
    """Prepare several cases from disk, reporting ``progress(done, total)``."""
    prepared = []
    for i, case in enumerate(cases):
        prepared.append(load_case(case, input_size, scheme))
        if progress is not None:
            progress(i + 1, len(cases))
    return prepared
