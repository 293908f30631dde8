"""Moved to :mod:`samunet.utilities.cropping` (planning uses it too); kept for existing imports."""

from samunet.utilities.cropping import crop_to_bbox, nonzero_bbox, uncrop  # noqa: F401
