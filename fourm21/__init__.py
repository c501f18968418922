"""fourm21: one vision network for classification, detection and segmentation."""

__version__ = "0.1.0"
