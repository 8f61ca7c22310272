"""medseg: self-configuring medical image segmentation and classification."""

__version__ = "0.1.0"
