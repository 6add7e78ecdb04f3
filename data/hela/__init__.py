"""2D HeLa (IICBU 2008): 862 fluorescence microscopy images of HeLa cells, 10 classes."""

from data.hela.hela_dataset_builder import Builder

__all__ = ["Builder"]
