"""samunet: an nnU-Net-style, self-configuring pipeline for medical image segmentation with SAM."""

from samunet.utilities.malloc_tuning import tune_malloc as _tune_malloc

__version__ = "0.1.0"

_tune_malloc()  # see samunet/utilities/malloc_tuning.py (SAMUNET_MALLOC_TUNING=0 turns it off)
