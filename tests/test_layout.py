"""All of the plugin's panels docked in a real napari window on a laptop screen: the window fits,
every control can be reached, the image keeps half the width, long text is elided."""

import pytest
from napari.layers import Layer
from qtpy.QtCore import QRect, Qt
from qtpy.QtWidgets import QApplication, QDockWidget, QScrollArea, QTabBar, QWidget

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


def dock_of(panel) -> QDockWidget:
    widget = panel.native
    while not isinstance(widget, QDockWidget):
        widget = widget.parentWidget()
    return widget


def test_values_tabs_and_summary_are_readable_in_the_default_dock(make_napari_viewer, qtbot):
    """The three panels as napari docks them (tabbed on the right) in a 1280x800 window."""
    import numpy as np

    viewer = make_napari_viewer(show=True)
    for data, kwargs, kind in t1_with_lesion():
        viewer.add_layer(Layer.create(data, kwargs, kind))
    mask = np.zeros(viewer.layers[0].data.shape, np.uint8)
    mask[40:60, 50:70, 50:60] = 1
    viewer.add_labels(mask, name="tracing")
    viewer.add_labels(np.roll(mask, 3, axis=0), name="network")
    segment, evaluate, finetune = (viewer.window.add_plugin_dock_widget("napari-dunet", name)[1]
                                   for name in ("Segment lesion", "Evaluate", "Fine-tune"))
    window = viewer.window._qt_window
    window.resize(1280, 800)
    dock_of(evaluate).raise_()
    evaluate._truth.value, evaluate._pred.value = viewer.layers["tracing"], viewer.layers["network"]
    assert evaluate.evaluate()
    qtbot.waitUntil(lambda: evaluate._runner.worker is None, timeout=30_000)
    qtbot.wait(300)
    # every value of the last case: text, wholly inside the table's visible width
    table = evaluate.case_table.native
    assert table.rowCount() == 10 and evaluate.native.width() < 400  # the default, narrow dock
    scroll = evaluate.native
    scroll.ensureWidgetVisible(table, 0, 0)
    for row in range(table.rowCount()):
        item = table.item(row, 0)
        rect = table.visualItemRect(item)
        text_width = table.fontMetrics().horizontalAdvance(item.text())
        assert item.text().strip() and rect.width() >= text_width > 0, item.text()
        assert rect.left() >= 0 and rect.right() <= table.viewport().width()
        shown = QRect(table.viewport().mapTo(scroll.viewport(), rect.topLeft()), rect.size())
        assert scroll.viewport().rect().left() <= shown.left()
        assert shown.right() <= scroll.viewport().rect().right()
    assert table.item(0, 0).text() == f"{evaluate.last_result.metrics.dsc:.4f}"
    # the session table's first column: its DSC values
    session = evaluate.session_table.native
    assert table.columnWidth(0) > 0 and session.columnWidth(0) >= max(
        session.fontMetrics().horizontalAdvance(session.item(r, 0).text())
        for r in range(session.rowCount()))
    # tab titles whole, none scrolled out of sight
    [bar] = [b for b in window.findChildren(QTabBar) if b.isVisible() and b.count() == 3]
    titles = [bar.tabText(i) for i in range(bar.count())]
    assert sorted(titles) == ["Evaluate", "Fine-tune", "Segment lesion"]
    for i, title in enumerate(titles):
        assert bar.tabRect(i).width() >= bar.fontMetrics().horizontalAdvance(title)
        assert bar.rect().contains(bar.tabRect(i))
    # the lesion summary whole, on as many lines as it needs
    dock_of(segment).raise_()
    text = "12.34 mL in 3 lesions (axial slice 56 only)"
    segment._summary.value = text
    qtbot.wait(300)
    label = segment._summary.native
    needed = label.fontMetrics().boundingRect(QRect(0, 0, label.width(), 1000),
                                              Qt.TextFlag.TextWordWrap, text)
    assert label.isVisible() and label.text() == text and 0 < needed.width() <= label.width()
    assert needed.height() <= label.height()
    right = label.mapTo(segment.native.viewport(), label.rect().topRight()).x()
    assert right <= segment.native.viewport().width()
