"""napari-dunet: D-UNet stroke lesion segmentation for napari and the command line.

Importing the package is cheap: torch and Qt are imported only by the modules that need them.
"""

__version__ = "0.1.0"
