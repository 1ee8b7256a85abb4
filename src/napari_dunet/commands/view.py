"""``dunet view``: napari with a scan (or the bundled sample) and the Segment lesion widget."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import require_qt

HELP = "Open napari with T1 scans or masks (default: the bundled sample) and Segment lesion."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE",
                        help="NIfTI files to open (a scan, and masks on its grid); "
                             "default: the bundled sample T1 with a stroke lesion")
    parser.add_argument("--weights", type=Path,
                        help="checkpoint (.safetensors) for Segment lesion (default: bundled)")


def open_viewer(files: list[Path], weights: Path | None = None, show: bool = True):
    """A napari viewer with ``files`` (read first, so a bad file fails before any window opens)
    and the Segment lesion widget docked; returns the viewer."""
    from .._reader import read_nifti
    from .._sample_data import t1_with_lesion
    from ..errors import CheckpointError

    if weights is not None and not weights.is_file():
        raise CheckpointError(f"{weights}: no such checkpoint file.")
    layers = read_nifti(files) if files else t1_with_lesion()

    import napari
    from napari.layers import Layer

    from .. import model_store

    if weights is not None:
        model_store.set_checkpoint(weights)
    viewer = napari.Viewer(title="napari-dunet", show=show)
    for data, kwargs, kind in layers:
        viewer.add_layer(Layer.create(data, kwargs, kind))
    viewer.window.add_plugin_dock_widget("napari-dunet", "Segment lesion")
    return viewer


def run(args: argparse.Namespace) -> int:
    require_qt()
    import napari

    open_viewer(args.files, args.weights)
    print("dunet view: napari is open; close its window to quit.", flush=True)
    napari.run()
    return 0
