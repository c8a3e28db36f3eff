"""segflow: semantic segmentation on Cityscapes, from raw packages to a published report."""

__version__ = "0.1.0"
