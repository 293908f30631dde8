"""samunet: an nnU-Net-style, self-configuring pipeline for medical image segmentation with SAM."""

__version__ = "0.1.0"
