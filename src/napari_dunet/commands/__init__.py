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


def require_qt() -> None:
    """Raise ``DunetError`` with the install command when napari has no Qt binding to open a
    window with (``pip install napari`` alone brings none)."""
    from ..errors import DunetError

    try:
        import qtpy  # noqa: F401 - raises when no binding (PyQt5/6, PySide2/6) is installed
    except ImportError as exc:
        raise DunetError("napari needs a Qt binding to open a window and none is installed: "
                         "pip install \"napari-dunet[viewer]\" (PyQt6), or pip install "
                         "\"napari[pyside6]\" for PySide6.") from exc
