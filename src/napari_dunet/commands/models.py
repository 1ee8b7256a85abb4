"""``dunet models``: the model registry with parameter counts checked against the paper."""

from __future__ import annotations

import argparse
import json

HELP = "List the available models and their parameter counts against the paper's."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def model_table() -> list[dict]:
    from ..models import MODELS, build_model, count_parameters

    rows = []
    for name, spec in MODELS.items():
        params, keras_params = count_parameters(build_model(name))
        rows.append({"name": name, "paper_name": spec.paper_name, "params": params,
                     "keras_params": keras_params, "paper_params": spec.paper_params})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = model_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (f"{'name':<18} {'paper name':<22} {'PyTorch':>12} {'Keras count':>12} {'paper':>12}"
              "  Keras = paper")
    print(header)
    print("-" * len(header))
    for r in rows:
        match = "yes" if r["keras_params"] == r["paper_params"] else "no"
        print(f"{r['name']:<18} {r['paper_name']:<22} {r['params']:>12,} {r['keras_params']:>12,} "
              f"{r['paper_params']:>12,}  {match}")
    print("\nPyTorch: trainable parameters (model.parameters()). Keras count: the same plus the "
          "BatchNorm running\nmeans and variances, which Keras counts as parameters and PyTorch "
          "keeps as buffers; the paper's\nTable 2 counts come from Keras, so that column is the "
          "one compared.")
    return 0
