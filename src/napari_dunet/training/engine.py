"""The training loop: from scratch or fine-tuning, one process or many (``torchrun``).

``training_events`` is a generator: it yields a ``StepProgress`` after every optimizer step and
an ``EpochMetrics`` after every epoch, and returns a ``TrainResult``; ``train`` drives it with
callbacks. After every epoch, rank 0 writes (atomically)

* ``out``: the model with the best validation DSC so far (the last model when there is no
  validation case), a checkpoint that ``checkpoint.load_checkpoint`` and segmentation read;
  a fine-tune (``init``) with validation cases first scores its starting weights on them
  (``StartScore``) and writes ``out`` only for an epoch that beats them by more than
  ``config.min_gain``, with the starting checkpoint's threshold and seed threshold
  (validation masks are made with them too);
* ``state_path(out)``: the last model, the optimizer and the epoch count, for ``resume``.

Every epoch draws its batches and augmentations from generators seeded by (seed, epoch, rank),
so a resumed run repeats the epochs an uninterrupted run would have done. A stop request
(``cancel()``) abandons the running epoch; the files keep the last completed one. In one
process it is answered at once: a step or check in hand is left to finish on its own
(``interrupt.interruptible``) and its result dropped.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch
from torch import nn

from ..checkpoint import default_metadata, load_checkpoint, save_checkpoint
from ..errors import Cancelled, CheckpointError, DunetError, InputError
from ..cpu_dtype import training_precision
from ..inference import Precision, precision_context, predict_slices, resolve_device
from ..losses import get_loss
from ..metrics import Confusion, confusion, dice
from ..models import build_model
from ..segmentation import (checkpoint_preprocessing, checkpoint_seed_threshold,
                            checkpoint_threshold, threshold_mask)
from .augment import Augmentation, augment_batch, random_crops
from .config import TrainConfig
from .data import BalancedSampler, TrainingCase, make_batch
from .distributed import Distributed
from .interrupt import interruptible
from .state import read_state, save_state, state_path

@dataclass(frozen=True)
class StepProgress:
    epoch: int
    step: int  # 1-based within the epoch
    steps: int  # per epoch
    loss: float
    done: int  # steps done in this run
    total: int  # steps this run will do if not stopped early


@dataclass(frozen=True)
class StartScore:
    """A fine-tune's starting weights scored on the validation cases, before any step."""

    val_dsc: float
    val_global_dsc: float
    seconds: float


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float  # mean over the epoch's steps (and processes)
    val_dsc: float | None  # mean per-case DSC of the held-out cases (None without any)
    val_global_dsc: float | None  # DSC of their pooled voxels
    seconds: float
    saved: bool  # ``out`` now holds this epoch's model


@dataclass
class TrainResult:
    checkpoint: Path | None  # None if no epoch was completed
    state: Path | None
    epochs_completed: int
    best_epoch: int | None
    best_val_dsc: float | None
    history: list[EpochMetrics] = field(default_factory=list)
    stop_reason: str = "completed"  # "completed", "early-stopped", "cancelled", "out-of-time"
    message: str = ""
    start_val_dsc: float | None = None  # a fine-tune's starting weights (``StartScore``)

    @property
    def improved(self) -> bool:
        """A model was saved, and for a checked fine-tune it beat the starting weights."""
        return self.checkpoint is not None


Event = StartScore | StepProgress | EpochMetrics


def train(train_cases: Sequence[TrainingCase], val_cases: Sequence[TrainingCase],
          config: TrainConfig, out: str | Path, *, init: str | Path | None = None,
          resume: bool = False, progress: Callable[[int, int], None] | None = None,
          on_epoch: Callable[[EpochMetrics], None] | None = None,
          cancel: Callable[[], bool] | None = None,
          dist: Distributed | None = None) -> TrainResult:
    """Train and return the result; ``progress(done, total)`` after each step,
    ``on_epoch(metrics)`` after each epoch, ``cancel()`` polled before each step.

    See ``training_events`` for the arguments.
    """
    def handle(event: Any) -> None:
        if isinstance(event, StepProgress) and progress is not None:
            progress(event.done, event.total)
        elif isinstance(event, EpochMetrics) and on_epoch is not None:
            on_epoch(event)

    return drive(training_events(train_cases, val_cases, config, out, init=init, resume=resume,
                                 cancel=cancel, dist=dist), handle)


def drive(events: Generator[Any, None, TrainResult],
          on_event: Callable[[Any], None] | None = None) -> TrainResult:
    """Run ``training_events`` (or ``finetune.fine_tune_events``) to the end, handing every
    event to ``on_event``; returns the ``TrainResult``."""
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def training_events(train_cases: Sequence[TrainingCase], val_cases: Sequence[TrainingCase],
                    config: TrainConfig, out: str | Path, *, init: str | Path | None = None,
                    resume: bool = False, cancel: Callable[[], bool] | None = None,
                    dist: Distributed | None = None) -> Generator[Event, None, TrainResult]:
    """Train ``config.model`` on this process's ``train_cases``, validating on ``val_cases``.

    ``train_cases`` may be a ``synthetic.SynthStream``: each epoch then trains on its current
    pool (``config.steps_per_epoch`` steps); a resumed run draws a new stream.

    ``init``: checkpoint to start from (fine-tuning); ``resume``: continue from
    ``state_path(out)``. With ``dist`` (``torchrun``) each process passes its own shard of the
    cases. GPU memory is released when the generator finishes or is closed.
    """
    dist = dist or Distributed()
    try:  # reading the starting weights and sizing the cases: a stop need not wait for it
        trainer = interruptible(lambda: _Trainer(train_cases, val_cases, config, Path(out), init,
                                                 resume, dist), None if dist.enabled else cancel)
    except Cancelled:
        return TrainResult(None, None, 0, None, None, stop_reason="cancelled",
                           message="Stopped before training started; nothing was saved.")
    try:
        return (yield from trainer.run(cancel))
    finally:
        trainer.release()


def _without_triton_when_no_gpu() -> None:
    """Mark triton absent on a machine without a CUDA device, unless it is imported already.

    Triton compiles GPU kernels only, yet torch's optimizers import it on first use wherever it
    is installed (PyPI's CUDA builds of torch bring it), and its own LLVM crashes the process on
    import (segmentation fault) beside Mesa's, which napari on software OpenGL has loaded.
    """
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # import triton: ImportError


class _Trainer:
    def __init__(self, train_cases: Sequence[TrainingCase], val_cases: Sequence[TrainingCase],
                 config: TrainConfig, out: Path, init: str | Path | None, resume: bool,
                 dist: Distributed):
        config.check()
        if init is not None and resume:
            raise InputError("resuming continues from the saved training state; do not also "
                             "give an initial checkpoint.")
        self.stream = train_cases if hasattr(train_cases, "refresh") else None
        if self.stream is not None:
            if config.steps_per_epoch is None:
                raise InputError("training on synthesised cases needs a number of steps per epoch.")
            train_cases = self.stream.refresh()
        if not train_cases:
            raise InputError("no training case" + (f" for process {dist.rank}: use at least as "
                             f"many training cases as processes ({dist.world_size})"
                             if dist.enabled else "") + ".")
        self.config, self.out, self.dist, self.init = config, out, dist, init
        self.state_file = state_path(out)
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and dist.enabled:
            self.device = torch.device("cuda", dist.local_rank)
        _without_triton_when_no_gpu()
        self.train_cases, self.val_cases = list(train_cases), list(val_cases)
        self.sampler = BalancedSampler(self.train_cases, config.batch_size, config.lesion_fraction)
        head_slices, n_train, n_val = dist.sum(
            [self.sampler.n_slices, len(self.train_cases), len(self.val_cases)])
        self.n_cases = {"train": int(n_train), "validation": int(n_val)}
        self.steps = config.steps_per_epoch or max(
            1, math.ceil(head_slices / (config.batch_size * dist.world_size)))
        self.loss_fn = get_loss(config.loss)
        self.epoch, self.stale = 0, 0
        self.best: dict[str, Any] | None = None  # {"epoch", "val_dsc"}; epoch 0: the start
        self.start_val_dsc: float | None = None
        self.thresholds: dict[str, float | None] = {"threshold": 0.5, "seed_threshold": None}
        self.history: list[EpochMetrics] = []

        torch.manual_seed(config.seed)
        if init is not None:
            model, metadata = load_checkpoint(init, model_name=config.model)
            expects = checkpoint_preprocessing(metadata)
            if expects != config.preprocessing:
                raise CheckpointError(f"{init} expects the '{expects}' preprocessing; fine-tune "
                                      f"it with that one (TrainConfig.preprocessing), not "
                                      f"'{config.preprocessing}'.")
            self.thresholds = {"threshold": checkpoint_threshold(metadata),
                               "seed_threshold": checkpoint_seed_threshold(metadata)}
        else:
            model = build_model(config.model)
        self.model = model.to(self.device)
        self.precision: Precision = config.precision  # type: ignore[assignment]
        if self.device.type == "cpu":  # "auto": the dtype measured fastest (one process)
            auto = self.precision == "auto" and dist.enabled  # processes must agree: fp32
            self.precision = training_precision(  # type: ignore[assignment]
                self.model, "fp32" if auto else self.precision)
        self.channels_last = self.device.type == "cpu"  # batches as NHWC, like the weights
        self.optimizer = self._make_optimizer()
        if resume:
            self._restore()
        self.net: nn.Module = self.model
        if dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.autocast = lambda: precision_context(self.device, self.precision)
        with self.autocast() as ctx:
            fp16 = getattr(ctx, "fast_dtype", None) == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    # -- setup ----------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.train_layers == "decoder":
            learning = ("decoder.", "head.")
            for name, param in self.model.named_parameters():
                param.requires_grad_(name.startswith(learning))
            if not any(p.requires_grad for p in self.model.parameters()):
                raise InputError(f"model '{c.model}' has no decoder to train on its own; train "
                                 f"all layers.")
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer.lower() == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum)
        return torch.optim.Adam(params, lr=c.lr)

    def _restore(self) -> None:
        model_state, optimizer_state, info = read_state(self.state_file)
        saved = info.get("config", {})
        for key in ("model", "optimizer", "input_size", "train_layers"):
            if str(saved.get(key)).lower() != str(getattr(self.config, key)).lower():
                raise CheckpointError(
                    f"{self.state_file}: the saved training used {key} {saved.get(key)!r}, not "
                    f"{getattr(self.config, key)!r}; resume with the same {key}.")
        try:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optimizer_state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.state_file}: the saved state does not fit "
                                  f"({str(exc).splitlines()[0]}).") from exc
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr
        self.epoch, self.stale, self.best = info["epoch"], info["stale_epochs"], info["best"]
        self.start_val_dsc = info.get("start_val_dsc")
        self.thresholds = info.get("thresholds", self.thresholds)
        self.history = [EpochMetrics(**m) for m in info["history"]]

    # -- the loop -------------------------------------------------------------------------------
    def run(self, cancel: Callable[[], bool] | None) -> Generator[Event, None, TrainResult]:
        first, last = self.epoch + 1, self.config.epochs
        if first > last:
            result = self._result("completed")
            result.message = (f"The saved training already ran {_epochs(self.epoch)}; ask for "
                              f"more than {self.epoch} epochs to continue it.")
            return result
        total = max(0, last - first + 1) * self.steps
        done = 0
        minutes = self.config.max_minutes
        deadline = None if minutes is None else time.perf_counter() + 60.0 * minutes
        stop = None if self.dist.enabled else cancel  # every process takes every step
        if self.init is not None and self.n_cases["validation"] and self.best is None:
            started = time.perf_counter()
            try:
                start_dsc, start_global = interruptible(lambda: self._validate(cancel), stop)
            except Cancelled:
                return self._result("cancelled")
            self.best, self.start_val_dsc = {"epoch": 0, "val_dsc": start_dsc}, start_dsc
            yield StartScore(start_dsc, start_global, time.perf_counter() - started)
        for epoch in range(first, last + 1):
            started = time.perf_counter()
            if self.stream is not None and epoch > first:
                self.train_cases = self.stream.refresh()
                self.sampler = BalancedSampler(self.train_cases, self.config.batch_size,
                                               self.config.lesion_fraction)
            rng, generator = self._seed(epoch)
            self.net.train()
            for module in self.model.modules():  # normalisation that keeps its statistics
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
                        self.config.freeze_norm
                        or not any(p.requires_grad for p in module.parameters())):
                    module.eval()
            losses = []
            for step, picks in enumerate(self.sampler.batches(self.steps, rng), start=1):
                if cancel is not None and cancel():
                    return self._result("cancelled")
                try:
                    losses.append(interruptible(
                        lambda: self._step(picks, generator, epoch, step), stop))
                except Cancelled:
                    return self._result("cancelled")
                done += 1
                yield StepProgress(epoch, step, self.steps, losses[-1], done, total)
                if self._out_of_time(deadline):
                    break  # this epoch ends here: validated and saved below
            loss_sum, loss_count = self.dist.sum([sum(losses), len(losses)])
            try:
                val_dsc, val_global = interruptible(lambda: self._validate(cancel), stop)
            except Cancelled:
                return self._result("cancelled")
            improved = val_dsc is None or self.best is None or val_dsc > self.best["val_dsc"] + (
                self.config.min_gain if self.best["epoch"] == 0 else 0.0)
            self.stale = 0 if improved else self.stale + 1
            metrics = EpochMetrics(epoch, loss_sum / loss_count, val_dsc, val_global,
                                   time.perf_counter() - started, saved=improved)
            self.epoch = epoch
            self.history.append(metrics)
            if improved:
                self.best = {"epoch": epoch, "val_dsc": val_dsc}
            self._save(improved)
            yield metrics
            patience = self.config.patience
            if val_dsc is not None and patience and self.stale >= patience:
                return self._result("early-stopped")
            if self._out_of_time(deadline) and epoch < last:
                return self._result("out-of-time")
        return self._result("completed")

    def _out_of_time(self, deadline: float | None) -> bool:
        """Past ``deadline``? Every process stops at the same step (any one past it)."""
        if deadline is None:
            return False
        late = float(time.perf_counter() >= deadline)
        return (self.dist.sum([late])[0] if self.dist.enabled else late) > 0

    def _seed(self, epoch: int) -> tuple[np.random.Generator, torch.Generator]:
        """Generators for the epoch's batches and augmentations; seeds dropout too."""
        a, b = np.random.SeedSequence([self.config.seed, epoch, self.dist.rank]).generate_state(2)
        torch.manual_seed(int(b))
        return np.random.default_rng(int(a)), torch.Generator().manual_seed(int(b))

    def _step(self, picks: np.ndarray, generator: torch.Generator, epoch: int, step: int) -> float:
        images, masks = make_batch(self.train_cases, picks)
        images, masks = images.to(self.device), masks.to(self.device)
        if self.config.augment:
            images, masks = augment_batch(images, masks, generator, Augmentation())
        if self.config.crop_size:
            images, masks = random_crops(images, masks, self.config.crop_size, generator)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        warmup = self.config.warmup_steps
        if warmup:
            done = (epoch - 1) * self.steps + step  # steps of the run, this one included
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr * min(1.0, done / warmup)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            probs = self.net(images)
        loss = self.loss_fn(probs.float(), masks)
        value = float(loss.item())
        if not math.isfinite(value):
            raise DunetError(f"the training loss became {value} in epoch {epoch}; lower the "
                             f"learning rate. The files keep the last completed epoch.")
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    def _validate(self, cancel: Callable[[], bool] | None) -> tuple[float | None, float | None]:
        """Mean per-case and pooled DSC over the held-out cases' head slices (192x192 space),
        masks made at ``self.thresholds`` (the seed rule within each run of adjacent slices)."""
        if not self.n_cases["validation"]:
            return None, None
        self.model.eval()
        threshold, seed = self.thresholds["threshold"], self.thresholds["seed_threshold"]
        dsc_sum, pooled = 0.0, Confusion()
        for case in self.val_cases:
            head = np.flatnonzero(case.head)
            probs = predict_slices(self.model, case.stacks(head), self.device,
                                   self.config.val_batch_size, cancel=cancel,
                                   precision=self.precision,
                                   thresholds=(threshold, *([seed] if seed else []))).numpy()
            runs = np.split(np.arange(len(head)), np.flatnonzero(np.diff(head) > 1) + 1)
            masks = np.concatenate([threshold_mask(probs[run], threshold, seed) for run in runs])
            counts = confusion(masks, case.masks[head].numpy())
            dsc_sum += dice(counts)
            pooled = pooled + counts
        dsc_sum, n, tp, fp, fn = self.dist.sum(
            [dsc_sum, len(self.val_cases), pooled.tp, pooled.fp, pooled.fn])
        return dsc_sum / n, dice(Confusion(int(tp), int(fp), int(fn)))

    # -- files ----------------------------------------------------------------------------------
    def _save(self, model_improved: bool) -> None:
        if self.dist.is_main:
            if model_improved:
                self._write(self.out, lambda: save_checkpoint(self.out, self.model, self._metadata()))
            info = {"epoch": self.epoch, "model": self.config.model, "config": asdict(self.config),
                    "history": [asdict(m) for m in self.history], "best": self.best,
                    "stale_epochs": self.stale, "start_val_dsc": self.start_val_dsc,
                    "thresholds": self.thresholds}
            self._write(self.state_file,
                        lambda: save_state(self.state_file, self.model, self.optimizer, info))
        self.dist.barrier()

    def _write(self, path: Path, write: Callable[[], Path]) -> None:
        try:
            write()
        except (OSError, InputError) as exc:  # io.atomic_write words an OSError as InputError
            kept = (f"the previous {path.name} is unchanged" if path.exists()
                    else "nothing was written")
            raise CheckpointError(f"cannot write {path} after epoch {self.epoch} "
                                  f"({exc.__cause__ or exc}); {kept}.") from exc

    def _metadata(self) -> dict[str, Any]:
        meta = default_metadata(self.config.model, **{
            key: value for key, value in self.thresholds.items() if value is not None})
        meta["preprocessing"].update(input_size=self.config.input_size,
                                     scheme=self.config.preprocessing)
        last = self.history[-1]
        meta["training"] = {
            "epoch": self.epoch, "train_loss": last.train_loss, "val_dsc": last.val_dsc,
            "val_global_dsc": last.val_global_dsc, "start_val_dsc": self.start_val_dsc,
            "cases": self.n_cases,
            "processes": self.dist.world_size,
            "init": str(self.init) if self.init is not None else None,
            "config": asdict(self.config)}
        if self.stream is not None:
            meta["training"]["synthesis"] = self.stream.source.record()
        elif not self.dist.enabled:  # provenance: what this model learned from
            meta["training"]["case_names"] = [case.name for case in self.train_cases]
        return meta

    def _result(self, reason: str) -> TrainResult:
        best_epoch = self.best["epoch"] if self.best else None
        best_dsc = self.best["val_dsc"] if self.best else None
        saved = self.out.is_file() and bool(best_epoch)
        if self.best is None:
            message = "Stopped before the first epoch finished; no model was saved."
        elif not best_epoch:  # a checked fine-tune: no epoch beat the starting weights
            tried = [m.val_dsc for m in self.history if m.val_dsc is not None]
            margin = f" by more than {self.config.min_gain:g}" if self.config.min_gain else ""
            why = (f"no epoch beat their validation DSC {best_dsc:.3f}{margin} (best epoch "
                   f"{max(tried):.3f})" if tried else
                   f"stopped before the first epoch finished (validation DSC {best_dsc:.3f})")
            message = f"Kept the starting weights: {why}; {self.out.name} was not written."
        else:
            start = (f", {self.start_val_dsc:.3f} at the start"
                     if self.start_val_dsc is not None else "")
            score = f" (validation DSC {best_dsc:.3f}{start})" if best_dsc is not None else ""
            kept = f"{self.out} holds the model of epoch {best_epoch}{score}."
            message = {
                "completed": f"Trained {_epochs(self.epoch)}; ",
                "early-stopped": f"Stopped early after epoch {self.epoch}: no better validation "
                                 f"DSC for {_epochs(self.stale)}; ",
                "cancelled": f"Stopped during epoch {self.epoch + 1}; ",
                "out-of-time": f"Stopped at the {self.config.max_minutes or 0:g}-minute limit "
                               f"after epoch {self.epoch}; ",
            }[reason] + kept
        return TrainResult(self.out if saved else None,
                           self.state_file if self.state_file.is_file() else None,
                           self.epoch, best_epoch, best_dsc, list(self.history), reason, message,
                           self.start_val_dsc)

    def release(self) -> None:
        """Drop the model and optimizer (and free cached GPU memory)."""
        self.net = self.model = self.optimizer = None  # type: ignore[assignment]
        if self.stream is not None:
            self.stream.close()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")
