"""The reader/writer contract.

Axis convention, stated once for the whole package: arrays are **channel first**, spatial axes in
the array order the reader produces (SimpleITK: z, y, x), and ``properties["spacing"]`` lists the
spacing in that same order (so ``spacing[i]`` belongs to array axis ``i + 1``). 2D files are
returned as ``(C, 1, X, Y)`` with a dummy spacing of 999 (SimpleITK 2D: ``999 * max(spacing)``)
on the first axis, exactly as nnU-Net v2 does (reference §1.2).

``properties`` is a JSON-serializable dict: ``spacing`` plus whatever the writer needs to restore
the geometry (``sitk_stuff`` for SimpleITK).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np


class ImageIO(ABC):
    """Reads images/segmentations into nnU-Net arrays and writes segmentations back."""

    name: str = "ImageIO"
    supported_file_endings: tuple[str, ...] = ()

    @abstractmethod
    def read_images(self, paths: Sequence[Path | str]) -> tuple[np.ndarray, dict]:
        """Read the channel files of one case.

        Returns
        -------
        data : float32 ndarray of shape (C, X, Y, Z) (2D files: (C, 1, X, Y)).
        properties : dict with ``spacing`` (3 floats, array order) and geometry for the writer.
        """

    def read_seg(self, path: Path | str) -> tuple[np.ndarray, dict]:
        """Read a label map as float32 (1, X, Y, Z) (values are integers)."""
        return self.read_images([path])

    @abstractmethod
    def write_seg(self, seg: np.ndarray, path: Path | str, properties: dict) -> None:
        """Write an integer label map of shape (X, Y, Z) with the geometry in ``properties``.

        uint8, or uint16 when the largest label is ≥ 255. 2D outputs drop the dummy axis.
        """

    def write_image(self, image: np.ndarray, path: Path | str, properties: dict) -> None:
        """Write one float image channel (X, Y, Z) with the geometry in ``properties``."""
        raise NotImplementedError(f"{self.name} cannot write images")


def seg_dtype(seg: np.ndarray) -> type:
    return np.uint8 if seg.size == 0 or int(seg.max()) < 255 else np.uint16


def is_2d_case(shape: Sequence[int], spacing: Sequence[float]) -> bool:
    """Whether a case of spatial ``shape`` and ``spacing`` (reader order) came from 2D files: the readers give
    those a first axis of size 1 with the dummy spacing ``999 * max(spacing)`` (or 999), see the module doc."""
    return len(shape) == 3 and shape[0] == 1 and spacing[0] >= 998.0 * max(spacing[1:])
