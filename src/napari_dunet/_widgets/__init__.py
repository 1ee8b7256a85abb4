"""Dock widgets of the napari plugin (thin Qt front ends over the Qt-free core)."""
