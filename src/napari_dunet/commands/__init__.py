"""Subcommands of the ``dunet`` command line (see ``napari_dunet.cli``), and the options they
spell the same way."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_output_argument(parser: argparse.ArgumentParser, *, required: bool = False,
                        **kwargs) -> None:
    """``-o/--output PATH``; ``--out`` is accepted too (hidden, the older spelling)."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("-o", "--output", type=Path, **kwargs)
    group.add_argument("--out", dest="output", type=Path, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (``auto`` or a torch device such as ``cuda:1``)."""
    from ..options import DEVICES

    parser.add_argument("--device", default="auto",
                        help=f"{', '.join(DEVICES)} or e.g. cuda:1 (default auto)")


def add_dtype_argument(parser: argparse.ArgumentParser, **kwargs) -> None:
    """``--dtype`` (one of ``options.PRECISIONS``, stored as ``precision``); ``--precision`` is
    accepted too (hidden, the older spelling, easily confused with the metric)."""
    from ..options import PRECISIONS

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--dtype", dest="precision", choices=PRECISIONS, default="auto", **kwargs)
    group.add_argument("--precision", dest="precision", choices=PRECISIONS,
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)
