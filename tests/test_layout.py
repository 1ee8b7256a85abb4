"""All of the plugin's panels docked in a real napari window on a laptop screen: the window fits,
every control can be reached, the image keeps half the width, long text is elided."""

import pytest
from napari.layers import Layer
from qtpy.QtCore import QRect
from qtpy.QtWidgets import QApplication, QScrollArea, QWidget

from napari_dunet._sample_data import t1_with_lesion
from napari_dunet._widgets.evaluate import EvaluateWidget
from napari_dunet._widgets.finetune import FinetuneWidget
from napari_dunet._widgets.segment import SegmentWidget

LONG_NAME = "sub-r001s001_ses-1_space-orig_acq-mprage_run-01_desc-defaced_T1w" * 2
LONG_PATH = "/home/someone/projects/stroke-cohort-2026/derivatives/napari-dunet/models/" * 2
LONG_PATH = LONG_PATH.replace("//", "/")


def controls(panel) -> list[QWidget]:
    """The panel's visible magicgui controls (their Qt widgets)."""
    return [w.native for w in panel if w.visible]


def reachable(scroll: QScrollArea, widget: QWidget) -> bool:
    """Scroll to ``widget``; True when it then lies inside the visible part of the panel (as much
    of it as the panel's height can show), at a usable size."""
    scroll.ensureWidgetVisible(widget, 0, 0)
    QApplication.processEvents()
    viewport = scroll.viewport().rect()
    shown = QRect(widget.mapTo(scroll.viewport(), widget.rect().topLeft()), widget.size())
    inside = shown.left() >= 0 and shown.right() <= viewport.right()
    if shown.height() <= viewport.height():
        inside &= viewport.contains(shown)
    else:  # taller than the panel: its top is shown, the rest by scrolling on
        inside &= 0 <= shown.top() < viewport.height()
    return inside and widget.width() >= 20 and widget.height() >= 10


@pytest.mark.parametrize("screen", [(1280, 800), (1920, 1080)])
def test_every_panel_fits_a_laptop_screen(make_napari_viewer, qtbot, screen):
    viewer = make_napari_viewer(show=True)
    for data, kwargs, kind in t1_with_lesion():
        viewer.add_layer(Layer.create(data, {**kwargs, "name": LONG_NAME}, kind))
    panels = {cls: viewer.window.add_plugin_dock_widget("napari-dunet", name)[1]
              for cls, name in ((SegmentWidget, "Segment lesion"), (EvaluateWidget, "Evaluate"),
                                (FinetuneWidget, "Fine-tune"))}
    segment, evaluate, finetune = panels[SegmentWidget], panels[EvaluateWidget], panels[FinetuneWidget]
    status = f"Trained 1 epoch; {LONG_PATH}finetuned-20261129.safetensors holds the model."
    finetune._status.value = status
    finetune._out.value = LONG_PATH + "finetuned.safetensors"
    segment._summary.value = "12.34 mL in 3 lesions (axial slice 56 only) " * 3
    evaluate._status.value = status
    window = viewer.window._qt_window
    window.resize(*screen)
    qtbot.wait(300)

    assert window.width() <= screen[0] and window.height() <= screen[1]
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= window.width() / 2
    for panel in panels.values():
        scroll = panel.native
        assert isinstance(scroll, QScrollArea) and scroll.isVisible()
        unreachable = [w for w in controls(panel) if not reachable(scroll, w)]
        assert unreachable == [], type(panel).__name__
    for label, text in ((finetune._status, status), (evaluate._status, status)):
        assert label.native.toolTip() == text and label.value == text
        assert label.native.width() < label.native.fontMetrics().horizontalAdvance(text)
    path_field = finetune._out.native.findChild(type(finetune._lr.native))
    assert path_field.toolTip().startswith(str(finetune._out.value))


def test_evaluate_shows_every_metric_row(make_napari_viewer, qtbot):
    import numpy as np

    viewer = make_napari_viewer(show=True)
    mask = np.zeros((10, 12, 8), np.uint8)
    mask[3:7, 4:8, 2:5] = 1
    viewer.add_labels(mask, name="tracing")
    viewer.add_labels(np.roll(mask, 1, axis=0), name="network")
    _, panel = viewer.window.add_plugin_dock_widget("napari-dunet", "Evaluate")
    panel._truth.value, panel._pred.value = viewer.layers["tracing"], viewer.layers["network"]
    panel.evaluate()
    qtbot.wait(100)
    table = panel.case_table.native
    assert table.rowCount() == 10
    last = table.rowCount() - 1
    assert table.rowViewportPosition(last) + table.rowHeight(last) <= table.viewport().height()
    for column in range(table.columnCount()):  # no value cut: each column fits its widest text
        widest = max(table.fontMetrics().horizontalAdvance(table.item(r, column).text())
                     for r in range(table.rowCount()))
        assert table.columnWidth(column) >= widest
