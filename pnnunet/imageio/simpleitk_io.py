"""SimpleITK reader/writer for ``.nii.gz .nii .nrrd .mha .gipl``.

DEVIATION(nnU-Net §1.2): upstream reads plain ``.nii`` with nibabel (other axis order); pnnunet
reads every NIfTI with SimpleITK, so ``.nii`` and ``.nii.gz`` datasets behave identically.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from pnnunet.errors import DatasetError
from pnnunet.fileio import atomic_path
from pnnunet.imageio.base import ImageIO, seg_dtype
from pnnunet.imageio.completeness import check_complete


def _read_one(path: Path) -> sitk.Image:
    check_complete(path)  # SimpleITK reads a truncated NIfTI without error, zero-filled
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:  # SimpleITK raises RuntimeError for unreadable files
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
        raise DatasetError(path, f"cannot be read as an image ({first})",
                           "check that the file exists, is complete and is in the dataset's file_ending format") from None


class SimpleITKIO(ImageIO):
    name = "SimpleITKIO"
    supported_file_endings = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")

    def read_images(self, paths: Sequence[Path | str]) -> tuple[np.ndarray, dict]:
        arrays, spacings, sitk_geoms = [], [], []
        for p in map(Path, paths):
            img = _read_one(p)
            arr = sitk.GetArrayFromImage(img)
            sp = tuple(float(s) for s in img.GetSpacing())
            if arr.ndim == 2:  # 2D image: (1, 1, X, Y), dummy spacing on the first axis
                arr = arr[None, None]
                nn_spacing = (max(sp) * 999.0, *sp[::-1])
            elif arr.ndim == 3:
                arr = arr[None]
                nn_spacing = sp[::-1]
            elif arr.ndim == 4:  # 4D file: channels first (MSD style)
                nn_spacing = sp[::-1][1:]
            else:
                raise DatasetError(p, f"has {arr.ndim} dimensions; only 2D, 3D and 4D images are supported",
                                   "convert the file to a 2D or 3D image")
            arrays.append(arr)
            spacings.append(tuple(abs(s) for s in nn_spacing))
            sitk_geoms.append({"spacing": list(sp), "origin": list(img.GetOrigin()),
                               "direction": list(img.GetDirection())})
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1:
            detail = ", ".join(f"{Path(p).name} {a.shape[1:]}" for p, a in zip(paths, arrays))
            raise DatasetError(paths[0], f"the channel files of this case have different shapes ({detail})",
                               "all channels of a case must have the same shape and spacing; resample them onto one grid")
        if len(set(spacings)) > 1:
            detail = ", ".join(f"{Path(p).name} {s}" for p, s in zip(paths, spacings))
            raise DatasetError(paths[0], f"the channel files of this case have different spacings ({detail})",
                               "all channels of a case must have the same shape and spacing; resample them onto one grid")
        for p, g in zip(paths[1:], sitk_geoms[1:]):
            if not (np.allclose(g["origin"], sitk_geoms[0]["origin"]) and
                    np.allclose(g["direction"], sitk_geoms[0]["direction"])):
                warnings.warn(f"{p}: origin/direction differ from {paths[0]}; using the first file's geometry")
        data = np.vstack(arrays).astype(np.float32, copy=False)
        return data, {"spacing": list(spacings[0]), "sitk_stuff": sitk_geoms[0]}

    def _to_image(self, arr: np.ndarray, properties: dict) -> sitk.Image:
        geom = properties["sitk_stuff"]
        if len(geom["spacing"]) == 2:
            if arr.ndim == 3:
                arr = arr[0]
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(geom["spacing"])
        img.SetOrigin(geom["origin"])
        img.SetDirection(geom["direction"])
        return img

    def write_seg(self, seg: np.ndarray, path: Path | str, properties: dict) -> None:
        if seg.ndim != 3:
            raise ValueError(f"write_seg expects (X, Y, Z), got shape {seg.shape}")
        img = self._to_image(seg.astype(seg_dtype(seg), copy=False), properties)
        with atomic_path(path) as tmp:
            sitk.WriteImage(img, str(tmp), True)

    def write_image(self, image: np.ndarray, path: Path | str, properties: dict) -> None:
        img = self._to_image(np.asarray(image, dtype=np.float32), properties)
        with atomic_path(path) as tmp:
            sitk.WriteImage(img, str(tmp), True)
