"""2D natural images (``.png .bmp .tif``) read with scikit-image.

A grey image becomes ``(1, 1, X, Y)``, an RGB(A) image ``(3|4, 1, X, Y)``; the spacing is
``(999, 1, 1)`` as in nnU-Net v2's NaturalImage2DIO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from skimage import io as skio

from pnnunet.errors import DatasetError
from pnnunet.fileio import atomic_path
from pnnunet.imageio.base import ImageIO, seg_dtype

# what imageio/PIL raise for a missing, truncated or not-an-image file (measured on PNGs: truncated -> OSError,
# garbage or empty -> RuntimeError, a PNG signature followed by garbage -> SyntaxError from PIL's parser)
_BROKEN_FILE_ERRORS = (OSError, RuntimeError, ValueError, SyntaxError, IndexError, KeyError)


class NaturalImage2DIO(ImageIO):
    name = "NaturalImage2DIO"
    supported_file_endings = (".png", ".bmp", ".tif")

    def read_images(self, paths: Sequence[Path | str]) -> tuple[np.ndarray, dict]:
        arrays = []
        for p in map(Path, paths):
            try:
                arr = skio.imread(str(p))
            except _BROKEN_FILE_ERRORS as e:
                raise DatasetError(p, f"cannot be read as a 2D image ({type(e).__name__}: {e})",
                                   "check that the file exists, is complete and is a PNG/BMP/TIF image") from None
            if arr.ndim == 3:  # (X, Y, channels) → (channels, 1, X, Y)
                arr = arr.transpose(2, 0, 1)[:, None]
            elif arr.ndim == 2:
                arr = arr[None, None]
            else:
                raise DatasetError(p, f"has shape {arr.shape}; expected a 2D grey or colour image",
                                   "save each 2D image as its own file")
            arrays.append(arr)
        if len({a.shape[1:] for a in arrays}) > 1:
            detail = ", ".join(f"{Path(p).name} {a.shape[2:]}" for p, a in zip(paths, arrays))
            raise DatasetError(paths[0], f"the channel files of this case have different shapes ({detail})",
                               "all channels of a case must have the same size")
        data = np.vstack(arrays).astype(np.float32, copy=False)
        return data, {"spacing": [999.0, 1.0, 1.0]}

    def write_seg(self, seg: np.ndarray, path: Path | str, properties: dict) -> None:
        if seg.ndim != 3 or seg.shape[0] != 1:
            raise ValueError(f"NaturalImage2DIO.write_seg expects (1, X, Y), got {seg.shape}")
        with atomic_path(path) as tmp:
            skio.imsave(str(tmp), seg[0].astype(seg_dtype(seg), copy=False), check_contrast=False)
