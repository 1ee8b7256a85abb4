"""Training options (torch-free, so that command-line parsing and widgets stay light)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import options
from ..errors import InputError
from ..options import DEFAULT_MODEL, LOSSES, OPTIMIZERS, PRECISIONS, TRAIN_LAYERS, check_choice

INPUT_SIZE = 192  # preprocessing.INPUT_SIZE, without importing torch


@dataclass
class TrainConfig:
    """Everything that decides what training does (stored in checkpoints as JSON)."""

    model: str = DEFAULT_MODEL
    epochs: int = 20
    batch_size: int = 8  # stacks per step and process
    lr: float = 1e-4
    optimizer: str = "adam"  # "adam" (fine-tuning default) or "sgd" (paper)
    momentum: float = 0.0  # SGD only; the authors' code uses none
    loss: str = "eml"
    augment: bool = True
    lesion_fraction: float = 0.5  # share of each batch drawn from slices with lesion
    patience: int = 10  # stop after this many epochs without a better validation DSC; 0: never
    # a checked fine-tune replaces its starting weights only with an epoch whose validation DSC
    # beats theirs by more than this: a few held-back slices score a changed model a little
    # better by chance (clinical T1 domain: held-back +0.009, unseen cases -0.003)
    min_gain: float = 0.01
    seed: int = 0
    input_size: int = INPUT_SIZE
    crop_size: int | None = None  # train on random windows of this size (None: whole slices)
    steps_per_epoch: int | None = None  # default: as many stacks as there are head slices
    val_batch_size: int = 16
    device: str = "auto"
    # "auto": mixed precision on GPUs; on a CPU "mixed" where a bf16 training step was measured
    # faster than fp32 (cpu_dtype.training_precision; D-UNet steps 2.5x faster on the 2-core
    # Intel Xeon with AMX, docs/performance.md), else float32; "bf16": bfloat16 autocast, also
    # on CPUs; "mixed": bf16 steps, and validation masks as inference's "mixed" makes them (the
    # fp32 masks); "fp32": float32
    precision: str = "auto"
    max_minutes: float | None = None  # stop by time: the epoch at the limit ends early, saved
    # BatchNorm layers keep the statistics they start with (running mean and variance frozen):
    # a few small batches of crops would otherwise replace those of the whole slices the
    # network segments
    freeze_norm: bool = False
    # "decoder": only the decoder and the output layer learn; the encoder (weights and
    # normalisation statistics) stays as it started, so features the network reads on the cases
    # it was trained on are kept, and steps are faster (no gradient through the encoder)
    train_layers: str = "all"
    warmup_steps: int = 0  # the learning rate rises linearly to ``lr`` over this many steps
    # the preprocessing scheme the cases are prepared with and the model will expect; a
    # fine-tune keeps its starting checkpoint's (``options.PREPROCESSING``)
    preprocessing: str = options.DEFAULT_PREPROCESSING

    def check(self) -> None:
        """Raise ``InputError`` for values training cannot run with (imports no torch)."""
        problems = [p for p in (check_choice("model", self.model, options.MODELS),
                                check_choice("loss", self.loss, LOSSES),
                                check_choice("optimizer", self.optimizer, OPTIMIZERS),
                                check_choice("precision", self.precision, PRECISIONS),
                                check_choice("train layers", self.train_layers, TRAIN_LAYERS),
                                check_choice("preprocessing", self.preprocessing,
                                             options.PREPROCESSING)) if p]
        if self.epochs < 1 or self.batch_size < 1 or self.val_batch_size < 1:
            problems.append("epochs and batch sizes must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"the learning rate must be positive, got {self.lr}")
        if not 0.0 <= self.lesion_fraction <= 1.0:
            problems.append(f"the lesion fraction must be in [0, 1], got {self.lesion_fraction}")
        if self.input_size < 16 or self.input_size % 16:
            problems.append(f"the input size must be a multiple of 16, got {self.input_size}")
        if self.crop_size is not None and not (
                16 <= self.crop_size <= self.input_size and self.crop_size % 16 == 0):
            problems.append(f"the crop size must be a multiple of 16 between 16 and the input "
                            f"size {self.input_size}, got {self.crop_size}")
        if self.warmup_steps < 0:
            problems.append(f"warm-up steps must be 0 or more, got {self.warmup_steps}")
        if not 0.0 <= self.min_gain < 1.0:
            problems.append(f"the least gain over the starting weights must be in [0, 1), got "
                            f"{self.min_gain}")
        if self.patience < 0:
            problems.append(f"patience must be 0 (off) or more epochs, got {self.patience}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append("steps per epoch must be at least 1")
        if self.max_minutes is not None and not (self.max_minutes > 0
                                                 and math.isfinite(self.max_minutes)):
            problems.append(f"the time limit must be a positive number of minutes, got "
                            f"{self.max_minutes}")
        if problems:
            raise InputError("; ".join(problems) + ".")


# Few-case fine-tuning on a CPU, the Fine-tune panel's default (measured by
# benchmarks/adaptation.py, docs/training.md): the decoder learns at a low rate on whole
# slices, as the default weights were trained (lesion-centred crops moved them away at once:
# held-back DSC 0.751 -> 0.569 after 19 steps, whole slices 0.757), normalisation keeps its
# statistics (so the encoder stays exactly as it was), the clock ends the run, and every epoch
# is checked on the held-back data in small batches (a stop is answered between two). No
# synthetic rehearsal cases by default: mixed in, they pulled the decoder away from the
# corrected cases (3 clinical T2-like cases, 2 minutes: held-back 0.751 -> 0.689 with 2 per
# case, 0.817 without; the bundled sample 0.792 -> 0.69 at best against 0.882), and without them
# synthetic T1 cases of the source domain moved by -0.002. Five minutes, since the step count
# decides: on a 2-core CPU without bf16 (24 steps in 2 minutes) three clinical T1 cases moved
# six unseen ones +0.001 in 2 minutes and +0.014 in 5 (72 steps)
QUICK = {"train_layers": "decoder", "lr": 1e-4, "crop_size": None, "steps_per_epoch": 40,
         "batch_size": 8, "freeze_norm": True, "max_minutes": 5.0, "epochs": 100_000,
         "val_batch_size": 4}
HOLD_BACK = 0.2  # share of the corrected data a fine-tune holds back to check each epoch on
QUICK_REHEARSAL_PER_CASE = 0
MAX_REHEARSAL = 20  # about a minute to draw on a 2-core CPU (about 3 s each)


def rehearsal_count(n_cases: int, per_case: int = QUICK_REHEARSAL_PER_CASE) -> int:
    """Synthetic rehearsal cases to mix into a fine-tune on ``n_cases`` corrected cases."""
    return min(per_case * n_cases, MAX_REHEARSAL)
