"""The ``dunet`` command. Each subcommand lives in ``napari_dunet.commands.<name>`` and has
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; heavy imports happen in ``run``.

Errors a user can fix (``DunetError``) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import DunetError

SUBCOMMANDS = ("models", "segment", "evaluate", "report", "synth", "demo", "train", "view")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dunet", description="D-UNet chronic stroke lesion segmentation of T1-weighted MRI.")
    parser.add_argument("--version", action="version", version=f"napari-dunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DunetError as exc:
        print(f"dunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
