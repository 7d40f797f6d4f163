"""Image readers and writers (see :mod:`pnnunet.imageio.base` for the array convention)."""

from __future__ import annotations

from pathlib import Path

from pnnunet.errors import DatasetError
from pnnunet.imageio.base import ImageIO
from pnnunet.imageio.natural_image_io import NaturalImage2DIO
from pnnunet.imageio.simpleitk_io import SimpleITKIO

# Order matters: the first class whose endings match (and that reads the example) is used.
READERS: dict[str, type[ImageIO]] = {"NaturalImage2DIO": NaturalImage2DIO, "SimpleITKIO": SimpleITKIO}
# Upstream names whose files we read with SimpleITK instead (documented deviation).
ALIASES = {"NibabelIO": "SimpleITKIO", "NibabelIOWithReorient": "SimpleITKIO"}

SUPPORTED_ENDINGS = tuple(e for cls in READERS.values() for e in cls.supported_file_endings)


def reader_writer_for(file_ending: str, example_file: Path | str | None = None,
                      override: str | None = None) -> ImageIO:
    """Pick the reader/writer for a dataset (reference §1.2: first match that reads the example).

    ``override`` is dataset.json's ``overwrite_image_reader_writer`` (upstream names accepted).
    """
    if override:
        name = ALIASES.get(override, override)
        if name not in READERS:
            raise DatasetError("dataset.json", f"overwrite_image_reader_writer '{override}' is not supported",
                               f"use one of {sorted(READERS)} or remove the key")
        return READERS[name]()
    ending = file_ending.lower()
    candidates = [cls for cls in READERS.values() if ending in cls.supported_file_endings]
    if not candidates:
        raise DatasetError("dataset.json", f"file_ending '{file_ending}' is not supported",
                           f"convert the images to one of {', '.join(SUPPORTED_ENDINGS)}")
    if example_file is None:
        return candidates[0]()
    last_error: Exception | None = None
    for cls in candidates:
        rw = cls()
        try:
            rw.read_images([example_file])
            return rw
        except DatasetError as e:
            last_error = e
    raise last_error  # type: ignore[misc]


def reader_writer_by_name(name: str) -> ImageIO:
    """Instantiate a reader/writer from the name stored in a plans file."""
    name = ALIASES.get(name, name)
    if name not in READERS:
        raise DatasetError("plans", f"image_reader_writer '{name}' is unknown", f"use one of {sorted(READERS)}")
    return READERS[name]()
