"""Pick a reader/writer by file ending, or by dataset.json's ``overwrite_image_reader_writer``."""

from __future__ import annotations

from samunet.imageio.base import ImageIO
from samunet.imageio.natural_image_io import NaturalImage2DIO
from samunet.imageio.nibabel_io import NibabelIO
from samunet.imageio.sitk_io import SimpleITKIO

READERS_WRITERS: dict[str, type[ImageIO]] = {
    "SimpleITKIO": SimpleITKIO,
    "NibabelIO": NibabelIO,
    "NaturalImage2DIO": NaturalImage2DIO,
}
# nnU-Net v2 names that map onto ours, so existing datasets work unchanged
_ALIASES = {
    "NibabelIOWithReorient": "NibabelIO",
    "SimpleITKIOWithReorient": "SimpleITKIO",
    "Tiff3DIO": "SimpleITKIO",
}


def reader_writer_for(file_ending: str, overwrite: str | None = None) -> ImageIO:
    """Return an instance of the reader/writer for ``file_ending`` (e.g. ``".nii.gz"``)."""
    if overwrite:
        name = _ALIASES.get(overwrite, overwrite)
        if name not in READERS_WRITERS:
            raise ValueError(
                f"overwrite_image_reader_writer {overwrite!r} is unknown; choose one of {sorted(READERS_WRITERS)}"
            )
        return READERS_WRITERS[name]()
    ending = file_ending.lower()
    for cls in (SimpleITKIO, NaturalImage2DIO):
        if ending in cls.supported_file_endings:
            return cls()
    supported = sorted({e for c in READERS_WRITERS.values() for e in c.supported_file_endings})
    raise ValueError(f"no reader for file ending {file_ending!r}; supported: {supported}")
