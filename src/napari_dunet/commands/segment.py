"""``dunet segment``: lesion masks for NIfTI files and BIDS folders."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import add_device_argument, add_dtype_argument, add_output_argument

if TYPE_CHECKING:  # annotations only
    from torch import nn

    from ..io import Case
    from ..options import SegmentOptions
    from ..segmentation import SegmentationResult

HELP = "Segment stroke lesions in T1 volumes (files or BIDS/ATLAS folders)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI files or folders")
    add_output_argument(parser, required=True, help="output folder")
    parser.add_argument("--weights", type=Path, help="checkpoint (.safetensors)")
    add_device_argument(parser)
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability threshold (default: the checkpoint's, 0.5)")
    parser.add_argument("--seed-threshold", type=float, default=None, metavar="P",
                        help="keep only lesions with a voxel of probability >= P (hysteresis: "
                             "a confident lesion keeps its less certain rim, regions with no "
                             "confident voxel go; default: the checkpoint's; at or below "
                             "--threshold, 0 too: every voxel >= --threshold)")
    parser.add_argument("--batch-size", type=int, default=16, help="stacks per forward pass")
    add_dtype_argument(parser, help="compute dtype; auto (default): bf16 autocast on GPUs; on "
                       "CPUs mixed or fp32, whichever was measured faster on this machine (-v "
                       "says which); mixed: bf16, with the slices near the threshold run again "
                       "in fp32 (the fp32 mask); bf16: bf16 only")
    parser.add_argument("--runtime", choices=("auto", "torch", "openvino"), default="auto",
                        help="what runs the network: auto (default): OpenVINO on a CPU where it "
                             "is installed (the openvino extra), else PyTorch")
    parser.add_argument("--no-mirror", dest="mirror", action="store_false",
                        help="skip the left-right mirrored pass that each slice's map is "
                             "averaged with (half the network's work, a less steady map)")
    parser.add_argument("--save-prob", action="store_true", help="also write <name>_prob.nii.gz")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="say which runtime and dtype run on this machine and why")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress on stderr (a bar on a terminal, else a line per case)")
    parser.add_argument("--shard", metavar="K/N", type=parse_shard,
                        help="segment only the K-th of N shares of the cases (1-based; cases "
                             "K, K+N, ... in name order), to spread a cohort over processes or "
                             "machines; under torchrun each process takes its rank's share")
    outputs = parser.add_mutually_exclusive_group()
    outputs.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    outputs.add_argument("--skip-existing", action="store_true",
                         help="leave cases whose outputs exist as they are (to finish a cohort "
                              "run that was interrupted)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..errors import DunetError, InputError
    from ..io import find_cases
    from ..options import SegmentOptions
    from ..segmentation import output_paths

    from .. import weights as bundled

    weights = args.weights or bundled.default_checkpoint()
    if weights is None:
        raise DunetError("no weights given and no default weights are bundled; pass --weights FILE.")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1, got {args.threshold}.")
    if args.seed_threshold is not None and not 0.0 <= args.seed_threshold < 1.0:
        raise InputError("--seed-threshold must be at least 0 and below 1, got "
                         f"{args.seed_threshold}.")
    shard, shards = args.shard or torchrun_shard()
    device = args.device
    if device == "auto" and shards > 1 and "LOCAL_RANK" in os.environ:
        device = local_gpu(int(os.environ["LOCAL_RANK"]))
    options = SegmentOptions(device=device, batch_size=args.batch_size,
                             precision=args.precision, threshold=args.threshold,
                             seed_threshold=args.seed_threshold,
                             runtime=args.runtime, mirror=args.mirror)
    options.check()
    check_output_folder(args.output)
    cases = [case for item in args.inputs for case in find_cases(item)]
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise InputError(f"several inputs would write the same output name: {', '.join(sorted(dupes))}.")
    cases = cases[shard - 1::shards]
    todo, skipped = [], []
    for case in cases:
        existing = [p for p in output_paths(args.output, case.name, args.save_prob)
                    if p is not None and p.exists()]
        if existing and args.skip_existing:
            skipped.append(case.name)
        elif existing and not args.overwrite:
            raise InputError(f"{existing[0]} exists; pass --overwrite to replace it or "
                             f"--skip-existing to leave it.")
        else:
            todo.append(case)
    model, meta = load_checkpoint(weights, device="cpu")
    if args.verbose:
        print(f"dunet segment: {dtype_choice(model, options)}", file=sys.stderr)
    done, failed = segment_cases(todo, model, meta, options, args)
    unrun = len(todo) - len(done) - len(failed)  # left when interrupted
    summary = f"{len(done)} done, {len(failed)} failed, {len(skipped) + unrun} skipped"
    if skipped:
        summary += f" ({len(skipped)} with existing outputs)"
    who = f"dunet segment [shard {shard}/{shards}]" if shards > 1 else "dunet segment"
    if len(cases) > 1 or shards > 1:
        print(f"{who}: {summary}" + (f"; failed: {', '.join(failed)}" if failed else "") + ".",
              file=sys.stderr)
    if unrun:
        return 130
    return 2 if failed else 0


def dtype_choice(model: nn.Module, options: SegmentOptions) -> str:
    """One line: the runtime and dtype a whole volume runs in on this device, and why."""
    from ..cpu_dtype import cache_file, measured_dtype
    from ..inference import prepare_network, resolve_device

    device = resolve_device(options.device)
    network = prepare_network(model, device, options.runtime)
    runtime = getattr(network, "runtime", "pytorch")
    if options.precision != "auto":
        return f"{runtime}, dtype {options.precision} (--dtype) on {device}"
    if device.type != "cpu":
        return f"{runtime}, dtype auto on {device}: bf16/fp16 autocast"
    choice = measured_dtype(network)
    if not choice["measured"]:
        return f"{runtime}, dtype auto on this CPU: {choice['dtype']} ({choice['reason']})"
    return (f"{runtime}, dtype auto on this CPU ({choice['key']}): {choice['dtype']}; one pass "
            f"over 4 stacks took {choice['fp32_seconds']:.3f} s in fp32 and "
            f"{choice['bf16_seconds']:.3f} s in bf16 (measured once, kept in {cache_file()})")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 1/4, got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"K must be between 1 and N, got {text!r}")
    return k, n


def torchrun_shard() -> tuple[int, int]:
    """This process's share under torchrun (``RANK``, ``WORLD_SIZE``), else the whole cohort."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")) + 1, world) if world > 1 else (1, 1)


def local_gpu(local_rank: int) -> str:
    """``cuda:<local rank>`` where this machine has GPUs (each process its own), else auto."""
    import torch

    return f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "auto"


def check_output_folder(folder: Path) -> None:
    """Refuse, before any work, an output that is a file or a folder this user cannot write."""
    from ..errors import InputError

    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not a folder; give a folder for the output.")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {existing}: permission denied; choose another "
                         f"output folder.")


def segment_cases(cases: list[Case], model: nn.Module, meta: dict, options: SegmentOptions,
                  args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Segment every case, printing one row per case and one error line per failed case; a
    failed case does not stop the others. Returns the names done and failed (on Ctrl-C, the
    cases so far)."""
    from ..errors import DunetError
    from ..inference import prefetch
    from ..io import load_volume
    from ..segmentation import out_of_memory, segment, write_outputs

    scored = any(case.masks for case in cases)  # reference masks beside the inputs: score them
    score_titles = f" {'DSC':>6} {'prec.':>6} {'recall':>6} {'true mL':>8}" if scored else ""
    print(f"{'case':<32} {'lesion mL':>10}{score_titles}  mask")
    done, failed = [], []
    try:
        # the next scans are read and decompressed while the network runs on this one
        for number, (case, volume) in enumerate(prefetch(cases, lambda c: load_volume(c.image)), 1):
            progress = None if args.quiet else Progress(f"[{number}/{len(cases)}] {case.name}")
            try:
                if isinstance(volume, MemoryError):
                    raise out_of_memory(case.image, options.batch_size, _shape(case.image))
                if isinstance(volume, Exception):
                    raise volume
                segmented = segment(volume, model, meta, options, progress=progress)
                result = write_outputs(segmented, args.output, case.name,
                                       save_prob=args.save_prob, overwrite=args.overwrite)
            except Exception as exc:  # noqa: BLE001 - one case's failure must not end a cohort
                if progress is not None:  # the bar leaves the line before the error
                    progress.clear()
                failed.append(case.name)
                problem = (str(exc) if isinstance(exc, DunetError) else
                           f"{case.image}: unexpected {type(exc).__name__} ({exc}); please report it")
                print(f"dunet segment: error: {problem}", file=sys.stderr)
                continue
            if progress is not None:
                progress.clear()
            done.append(case.name)
            for note in result.notes:
                print(f"dunet segment: warning: {case.name}: {note}", file=sys.stderr)
            scores = score_case(case, result) if scored else ""
            print(f"{case.name:<32} {result.lesion_ml:>10.2f}{scores}  {result.mask_path}")
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("dunet segment: interrupted", file=sys.stderr)
    return done, failed


class Progress:
    """Progress of one case on stderr: a bar redrawn in place on a terminal; elsewhere (a log
    file, a pipe) one line when the network starts on the case."""

    WIDTH = 24

    def __init__(self, title: str) -> None:
        self.title = title
        self.terminal = sys.stderr.isatty()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if self.terminal:
            filled = self.WIDTH * done // max(total, 1)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            sys.stderr.write(f"\r{self.title} |{bar}| {done}/{total} slices")
            sys.stderr.flush()
        elif not self.shown:
            print(f"dunet segment: {self.title}: segmenting {total} slices", file=sys.stderr,
                  flush=True)
        self.shown = True

    def clear(self) -> None:
        """Take the bar off the terminal line (before the case's row or error is printed)."""
        if self.terminal and self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _shape(path: Path) -> tuple[int, ...] | None:
    import nibabel as nib

    try:
        return tuple(nib.load(str(path)).shape)
    except Exception:  # the shape only makes the message more useful
        return None


def score_case(case: Case, result: SegmentationResult) -> str:
    """DSC, precision, recall and reference volume of a new mask against the case's own masks
    (blank columns when it has none or they cannot be used; the reason goes to stderr)."""
    from ..errors import DunetError
    from ..evaluation import evaluate_against_files

    blank = f" {'':>6} {'':>6} {'':>6} {'':>8}"
    if not case.masks:
        return blank
    try:
        scored = evaluate_against_files(result.mask, result.volume.affine, case.masks,
                                        name=case.name, pred_label="the new mask")
    except DunetError as exc:
        print(f"dunet segment: warning: not scored: {exc}", file=sys.stderr)
        return blank
    for note in scored.notes:
        print(f"dunet segment: warning: {case.name}: {note}", file=sys.stderr)
    m = scored.metrics
    return f" {m.dsc:>6.3f} {m.precision:>6.3f} {m.recall:>6.3f} {m.truth_ml:>8.2f}"
