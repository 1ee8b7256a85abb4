"""Does fine-tuning on a few corrected cases pay off? Fine-tune on N cases of a target domain
within a time budget, then score the domain's other cases and the source cases: the
correction-efficiency curve.

    python benchmarks/adaptation.py [--weights FILE] [--domain DIR | --contrast t2]
        [--shots 1 3 5 10] [--minutes 2 5] [--eval 6] [--source DIR --source-limit 4]
        [--json PATH] [--plot PNG]

The target domain is by default the thick-slice clinical domain of ``real_checks.py`` (MS
patient 26's T1 anatomy, which no default weights were trained on, held-out LESYMAP lesions
81-100, 4-6 mm slices); anyone can rebuild it from ``../shared/data``. ``--contrast t2``
reverses its tissue order as in a T2 scan (lesions bright). ``--domain DIR`` takes any folder
of cases with lesion masks instead (as ``dunet segment`` finds them, in name order), e.g. the
real MS T1 scans of ``../shared/data/real/ms_t1``. For each N in ``--shots`` and each budget in
``--minutes`` the model starts from ``--weights`` and is fine-tuned on the domain's first N
cases through the Fine-tune panel's path (``training.finetune.fine_tune_events`` in its quick
mode, ``training.config.QUICK``: the decoder only, epochs of 40 steps of 8 whole slices,
Adam 1e-4, normalisation statistics kept, no synthetic rehearsal cases, ``HOLD_BACK`` of the
corrected data held back to check on, the dtype measured fastest; options change each). The
run keeps its starting weights unless an epoch beat them on the held-back data by more than
``TrainConfig.min_gain``; the weights it ends with are scored on the ``--eval`` cases after
the largest N (never trained on) and, with ``--source``, on cases of the domain the starting
weights were trained on (forgetting). Prints a table, writes JSON and a curve of DSC against N. Not a test: nothing asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_checks import DATA, Segmenter, clinical_cases  # noqa: E402

from napari_dunet import metrics  # noqa: E402
from napari_dunet.checkpoint import read_metadata  # noqa: E402
from napari_dunet.cpu_dtype import cpu_name  # noqa: E402
from napari_dunet.io import find_cases, load_volume  # noqa: E402
from napari_dunet.options import TRAIN_LAYERS  # noqa: E402
from napari_dunet.training.config import (  # noqa: E402
    HOLD_BACK, MAX_REHEARSAL, QUICK, QUICK_REHEARSAL_PER_CASE, TrainConfig, rehearsal_count)
from napari_dunet.weights import default_checkpoint  # noqa: E402


def mean_dsc(weights: Path, cases: list[tuple], device: str) -> tuple[float, list[float]]:
    """Mean DSC (and the per-case values) of ``weights`` on ``(name, image, mask)`` cases."""
    segment = Segmenter(weights, device)
    values = [metrics.dice(metrics.confusion(segment(image)[0], mask.data))
              for _, image, mask in cases]
    return float(np.mean(values)), values


def fine_tune(weights: Path, cases: list[tuple], minutes: float, out: Path, device: str,
              rehearsal: int = 0, **options) -> dict:
    """Fine-tune ``weights`` on ``cases`` for ``minutes`` as the panel does (``options``: more
    ``TrainConfig`` fields); what the run reports, and the weights it ends with."""
    from napari_dunet.inference import resolve_device
    from napari_dunet.training.config import TrainConfig
    from napari_dunet.training.engine import StepProgress, drive
    from napari_dunet.training.finetune import CorrectedCase, fine_tune_events

    dtype = "fp32"
    if resolve_device(device).type == "cpu":
        from napari_dunet.cpu_dtype import measured_dtype
        from napari_dunet.fast import prepare_model
        from napari_dunet.models import build_model

        model = build_model(read_metadata(weights)["model"])
        dtype = "bf16" if measured_dtype(prepare_model(model, resolve_device(device)))["dtype"] \
            == "mixed" else "fp32"
    config = TrainConfig(**{**QUICK, "patience": 0, "max_minutes": minutes, "device": device,
                            "precision": dtype, **options})
    pairs = [CorrectedCase(name, image, mask.data) for name, image, mask in cases]
    steps = []
    started = time.perf_counter()
    result = drive(fine_tune_events(pairs, config, out, weights, hold_back=HOLD_BACK,
                                    rehearsal=rehearsal),
                   lambda e: steps.append(1) if isinstance(e, StepProgress) else None)
    return {"epochs": result.epochs_completed, "rehearsal_cases": rehearsal,
            "steps": len(steps), "dtype": dtype, "stop": result.stop_reason,
            "held_back_start": result.start_val_dsc,
            "held_back_tuned": max((m.val_dsc for m in result.history if m.val_dsc is not None),
                                   default=None),
            "kept_start": not result.improved,
            "weights": str(result.checkpoint or weights),
            "seconds": round(time.perf_counter() - started, 1)}


def dsc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def target_domain(folder: Path | None, n: int, seed: int, data: Path = DATA,
                  contrast: str = "t1") -> list[tuple]:
    """The first ``n`` ``(name, image, mask)`` cases of ``folder``, or of the clinical domain
    in ``contrast``. Cases of a folder are named by their path below it (``patient19/T1w``)."""
    if folder is None:
        return [(name, image, mask) for name, image, mask, _, _ in
                clinical_cases(data, min(n, 20), seed, None, contrast)]
    cases = []
    for case in sorted((c for c in find_cases(folder) if c.masks), key=lambda c: str(c.image))[:n]:
        volume = load_volume(case.image)
        name = str(case.image.relative_to(folder)).removesuffix(".gz").removesuffix(".nii")
        cases.append((name, volume, case.load_mask(volume)))
    return cases


def plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    before = results["before"]
    ax.axhline(before["target_dsc"], color="tab:blue", linestyle="--", label="target, before")
    if before.get("source_dsc") is not None:
        ax.axhline(before["source_dsc"], color="tab:gray", linestyle="--", label="source, before")
    for minutes, style in zip(results["minutes"], ("o-", "s-", "^-", "v-")):
        runs = [r for r in results["runs"] if r["minutes"] == minutes]
        shots = [r["shots"] for r in runs]
        ax.plot(shots, [r["target_dsc"] for r in runs], style, color="tab:blue",
                label=f"target, {minutes:g} min")
        if before.get("source_dsc") is not None:
            ax.plot(shots, [r["source_dsc"] for r in runs], style, color="tab:gray",
                    label=f"source, {minutes:g} min")
    ax.set_xlabel("corrected cases fine-tuned on")
    ax.set_ylabel("mean DSC")
    ax.set_ylim(0, 1)
    ax.set_xticks(sorted({r["shots"] for r in results["runs"]}))
    ax.set_title(f"{results['domain']}, {results['cpu']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=default_checkpoint(), metavar="FILE")
    parser.add_argument("--domain", type=Path, metavar="DIR",
                        help="a folder of target-domain cases with masks (default: the "
                             "thick-slice clinical domain, built from --data)")
    parser.add_argument("--contrast", choices=("t1", "t2"), default="t1",
                        help="the clinical domain's contrast: t1 (as real_checks.py builds it) or "
                             "t2 (its tissue order reversed, real_checks.t2_like; default t1)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 3, 5, 10], metavar="N")
    parser.add_argument("--minutes", type=float, nargs="+", default=[QUICK["max_minutes"], 5.0],
                        metavar="M", help=f"fine-tuning budgets per run (default "
                                          f"{QUICK['max_minutes']:g} 5)")
    parser.add_argument("--eval", type=int, default=6, metavar="K",
                        help="target-domain cases scored (after the largest N; default 6)")
    parser.add_argument("--source", type=Path, metavar="DIR",
                        help="cases of the source domain, for forgetting (a BIDS folder)")
    parser.add_argument("--source-limit", type=int, default=4, metavar="K")
    parser.add_argument("--mix-source", type=int, default=0, metavar="M",
                        help="also fine-tune on M source cases (the ones after the scored "
                             "ones), against forgetting (default 0)")
    parser.add_argument("--rehearsal-per-case", type=int, default=QUICK_REHEARSAL_PER_CASE,
                        metavar="K", help="also fine-tune on K synthetic rehearsal cases "
                        f"(label-map draws with real lesion shapes) per corrected case "
                        f"({MAX_REHEARSAL} at most; dunet train --rehearsal), against forgetting "
                        f"(default {QUICK_REHEARSAL_PER_CASE})")
    parser.add_argument("--data", type=Path, default=DATA, metavar="DIR")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--update-norm", dest="freeze_norm", action="store_false",
                        help="let the BatchNorm statistics learn (default: kept as --weights has them)")
    parser.add_argument("--train-layers", choices=TRAIN_LAYERS, default=QUICK["train_layers"],
                        help=f"default {QUICK['train_layers']}")
    parser.add_argument("--lr", type=float, default=QUICK["lr"],
                        help=f"learning rate (default {QUICK['lr']:g})")
    parser.add_argument("--batch-size", type=int, default=QUICK["batch_size"], metavar="B",
                        help=f"whole slices per step (default {QUICK['batch_size']})")
    fraction = QUICK.get("lesion_fraction", TrainConfig.lesion_fraction)
    parser.add_argument("--lesion-fraction", type=float, default=fraction, metavar="F",
                        help=f"share of each batch from slices with lesion (default {fraction:g})")
    parser.add_argument("--warmup-steps", type=int, default=0, metavar="K",
                        help="linear learning-rate warm-up (default 0)")
    parser.add_argument("--seed", type=int, default=1, help="the domain's seed (default 1)")
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--plot", type=Path, metavar="PNG")
    args = parser.parse_args(argv)
    domain = target_domain(args.domain, max(args.shots) + args.eval, args.seed, args.data,
                           args.contrast)
    if len(domain) < max(args.shots) + args.eval:
        parser.error(f"the target domain has {len(domain)} cases: largest N + --eval must be at "
                     "most that")
    train_pool, held_out = domain[:max(args.shots)], domain[max(args.shots):]
    source, mixed = [], []
    if args.source is not None:
        found = find_cases(args.source)
        for case in found[:args.source_limit + args.mix_source]:
            volume = load_volume(case.image)
            source.append((case.name, volume, case.load_mask(volume)))
        source, mixed = source[:args.source_limit], source[args.source_limit:]
    if len(mixed) < args.mix_source:
        parser.error(f"--mix-source {args.mix_source}: only {len(mixed)} source cases left after "
                     f"the {args.source_limit} scored ones")

    def scores(weights: Path) -> dict:
        target, per_case = mean_dsc(weights, held_out, args.device)
        return {"target_dsc": target, "target_per_case": per_case,
                "source_dsc": mean_dsc(weights, source, args.device)[0] if source else None}

    results = {"weights": str(args.weights),
               "domain": str(args.domain) if args.domain else f"clinical-{args.contrast}",
               "cpu": cpu_name(), "minutes": args.minutes, "hold_back": HOLD_BACK,
               "options": {k: getattr(args, k) for k in
                           ("freeze_norm", "train_layers", "lr", "batch_size", "warmup_steps",
                            "lesion_fraction", "rehearsal_per_case")},
               "mixed_source_cases": [name for name, _, _ in mixed],
               "eval_cases": [name for name, _, _ in held_out],
               "source_cases": [name for name, _, _ in source],
               "before": scores(args.weights), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            for n in args.shots:
                out = Path(tmp) / f"tuned_{n}_{minutes:g}.safetensors"
                run = fine_tune(args.weights, train_pool[:n] + mixed, minutes, out, args.device,
                                rehearsal=rehearsal_count(n, args.rehearsal_per_case),
                                freeze_norm=args.freeze_norm, train_layers=args.train_layers,
                                lr=args.lr, batch_size=args.batch_size,
                                warmup_steps=args.warmup_steps,
                                lesion_fraction=args.lesion_fraction)
                same = run["kept_start"]  # the starting weights: their scores are known
                results["runs"].append({"shots": n, "minutes": minutes, **run,
                                        **(results["before"] if same else
                                           scores(Path(run["weights"])))})
                print(f"N={n}, {minutes:g} min: {run['steps']} steps in {run['seconds']:.0f} s, "
                      f"held-back {dsc(run['held_back_start'])}, tuned "
                      f"{dsc(run['held_back_tuned'])}"
                      f"{' (start kept)' if same else ''}, target DSC "
                      f"{results['runs'][-1]['target_dsc']:.3f}", file=sys.stderr, flush=True)

    b = results["before"]
    print(f"fine-tuning {args.weights.name} on {results['domain']}; CPU {results['cpu']}")
    print(f"{'N':>3} {'min':>4} {'steps':>5} {'held back':>15} {'kept':>5} {'target DSC':>11} "
          f"{'change':>7} {'source DSC':>11} {'change':>7}")
    src = (lambda v: f"{v:>11.3f}") if source else (lambda v: f"{'-':>11}")
    print(f"{0:>3} {'-':>4} {'-':>5} {'-':>15} {'-':>5} {b['target_dsc']:>11.3f} {'':>7} "
          f"{src(b['source_dsc'])} {'':>7}")
    for r in results["runs"]:
        d_src = f"{r['source_dsc'] - b['source_dsc']:>+7.3f}" if source else f"{'-':>7}"
        held = f"{dsc(r['held_back_start'])} -> {dsc(r['held_back_tuned'])}"
        print(f"{r['shots']:>3} {r['minutes']:>4g} {r['steps']:>5} {held:>15} "
              f"{'start' if r['kept_start'] else 'new':>5} {r['target_dsc']:>11.3f} "
              f"{r['target_dsc'] - b['target_dsc']:>+7.3f} {src(r['source_dsc'])} {d_src}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
