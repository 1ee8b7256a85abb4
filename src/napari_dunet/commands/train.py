"""``dunet train``: train or fine-tune a model on labelled cases; multi-GPU with ``torchrun``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import add_device_argument, add_dtype_argument, add_output_argument

HELP = "Train or fine-tune a model on T1 images with lesion masks (files or BIDS/ATLAS folders)."

EPILOG = """\
The paper's recipe: --optimizer sgd --lr 1e-4 --batch-size 36 --epochs 150 (augmentation is on
by default). Fine-tuning: --init CHECKPOINT (Adam, lr 1e-4 by default): --val-fraction of the
cases (of each case's slices, with fewer than 4 cases) is held back, the starting weights are
scored on it first, and --output is written only by an epoch that beats them, with their
threshold and seed threshold. Several GPUs or nodes: torchrun --nproc_per_node N -m
napari_dunet.cli train ... (--batch-size is per process).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..options import LOSSES, OPTIMIZERS, TRAIN_LAYERS
    from ..training.config import TrainConfig

    d = TrainConfig()
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", nargs="+", type=Path, metavar="DIR",
                        help="folders of T1 images with lesion masks (ATLAS/BIDS, R1.1 or flat "
                             "layout), or image files with their mask beside them; with --synth "
                             "they are all validation cases")
    parser.add_argument("--synth", nargs="+", metavar="ANATOMY",
                        help="train on cases drawn on the fly from these anatomies' label maps "
                             "('mni' or T1 files) with the --lesions shapes (docs/synthesis.md)")
    parser.add_argument("--lesions", nargs="+", type=Path, metavar="MASK",
                        help="lesion mask files or folders for --synth")
    parser.add_argument("--synth-workers", type=int, default=1, metavar="N",
                        help="processes drawing --synth cases (default 1; on a GPU, about one "
                             "per free CPU core keeps it fed); the draws do not depend on N")
    add_output_argument(parser, required=True, metavar="CHECKPOINT",
                        help="model to write (.safetensors); the resumable state goes beside it "
                             "as NAME.state.safetensors")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of cases held out for validation (default 0.2; 0: none); "
                             "with --init and fewer than 4 cases, of each case's slices")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help=f"stacks per step and process (default {d.batch_size})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                        help="default adam")
    parser.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default 0)")
    parser.add_argument("--loss", choices=LOSSES, default=d.loss, help="default eml")
    parser.add_argument("--model", help="model name from `dunet models` (default: the --init "
                                        "checkpoint's, else dunet)")
    parser.add_argument("--init", type=Path, metavar="CHECKPOINT",
                        help="start from these weights (fine-tuning); 'default': the bundled "
                             "default weights")
    parser.add_argument("--freeze-norm", action="store_true",
                        help="keep the BatchNorm statistics of --init (few-case fine-tuning: a "
                             "few batches of crops would replace them)")
    parser.add_argument("--train-layers", choices=TRAIN_LAYERS, default=d.train_layers,
                        help="all (default), or decoder: only the decoder and output layer learn "
                             "and the encoder stays as --init has it (quick few-case fine-tuning: "
                             "faster steps, less forgetting)")
    parser.add_argument("--rehearsal", type=int, default=0, metavar="K",
                        help="also train on K synthetic cases (label-map draws on the MNI152 "
                             "template with shipped real lesion shapes; needs nilearn) so that a "
                             "few-case fine-tune forgets less of what --init knew (default 0)")
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps, metavar="K",
                        help="raise the learning rate linearly over the first K steps (default 0)")
    parser.add_argument("--max-minutes", type=float, metavar="M",
                        help="stop after M minutes of training: the running epoch ends at the "
                             "step that reaches the limit and is validated and saved")
    parser.add_argument("--resume", action="store_true",
                        help="continue the training saved beside --output")
    parser.add_argument("--patience", type=int, default=d.patience,
                        help=f"early stopping: epochs without a better validation DSC "
                             f"(default {d.patience}; 0: off)")
    parser.add_argument("--lesion-fraction", type=float, default=d.lesion_fraction,
                        help=f"share of each batch from slices with lesion (default {d.lesion_fraction})")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="no shift/zoom/rotation/flip augmentation")
    parser.add_argument("--steps-per-epoch", type=int,
                        help="default: head slices / (batch size x processes)")
    parser.add_argument("--input-size", type=int, default=d.input_size,
                        help=f"network input size (default {d.input_size}, the shipped models')")
    parser.add_argument("--crop-size", type=int, metavar="N",
                        help="train on random N x N windows of the slices, centred on lesion for "
                             "lesion slices (faster steps; default: whole slices)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    add_device_argument(parser)
    add_dtype_argument(parser, help="compute dtype; auto (default): mixed precision on GPUs, "
                       "on CPUs mixed where bf16 steps measured faster, else float32; bf16: "
                       "bfloat16 autocast, also on CPUs (fast where they "
                       "have bf16 instructions); mixed: bf16 steps, validation masks as "
                       "inference's mixed makes them; fp32: float32 everywhere")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..inference import resolve_device
    from ..training.config import TrainConfig
    from ..training.distributed import Distributed
    from ..training.engine import EpochMetrics, StartScore, drive, training_events
    from ..training.state import state_path

    out = args.output
    if args.init is not None and str(args.init) == "default":
        from .. import weights

        args.init = weights.default_checkpoint()
        if args.init is None:
            raise InputError("--init default: no default weights are bundled with this version.")
    if out.exists() and not (args.overwrite or args.resume):
        raise InputError(f"{out} exists; pass --overwrite to replace it or --resume to "
                         f"continue its training.")
    if args.rehearsal < 0:
        raise InputError(f"--rehearsal takes a number of cases (0 or more), got {args.rehearsal}.")
    if args.rehearsal and args.synth:
        raise InputError("--rehearsal mixes synthetic cases into training on --data; with "
                         "--synth every case is synthetic already.")
    if args.synth_workers < 1:
        raise InputError(f"--synth-workers takes a number of processes (1 or more), got "
                         f"{args.synth_workers}.")
    if args.resume and not state_path(out).is_file():
        raise InputError(f"nothing to resume: {state_path(out)} does not exist.")
    config = TrainConfig(
        model=args.model or _init_model(args.init), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
        loss=args.loss, augment=args.augment, lesion_fraction=args.lesion_fraction,
        patience=args.patience, seed=args.seed, input_size=args.input_size, crop_size=args.crop_size,
        steps_per_epoch=args.steps_per_epoch, device=args.device,
        precision=args.precision, max_minutes=args.max_minutes, freeze_norm=args.freeze_norm,
        train_layers=args.train_layers, warmup_steps=args.warmup_steps,
        preprocessing=_init_preprocessing(args.init))
    config.check()
    if not args.data and not args.synth:
        raise InputError("give training cases with --data, or anatomies to draw from with --synth.")
    device = resolve_device(args.device)
    dist = Distributed.from_env(device.type)
    try:
        log = print if dist.is_main else (lambda *a, **k: None)
        where = f"{dist.world_size} process(es) on {device.type}"
        def on_event(event: object) -> None:
            if isinstance(event, StartScore):
                log(f"{'start':>5} {'-':>9} {_fmt(event.val_dsc):>8} "
                    f"{_fmt(event.val_global_dsc):>8} {event.seconds:>7.1f}")
            elif isinstance(event, EpochMetrics):
                log(f"{event.epoch:>5} {event.train_loss:>9.4f} {_fmt(event.val_dsc):>8} "
                    f"{_fmt(event.val_global_dsc):>8} {event.seconds:>7.1f}  "
                    f"{'yes' if event.saved else ''}")
            sys.stdout.flush()

        header = f"{'epoch':>5} {'loss':>9} {'val DSC':>8} {'global':>8} {'s':>7}  saved"
        if args.init is not None and args.data and not args.synth and not dist.enabled:
            events = _fine_tune(args, config, log, where)
        else:
            if args.synth:
                train_cases, val_cases = _synthetic_cases(args, config, dist, log, where)
            else:
                train_cases, val_cases = _cases_from_disk(args, config, dist, log, where)
            events = training_events(train_cases, val_cases, config, out, init=args.init,
                                     resume=args.resume, dist=dist)
        log(header)
        result = drive(events, on_event)
        log(result.message)
    finally:
        dist.close()
    return 0


def _fine_tune(args: argparse.Namespace, config, log, where: str):
    """The checked fine-tune of ``training.finetune`` on the --data cases (one process)."""
    from ..training.data import MIN_CASES_TO_HOLD_BACK, find_training_cases
    from ..training.finetune import fine_tune_events

    cases = find_training_cases(args.data)
    if not args.val_fraction:
        log("--val-fraction 0: nothing is held back, so the fine-tuned model is saved without "
            "a check against the starting weights")
    else:
        held = ("of the cases" if len(cases) >= MIN_CASES_TO_HOLD_BACK
                else "of each case's slices")
        log(f"{len(cases)} case(s), {args.val_fraction:g} {held} held back to check the "
            f"starting and the fine-tuned weights on; {where}")
    return fine_tune_events(cases, config, args.output, args.init, hold_back=args.val_fraction,
                            rehearsal=args.rehearsal)


def _cases_from_disk(args: argparse.Namespace, config, dist, log, where: str) -> tuple[list, list]:
    from ..errors import InputError
    from ..training.data import find_training_cases, load_cases, split_cases

    train_files, val_files = split_cases(find_training_cases(args.data), args.val_fraction,
                                         args.seed)
    if len(train_files) < dist.world_size:
        raise InputError(f"{len(train_files)} training case(s) for {dist.world_size} "
                         f"processes; every process needs at least one.")
    log(f"{len(train_files)} training and {len(val_files)} validation cases; {where}")
    started = time.perf_counter()
    train_cases = load_cases(dist.shard(train_files), config.input_size,
                             scheme=config.preprocessing)
    val_cases = load_cases(dist.shard(val_files), config.input_size, scheme=config.preprocessing)
    if args.rehearsal:
        from ..training.synthetic import rehearsal_cases

        train_cases += dist.shard(rehearsal_cases(args.rehearsal, args.seed, config.input_size,
                                                  config.preprocessing))
    log(f"prepared in {time.perf_counter() - started:.0f} s")
    return train_cases, val_cases


def _synthetic_cases(args: argparse.Namespace, config, dist, log, where: str) -> tuple[object, list]:
    """A synthesis stream to train on; validation: the --data cases, else fixed draws."""
    from ..errors import InputError
    from ..synth import lesion_files
    from ..training.data import find_training_cases, load_cases
    from ..training.synthetic import SynthSource, SynthStream, validation_cases

    if not args.lesions:
        raise InputError("--synth needs lesion shapes: --lesions MASK [MASK ...].")
    if config.steps_per_epoch is None:
        raise InputError("--synth needs --steps-per-epoch (the cases never run out).")
    source = SynthSource(tuple(args.synth), tuple(lesion_files(args.lesions)),
                         input_size=config.input_size, scheme=config.preprocessing).check()
    if args.data:
        val_cases = load_cases(dist.shard(find_training_cases(args.data)), config.input_size,
                               scheme=config.preprocessing)
    else:
        val_cases = dist.shard(validation_cases(source, 4)) if args.val_fraction > 0 else []
    log(f"drawing from {len(source.anatomies)} anatomies and {len(source.lesions)} lesion shapes; "
        f"{len(val_cases)} validation cases; {where}")
    return SynthStream(source, seed=config.seed, rank=dist.rank,
                       workers=args.synth_workers), val_cases


def _init_model(init: Path | None) -> str:
    from ..checkpoint import read_metadata
    from ..options import DEFAULT_MODEL

    return read_metadata(init)["model"] if init is not None else DEFAULT_MODEL


def _init_preprocessing(init: Path | None) -> str:
    """The preprocessing a fine-tune keeps: its starting checkpoint's (else the default)."""
    from ..checkpoint import read_metadata
    from ..options import DEFAULT_PREPROCESSING

    if init is None:
        return DEFAULT_PREPROCESSING
    from ..segmentation import checkpoint_preprocessing

    return checkpoint_preprocessing(read_metadata(init))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
