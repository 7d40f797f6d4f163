"""Checks SimpleITK does not make: a NIfTI file that is cut short, and NaN/inf voxels in NIfTI files.

SimpleITK reads a truncated ``.nii.gz`` without error and fills the missing part with zeros (measured
on a Hippocampus image cut to half its bytes: 53 % of the voxels came back 0), and its NIfTI reader
turns NaN and inf voxels into 0. Both would silently train on, or predict from, zeros. nibabel
reads the header (expected shape, data type, data offset) and the raw voxels; the gzip stream is
decompressed to its end, which checks its end-of-stream marker, CRC and length.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from pnnunet.errors import DatasetError

NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHUNK = 1 << 22
_FIX = "the file is incomplete (an interrupted copy or download?); copy or export it again"


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_ENDINGS)


def _expected_nifti_bytes(path: Path) -> int | None:
    """Header offset plus voxel bytes that the NIfTI header of ``path`` announces (None if unreadable)."""
    try:
        img = nib.load(str(path), mmap=False)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error):
        return None  # not a NIfTI header nibabel understands: SimpleITK's reader reports the file
    proxy = img.dataobj  # the header copy on img says vox_offset 0; the array proxy keeps the file's offset
    n = int(np.prod(proxy.shape, dtype=np.int64))
    return int(proxy.offset) + n * np.dtype(proxy.dtype).itemsize


def _gzip_length(path: Path) -> int:
    """Decompressed length of the whole gzip stream of ``path``; raises DatasetError when it is cut short."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                total += len(chunk)
    except EOFError:
        raise DatasetError(path, "is truncated: the compressed stream ends before its end marker", _FIX) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DatasetError(path, f"is corrupt: its gzip stream does not check out ({e})", _FIX) from None
    return total


def check_complete(path: Path | str) -> None:
    """Raise :class:`DatasetError` naming ``path`` when a NIfTI file holds fewer bytes than its header
    announces or its gzip stream is cut short or corrupt. Other formats are left to their reader."""
    path = Path(path)
    if not _is_nifti(path) or not path.is_file():
        return
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                return  # not gzip at all: SimpleITK's reader names the file and says it cannot read it
        have = _gzip_length(path)
    else:
        have = path.stat().st_size
    expected = _expected_nifti_bytes(path)
    if expected is not None and have < expected:
        raise DatasetError(path, f"is truncated: {have} bytes (uncompressed) where its header announces "
                                 f"{expected}", _FIX)


def nonfinite_counts(path: Path | str) -> tuple[int, int] | None:
    """(NaN count, inf count) of the raw voxels of a NIfTI file (before SimpleITK turns them into 0);
    None for other formats, whose reader keeps them (the caller counts on the array it read)."""
    path = Path(path)
    if not _is_nifti(path):
        return None
    try:
        data = np.asanyarray(nib.load(str(path), mmap=False).dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error):
        return None  # unreadable: reported by the SimpleITK read of the same file
    if not np.issubdtype(data.dtype, np.floating):
        return 0, 0
    return int(np.isnan(data).sum()), int(np.isinf(data).sum())
