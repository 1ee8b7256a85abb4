"""Subcommands of the ``dunet`` command line (see ``napari_dunet.cli``)."""
