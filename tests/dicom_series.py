"""Synthetic DICOM series for tests: a SimpleITK volume written slice by slice with pydicom.

Every attribute highdicom needs for a DICOM-SEG source image is filled in (patient, study, series,
frame of reference, image plane and pixel modules). Voxel values are stored as
``(value - intercept) / slope`` in unsigned 16 bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

PYDICOM_SERIES = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"


def _ds(value: float) -> str:
    return f"{value:.10g}"


def write_ct_series(img: sitk.Image, folder: Path, slope: float = 1.0, intercept: float = -1024.0,
                    order: list[int] | None = None, description: str = "Synthetic CT", series_number: int = 3,
                    positions: list[tuple[float, float, float]] | None = None, modality: str = "CT") -> list[Path]:
    """Write ``img`` (3D) as one CT series into ``folder``; returns the files in slice order.

    order : the order in which slices get file names/instance numbers (default: reversed, so the
        reader has to sort by position); positions : override ImagePositionPatient per slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    arr = sitk.GetArrayFromImage(img).astype(np.float64)  # (z, y, x)
    stored = np.round((arr - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535 or not np.allclose(stored * slope + intercept, arr):
        raise ValueError("values not representable with this slope/intercept in uint16")
    d = np.array(img.GetDirection()).reshape(3, 3)
    sx, sy, sz = img.GetSpacing()
    origin = np.array(img.GetOrigin())
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    n = arr.shape[0]
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    order = list(range(n))[::-1] if order is None else order
    files = []
    for k in range(n):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "PNN0001", "19700101", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20260101", "120000", "1"
        ds.ReferringPhysicianName, ds.AccessionNumber = "", "A1"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality, ds.SeriesDescription = series, series_number, modality, description
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer = "pnnunet tests"
        ds.InstanceNumber = order.index(k) + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        pos = origin + k * sz * d[:, 2] if positions is None else np.asarray(positions[k], dtype=float)
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.ImageOrientationPatient = [_ds(v) for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.SliceThickness = _ds(sz)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        if modality == "CT":
            ds.RescaleType = "HU"
        ds.PixelData = stored[k].astype("<u2").tobytes()
        path = folder / f"IM{order.index(k):04d}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def volume(shape_zyx=(6, 9, 11), spacing=(0.75, 0.8, 2.5), origin=(-120.5, 33.25, 10.0),
           direction=(1, 0, 0, 0, 0.6, 0.8, 0, -0.8, 0.6), seed=0) -> sitk.Image:
    """A CT-like float32 volume (integers in [-1024, 1500]) with an oblique (rotated about x) direction.

    The direction's columns are the row cosine (1, 0, 0), the column cosine (0, 0.6, -0.8) and their
    cross product, the slice normal (0, 0.8, 0.6): all exact in DICOM's decimal strings.
    """
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1024, 1500, size=shape_zyx).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection([float(v) for v in direction])
    return img
