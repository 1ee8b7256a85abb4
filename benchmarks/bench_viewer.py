"""What a user waits for in the viewer: the real Segment lesion panel in a real napari window.

    xvfb-run -a python benchmarks/bench_viewer.py [--json] [--image scan.nii.gz] [--weights FILE]

Opens the scan (default: the bundled sample) as ``dunet view`` does and clicks the panel's
button the way a user does, timing from the click until the lesion layer shows the result:

* ``current_slice_click_seconds``: "current slice", second click (the model is loaded by then;
  the first click, which also loads the model, is ``current_slice_first_click_seconds``);
* ``whole_volume_click_seconds``: "whole volume", click to layer;
* ``cli_seconds``: ``dunet segment`` on the same scan in this process (read, segment, write),
  the command line's figure for the same work.

Needs a display (Xvfb is fine). Prints a table, or one JSON object with ``--json``; the CPU's
name goes with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path


def click_and_wait(widget, app, timeout: float = 900.0) -> float:
    """Seconds from a click of Segment lesion until the run's result is in the viewer."""
    before = widget._last
    start = time.perf_counter()
    widget._run.native.click()
    while widget._runner.worker is not None or widget._last is before:
        app.processEvents()
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the segmentation did not finish")
        time.sleep(0.002)
    app.processEvents()  # the layer update is drawn
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="NIfTI scan (default: the bundled sample)")
    parser.add_argument("--weights", type=Path, help="checkpoint (default: the bundled weights)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    from qtpy.QtWidgets import QApplication

    from napari_dunet._sample_data import SAMPLE_IMAGE
    from napari_dunet._widgets.segment import CURRENT_SLICE, WHOLE, SegmentWidget
    from napari_dunet.cli import main as dunet
    from napari_dunet.commands.view import open_viewer
    from napari_dunet.cpu_dtype import cpu_name

    image = args.image or SAMPLE_IMAGE
    viewer = open_viewer([image], args.weights)
    app = QApplication.instance()
    [widget] = [w for w in viewer.window.dock_widgets.values() if isinstance(w, SegmentWidget)]
    widget._device.value = "cpu"
    layer = widget._image.value
    middle = [s // 2 for s in layer.data.shape]
    viewer.dims.set_point(range(3), layer.data_to_world(middle))
    app.processEvents()

    widget._scope.value = CURRENT_SLICE
    first = click_and_wait(widget, app)
    second = click_and_wait(widget, app)
    widget._scope.value = WHOLE
    whole = click_and_wait(widget, app)
    viewer.close()

    with tempfile.TemporaryDirectory() as out:
        argv = ["segment", str(image), "-o", out, "--device", "cpu", "--quiet"]
        if args.weights:
            argv += ["--weights", str(args.weights)]
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # its table is not this script's output
            dunet(argv)
        cli = time.perf_counter() - start

    result = {"cpu": cpu_name(), "image": str(image), "shape": list(layer.data.shape),
              "current_slice_first_click_seconds": round(first, 3),
              "current_slice_click_seconds": round(second, 3),
              "whole_volume_click_seconds": round(whole, 3), "cli_seconds": round(cli, 3)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"CPU: {result['cpu']}; scan {image.name} {tuple(result['shape'])}")
    print(f"{'what':<44} {'seconds':>8}")
    for key, label in (("current_slice_first_click_seconds", "current slice, first click (loads model)"),
                       ("current_slice_click_seconds", "current slice, second click"),
                       ("whole_volume_click_seconds", "whole volume, click to layer"),
                       ("cli_seconds", "dunet segment, same scan")):
        print(f"{label:<44} {result[key]:>8.2f}")


if __name__ == "__main__":
    main()
