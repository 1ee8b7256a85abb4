"""Regenerate the user guide's screenshots (docs/images/guide_*.png, evaluation_widget.png) from
the real napari viewer, and the sample's MNI report (docs/images/guide_report_*.png).

    xvfb-run -a -s "-screen 0 1280x800x24" python3 scripts/make_screenshots.py [--weights FILE]

It opens the bundled sample the way ``dunet view`` does, in a 1280x800 window (a laptop
screen) with all three of the plugin's panels docked as napari docks them (tabbed, 294 px
wide). With weights (``--weights``, or the ones bundled with the package) the lesion
screenshots show the network's result from the Segment lesion widget; without weights they
show the sample's manual tracing in its place. Last, the Evaluate panel scores that lesion
against the sample's manual tracing (evaluation_widget.png), and the Segment lesion panel
writes that lesion's MNI report (guide_report_panel.png; the report's own figure as
guide_report_mni.png, its Markdown printed; needs the report extra). With ``--finetune``, the
Fine-tune panel then runs its defaults on the sample and that tracing, as a user would
(guide_finetune.png), Segment lesion runs again with the model in use after it, and the sample's
DSC before and after is printed (the default run must not lower it; minutes of CPU time).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_dunet import model_store
from napari_dunet._reader import read_nifti
from napari_dunet._sample_data import SAMPLE_MASK
from napari_dunet._widgets.evaluate import EvaluateWidget
from napari_dunet._widgets.finetune import FinetuneWidget
from napari_dunet._widgets.segment import SegmentWidget, ready_to_paint
from napari_dunet.commands.view import open_viewer
from napari_dunet.layers import TRACING_COLORS

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def in_front(panel) -> None:
    """Bring a docked panel's tab to the front."""
    from qtpy.QtWidgets import QDockWidget

    dock = panel.native
    while not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    dock.raise_()
    settle()


def finished(panel, seconds: float = 0.2) -> None:
    """Wait for the panel's background job to end, keeping the window live."""
    while panel._runner.worker is not None:
        settle(seconds)


def score(evaluate, lesion, manual):
    """The Evaluate panel's metrics of ``lesion`` against ``manual``, as a user runs it."""
    evaluate._pred.value, evaluate._truth.value = lesion, manual
    evaluate.evaluate()
    finished(evaluate)
    return evaluate.last_result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="checkpoint for the lesion screenshots")
    parser.add_argument("--finetune", action="store_true",
                        help="also fine-tune with the panel's defaults on the sample's tracing")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    viewer = open_viewer([], args.weights)
    for name in ("Evaluate", "Fine-tune"):
        viewer.window.add_plugin_dock_widget("napari-dunet", name)
    viewer.window.resize(1280, 800)
    panels = viewer.window.dock_widgets.values()
    [widget] = [w for w in panels if isinstance(w, SegmentWidget)]
    [evaluate] = [w for w in panels if isinstance(w, EvaluateWidget)]
    image = viewer.layers["sample T1"]
    [(tracing, tracing_kwargs, _)] = read_nifti(SAMPLE_MASK)
    centre = np.argwhere(tracing).mean(axis=0).round().astype(int)
    viewer.dims.set_point(2, image.data_to_world(centre)[2])
    viewer.reset_view()
    settle()
    viewer.screenshot(OUT / "guide_image.png", canvas_only=True)

    if model_store.current_checkpoint() is not None:
        in_front(widget)
        widget.run()
        finished(widget)
        source = "the network's result"
    else:
        labels = viewer.add_labels(tracing, **{**tracing_kwargs, "name": "sample T1 lesion"})
        viewer.layers.selection.active = labels
        ready_to_paint(labels)
        source = "the sample's manual tracing (no weights available)"
    settle()
    viewer.screenshot(OUT / "guide_lesion.png", canvas_only=True)
    viewer.screenshot(OUT / "guide_window.png", canvas_only=False)

    lesion = viewer.layers.selection.active
    manual = viewer.add_labels(tracing, **{**tracing_kwargs, "name": "sample T1 manual lesion"})
    manual.colormap = TRACING_COLORS
    viewer.layers.selection.active = lesion
    in_front(evaluate)
    score(evaluate, lesion, manual)
    settle()
    viewer.screenshot(OUT / "evaluation_widget.png", canvas_only=False)
    print(f"wrote {OUT}/guide_image.png, guide_lesion.png, guide_window.png, "
          f"evaluation_widget.png; lesion: {source}; {evaluate._status.value}")

    report = widget._mni_report
    in_front(widget)
    report._mask.value = lesion
    with tempfile.TemporaryDirectory() as folder:
        report.start(report.job(folder))
        finished(report)
        widget.native.verticalScrollBar().setValue(widget.native.verticalScrollBar().maximum())
        settle()
        viewer.screenshot(OUT / "guide_report_panel.png", canvas_only=False)
        shutil.copy(Path(folder) / "sub-ch2_report.png", OUT / "guide_report_mni.png")
        print((Path(folder) / "sub-ch2_report.md").read_text())
    print(f"wrote {OUT}/guide_report_panel.png, guide_report_mni.png; {report._status.value}")
    if args.finetune:
        [finetune] = [w for w in panels if isinstance(w, FinetuneWidget)]
        fine_tune_on_the_sample(viewer, widget, finetune, evaluate, image, manual)
    viewer.close()


def fine_tune_on_the_sample(viewer, segment, finetune, evaluate, image, manual) -> None:
    """The Fine-tune panel's default run on the sample and its tracing, screenshot, and the
    sample's DSC with the model in use before and after (a user's check)."""
    before = evaluate.last_result.metrics
    in_front(finetune)
    finetune._image.value, finetune._mask.value = image, manual
    finetune.start()
    finished(finetune, 0.5)
    finetune.native.verticalScrollBar().setValue(finetune.native.verticalScrollBar().maximum())
    settle()
    viewer.screenshot(OUT / "guide_finetune.png", canvas_only=False)
    print(f"wrote {OUT}/guide_finetune.png; {finetune._status.value}; held back: "
          f"{finetune._result.value}")
    in_front(segment)
    segment._image.value = image
    segment.run()
    finished(segment)
    after = score(evaluate, viewer.layers.selection.active, manual)
    print(f"sample DSC with the model in use: before {before.dsc:.3f}, after the default "
          f"fine-tune {after.dsc:.3f} ({model_store.current_checkpoint()})")


if __name__ == "__main__":
    main()
