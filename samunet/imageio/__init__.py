"""Image readers/writers, chosen by file ending (see :func:`reader_writer_for`)."""

from samunet.imageio.base import ImageIO, ImageReadError
from samunet.imageio.registry import reader_writer_for, READERS_WRITERS

__all__ = ["ImageIO", "ImageReadError", "reader_writer_for", "READERS_WRITERS"]
