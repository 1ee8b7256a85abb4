"""Panels that fit a laptop screen: they scroll instead of growing, no control takes the width
of its text, long text (a path, a status line, a layer name) is elided with the whole of it
in a tooltip, and a short result (the lesion summary) wraps onto more lines."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, FileEdit, Label
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (QComboBox, QDockWidget, QLineEdit, QMainWindow, QScrollArea,
                            QSizePolicy, QTabBar, QWidget)
from superqt import QElidingLabel

#: characters a combo box keeps room for (longer layer names are elided)
COMBO_CHARS = 10


class _ElidedText(QElidingLabel):
    """Text elided in the middle to the width it is given; the whole text is its tooltip."""

    def __init__(self) -> None:
        super().__init__()
        self.setElideMode(Qt.TextElideMode.ElideMiddle)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self.setToolTip(text)


def elided_label(**kwargs) -> Label:
    """A magicgui ``Label`` whose text is elided (call before adding it to a container)."""
    label = Label(**kwargs)
    backend = label._widget  # magicgui's Qt backend; its Label is a plain, fixed-width QLabel
    plain, backend._qwidget = backend._qwidget, _ElidedText()
    backend._qwidget.setText(plain.text())
    plain.deleteLater()
    return label


def wrapped_label(**kwargs) -> Label:
    """A magicgui ``Label`` whose text wraps at word boundaries to the width it is given."""
    label = Label(**kwargs)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


def full_width(*widgets: Any) -> None:
    """Give widgets already in a panel the whole width of its rows (no row title beside them)."""
    for widget in widgets:
        row = widget._labeled_widget()  # magicgui's row of a title and the widget
        if row is not None:
            row._label_widget.visible = False


class Panel(Container):
    """A dock panel that scrolls instead of growing. napari docks a magicgui widget's ``native``
    widget, so here ``native`` is the scroll area, and ``controls`` the widget inside it."""

    def __init__(self) -> None:
        super().__init__(scrollable=True)

    @property
    def native(self) -> QScrollArea:
        return self.root_native_widget

    @property
    def controls(self) -> QWidget:
        return self.root_native_widget.widget()

    def fit(self) -> None:
        """Let the panel shrink to a laptop's dock (call once its controls are added): combo
        boxes keep room for ``COMBO_CHARS`` characters, and combo boxes and text fields show
        their whole text, then their description, in a tooltip."""
        for combo in self.controls.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(COMBO_CHARS)
            _tooltip_shows_text(combo, combo.currentTextChanged, combo.currentText())
        for widget in self:
            if isinstance(widget, FileEdit):  # "Select file" would take a third of the width
                widget.choose_btn.text = "..."
                widget.choose_btn.tooltip = "Browse for the file"
        for edit in self.controls.findChildren(QLineEdit):
            if not isinstance(edit.parent(), QComboBox):
                _tooltip_shows_text(edit, edit.textChanged, edit.text())
        self.controls.layout().addStretch()  # controls packed at the top of a tall dock
        self._width_keeper = _KeepWidth(self)
        self.controls.installEventFilter(self._width_keeper)

    def add_native(self, widget: QWidget) -> None:
        """Append a plain Qt widget (a plot) below the panel's controls."""
        self.controls.layout().addWidget(widget)


class _KeepWidth(QObject):
    """Keeps a panel's scroll area as wide as its controls need (with the scroll bar) when
    their layout changes, and, when shown, its row labels as wide as their text in the font
    napari's style gives them: magicgui sizes both once, before the style applies."""

    def __init__(self, panel: Panel) -> None:
        super().__init__(panel.native)
        self._panel = panel
        self._tabbed = False

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Show:
            self._fit_labels()
            if not self._tabbed:
                self._tabbed = True
                tab_with_other_panels(self._panel.native)
        if event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
            scroll = self._panel.native
            scroll.setMinimumWidth(watched.minimumSizeHint().width() + 2 * scroll.frameWidth()
                                   + scroll.verticalScrollBar().sizeHint().width())
        return False

    def _fit_labels(self) -> None:
        rows = [row for row in (w._labeled_widget() for w in self._panel) if row is not None]
        labels = [row._label_widget.native for row in rows]
        if labels:
            widest = max(label.fontMetrics().horizontalAdvance(label.text()) for label in labels)
            for row in rows:
                row.label_width = widest + 10


def tab_with_other_panels(scroll: QScrollArea) -> None:
    """Dock a panel as a tab beside this plugin's panels already docked in the same area: a
    laptop screen is too short for three panels stacked. The tabs show the panels' names
    without napari's " (plugin)" and are never elided (the tab bar scrolls if it must)."""
    dock = scroll.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    area = window.dockWidgetArea(dock)
    for other in window.findChildren(QDockWidget):
        if (other is not dock and other.isVisible() and not other.isFloating()
                and isinstance(getattr(other.widget(), "_magic_widget", None), Panel)
                and window.dockWidgetArea(other) == area):
            window.tabifyDockWidget(other, dock)
            for tabbed in (other, dock):
                tabbed.setWindowTitle(tabbed.windowTitle().split(" (")[0])
            for bar in window.findChildren(QTabBar):
                bar.setElideMode(Qt.TextElideMode.ElideNone)
                bar.setUsesScrollButtons(True)
            dock.raise_()
            return


def _tooltip_shows_text(widget: QWidget, changed: Any, text: str) -> None:
    description = widget.toolTip() or panel_tooltip(widget)

    def show(value: str) -> None:
        widget.setToolTip("\n".join(t for t in (value, description) if t))

    changed.connect(show)
    show(text)


def panel_tooltip(widget: QWidget) -> str:
    """The tooltip magicgui put on the widget's row (a FileEdit keeps it on its container)."""
    parent = widget.parentWidget()
    return parent.toolTip() if parent is not None else ""
