"""DICOM series to NIfTI cases (``pnnunet_convert_dicom``, ``pnnunet_predict -i DICOM_FOLDER_OR_ZIP``).

A folder (searched recursively) or a zip of DICOM files is scanned with pydicom (headers only) and
grouped by SeriesInstanceUID. Every image series becomes one case, ``CASE_0000.nii.gz`` plus
``CASE.json`` (patient/study/series ids, modality, description, geometry, slice count, the source
files). A series is skipped, with the reason logged and returned, when it cannot be one regular
volume: a localizer/scout/pilot, slices of several sizes or orientations, two slices at one position,
a gantry tilt, missing slices or otherwise non-uniform slice spacing, or a non-image object (SEG, SR,
RTSTRUCT...). Files that are not DICOM are ignored with a warning naming them. A zip whose entries
would land outside the extraction folder (``../``, absolute paths, links: "zip-slip") is refused
before anything is extracted.

Voxels are read by SimpleITK (GDCM: compressed transfer syntaxes too), which applies the rescale
slope/intercept (CT in HU). The geometry is set from the headers: origin = ImagePositionPatient of
the first slice along the slice normal, direction = the ImageOrientationPatient row/column cosines and
their cross product, spacing = (column spacing, row spacing, the step between slice positions), all
in DICOM's patient coordinates (LPS), which is what SimpleITK writes into the NIfTI.
"""

from __future__ import annotations

import logging
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from pnnunet.errors import DatasetError
from pnnunet.fileio import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

LOCALIZER_WORDS = ("localizer", "localiser", "scout", "topogram", "surview", "scanogram", "pilot")
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "DOC", "REG",
                        "PLAN", "FID", "RWV"}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
ORIENTATION_TOL = 1e-3     # difference of direction cosines: same orientation
SPACING_REL_TOL = 0.01     # slice steps may differ by 1 % (rounding in the headers), no more
WRITABLE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
TILT_TOL = 1e-3            # sine of the angle between the slice normal and the stacking direction


@dataclass
class DicomSeries:
    """One series of a scanned folder; ``files`` sorted along the slice normal once checked."""

    uid: str
    files: list[Path]
    modality: str = ""
    description: str = ""
    number: int | None = None
    patient_id: str = ""
    study_uid: str = ""
    headers: list = field(default_factory=list, repr=False)  # pydicom datasets without pixel data
    skip_reason: str | None = None                           # why it is not converted (None: converted)
    spacing: tuple[float, float, float] | None = None
    origin: tuple[float, float, float] | None = None
    direction: tuple[float, ...] | None = None

    @property
    def label(self) -> str:
        """How messages name the series: number, description and UID."""
        number = f"#{self.number} " if self.number is not None else ""
        return f"series {number}'{self.description}' ({self.modality}, {len(self.files)} file(s), UID {self.uid})"


@dataclass
class DicomCase:
    """A converted series: ``image_file`` is ``CASE_0000.nii.gz``, ``sidecar`` its ``CASE.json``."""

    case: str
    image_file: Path
    sidecar: Path
    series: DicomSeries


def looks_like_dicom_input(path: Path | str) -> bool:
    """True for a ``.zip`` file or a folder that holds DICOM files (``DICM`` magic, any name, recursive)."""
    path = Path(path)
    if path.is_file():
        return zipfile.is_zipfile(path) or _has_dicm_magic(path)
    if not path.is_dir():
        return False
    for i, f in enumerate(p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")):
        if _has_dicm_magic(f):
            return True
        if i >= 200:
            break
    return False


def _has_dicm_magic(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _unsafe_member(info: zipfile.ZipInfo, dest: Path) -> str | None:
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in pure.parts:
        return "points outside the extraction folder"
    if not (dest / pure).resolve().is_relative_to(dest.resolve()):
        return "points outside the extraction folder"
    return None


def safe_extract(zip_file: Path | str, dest: Path | str) -> list[Path]:
    """Extract a zip into ``dest`` after checking every entry; refuse the whole archive on zip-slip.

    Raises
    ------
    DatasetError : not a zip, or an entry with ``..``, an absolute path or a link (named in the message).
    """
    zip_file, dest = Path(zip_file), Path(dest)
    try:
        zf = zipfile.ZipFile(zip_file)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(zip_file, f"is not a readable zip file ({e})",
                           "pass a folder of DICOM files or a zip made from one") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            why = _unsafe_member(info, dest)
            if why:
                raise DatasetError(zip_file, f"entry '{info.filename}' {why} (zip-slip); nothing was extracted",
                                   "zip the DICOM folder itself, without '..', absolute paths or links")
        out = []
        for info in infos:
            if not info.is_dir():
                out.append(Path(zf.extract(info, dest)))
    return out


@contextmanager
def dicom_folder(path: Path | str) -> Iterator[Path]:
    """The folder to scan: ``path`` itself, or a zip extracted safely (or one DICOM file copied) into a
    temporary folder that is removed afterwards."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.exists():
        raise DatasetError(path, "does not exist", "pass a folder of DICOM files or a .zip of one")
    single = not zipfile.is_zipfile(path)
    if single and not _has_dicm_magic(path):
        raise DatasetError(path, "is neither a folder nor a zip file", "pass a folder of DICOM files or a .zip of one")
    with tempfile.TemporaryDirectory(prefix="pnnunet_dicom_") as tmp:
        if single:  # one (multi-frame or single-slice) DICOM file
            shutil.copyfile(path, Path(tmp) / path.name)
        else:
            safe_extract(path, tmp)
        yield Path(tmp)


def scan_dicom_folder(folder: Path | str) -> tuple[list[DicomSeries], list[str]]:
    """Group the DICOM files under ``folder`` by series (headers only).

    Returns
    -------
    series : sorted by (study, series number, UID), not yet checked
    notes : one line per ignored file (not DICOM, no SeriesInstanceUID, DICOMDIR index)
    """
    folder = Path(folder)
    groups: dict[str, DicomSeries] = {}
    notes: list[str] = []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                           p.relative_to(folder).parts))
    for f in files:
        rel = f.relative_to(folder)
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as e:
            notes.append(f"{rel}: not a DICOM file ({type(e).__name__}), ignored")
            continue
        if str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS:
            continue  # the DICOMDIR index; the files it lists are scanned directly
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            notes.append(f"{rel}: DICOM without SeriesInstanceUID, ignored")
            continue
        s = groups.get(uid)
        if s is None:
            number = ds.get("SeriesNumber")
            s = groups[uid] = DicomSeries(
                uid=uid, files=[], modality=str(ds.get("Modality", "") or ""),
                description=str(ds.get("SeriesDescription", "") or "").strip(),
                number=int(number) if number not in (None, "") else None,
                patient_id=str(ds.get("PatientID", "") or ""), study_uid=str(ds.get("StudyInstanceUID", "") or ""))
        s.files.append(f)
        s.headers.append(ds)
    for n in notes:
        log.warning("%s", n)
    series = sorted(groups.values(), key=lambda s: (s.study_uid, s.number if s.number is not None else 1 << 30, s.uid))
    return series, notes


def _floats(ds, key: str, n: int) -> np.ndarray | None:
    v = ds.get(key)
    if v is None:
        return None
    try:
        arr = np.array([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == n else None


def _is_localizer(s: DicomSeries) -> str | None:
    types = {str(t).upper() for ds in s.headers for t in (ds.get("ImageType") or [])}
    if "LOCALIZER" in types:
        return "a localizer (ImageType LOCALIZER)"
    desc = s.description.lower()
    for w in LOCALIZER_WORDS:
        if w in desc:
            return f"a localizer/scout (SeriesDescription '{s.description}')"
    return None


def check_series(s: DicomSeries) -> str | None:
    """Sort ``s`` along the slice normal and fill its geometry; return why it cannot be a volume (or None).

    Reasons name the series and, for spacing problems, the files on both sides of the gap.
    """
    rel = [f.name for f in s.files]
    if s.modality.upper() in NON_IMAGE_MODALITIES or any("Rows" not in ds for ds in s.headers):
        return f"not an image series (modality {s.modality or 'unknown'})"
    reasons = []
    localizer = _is_localizer(s)
    if localizer:
        reasons.append(localizer)
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in s.headers}
    if len(sizes) > 1:
        reasons.append(f"slices of {len(sizes)} sizes {sorted(sizes)}")
    frames = [int(ds.get("NumberOfFrames", 1) or 1) for ds in s.headers]
    if len(s.files) == 1 and frames[0] > 1:  # enhanced multi-frame: SimpleITK/GDCM sorts out the geometry
        return "; ".join(reasons) or None
    if max(frames) > 1:
        reasons.append("several multi-frame files in one series")
    iops = [_floats(ds, "ImageOrientationPatient", 6) for ds in s.headers]
    ipps = [_floats(ds, "ImagePositionPatient", 3) for ds in s.headers]
    if any(v is None for v in iops) or any(v is None for v in ipps):
        missing = [n for n, a, b in zip(rel, iops, ipps) if a is None or b is None]
        reasons.append(f"no ImagePositionPatient/ImageOrientationPatient in {', '.join(missing[:3])}")
        return "; ".join(reasons)
    distinct = []
    for v in iops:
        if not any(np.allclose(v, d, atol=ORIENTATION_TOL) for d in distinct):
            distinct.append(v)
    if len(distinct) > 1:
        reasons.append(f"slices in {len(distinct)} different orientations (mixed orientations: a multi-plane "
                       "localizer or several stacks in one series)")
    if reasons:
        return "; ".join(reasons)
    row, col = iops[0][:3], iops[0][3:]
    normal = np.cross(row, col)
    order = np.argsort([float(np.dot(p, normal)) for p in ipps], kind="stable")
    s.files = [s.files[i] for i in order]
    s.headers = [s.headers[i] for i in order]
    pos = np.array([ipps[i] for i in order])
    dist = pos @ normal
    ps = _floats(s.headers[0], "PixelSpacing", 2)
    if ps is None:
        return "no PixelSpacing"
    if len(pos) == 1:
        step = float(s.headers[0].get("SpacingBetweenSlices") or s.headers[0].get("SliceThickness") or 1.0)
    else:
        steps = np.diff(dist)
        dup = np.flatnonzero(steps < 1e-4)
        if dup.size:
            i = int(dup[0])
            return (f"{s.files[i].name} and {s.files[i + 1].name} lie at the same position {dist[i]:.3f} mm "
                    f"({dup.size + 1} slices share a position: several acquisitions or time points in one series)")
        typical = float(np.median(steps))
        bad = np.flatnonzero(np.abs(steps - typical) > SPACING_REL_TOL * typical)
        if bad.size:
            i = int(bad[0])
            return (f"non-uniform slice spacing: {steps[i]:.3f} mm between {s.files[i].name} "
                    f"({dist[i]:.3f} mm) and {s.files[i + 1].name} ({dist[i + 1]:.3f} mm) where the other "
                    f"steps are {typical:.3f} mm (missing slices?)")
        stack = pos[-1] - pos[0]
        sine = np.linalg.norm(np.cross(stack / np.linalg.norm(stack), normal))
        if sine > TILT_TOL:
            return (f"the slices are stacked at {np.degrees(np.arcsin(min(sine, 1.0))):.2f} degrees to their normal "
                    "(gantry tilt); resample it in a DICOM tool first")
        step = float((dist[-1] - dist[0]) / (len(dist) - 1))
    s.spacing = (float(ps[1]), float(ps[0]), step)  # x: along a row = column spacing (PixelSpacing[1])
    s.origin = tuple(float(x) for x in pos[0])
    s.direction = tuple(float(x) for x in np.stack([row, col, normal], axis=1).ravel())
    return None


def _needs_float(s: DicomSeries) -> bool:
    for ds in s.headers:
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if slope != int(slope) or intercept != int(intercept):
            return True
    values = {(float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)) for ds in s.headers}
    return len(values) > 1


def read_series(s: DicomSeries) -> sitk.Image:
    """The series as a 3D image (rescale slope/intercept applied) with the geometry from :func:`check_series`."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in s.files])
    if _needs_float(s):
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        img = reader.Execute()
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
        raise DatasetError(s.files[0].parent, f"{s.label}: SimpleITK cannot read the pixel data ({last})",
                           "check that the files are complete; export the series again from the PACS") from None
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    if s.spacing is not None:  # the headers' geometry, exactly (not GDCM's re-derivation)
        img.SetSpacing(s.spacing)
        img.SetOrigin(s.origin)
        img.SetDirection(s.direction)
    return img


def case_name(s: DicomSeries, taken: set[str]) -> str:
    """``<modality>_<series number>_<description>`` with safe characters; UID tail added if taken."""
    desc = re.sub(r"[^A-Za-z0-9]+", "-", s.description).strip("-")[:40]
    parts = [s.modality or "DICOM", f"S{s.number}" if s.number is not None else "", desc]
    name = "_".join(p for p in parts if p)
    if name in taken:
        name = f"{name}_{re.sub(r'[^0-9]', '', s.uid)[-8:]}"
    i = 2
    base = name
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def _sidecar(s: DicomSeries, case: str, img: sitk.Image, source: Path, folder: Path, image: Path) -> dict:
    ds = s.headers[0]
    return {"case": case, "image": image.name, "source": str(source),
            "patient_id": s.patient_id, "study_instance_uid": s.study_uid, "series_instance_uid": s.uid,
            "study_date": str(ds.get("StudyDate", "") or ""), "modality": s.modality,
            "series_description": s.description, "series_number": s.number,
            "slices": len(s.files), "size": list(img.GetSize()), "spacing": list(img.GetSpacing()),
            "origin": list(img.GetOrigin()), "direction": list(img.GetDirection()),
            "pixel_type": img.GetPixelIDTypeAsString(),
            "source_files": [str(f.relative_to(folder)) for f in s.files]}


def select_series(series: list[DicomSeries], series_uid: str | None, where: Path) -> list[DicomSeries]:
    """Check every series (or only ``series_uid``); log what is skipped and why; raise if none is left."""
    if not series:
        raise DatasetError(where, "contains no DICOM files", "pass the folder (or zip) of the DICOM series")
    if series_uid is not None:
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            listing = "; ".join(s.label for s in series[:10])
            raise DatasetError(where, f"has no series with UID {series_uid} (found: {listing})",
                               "pass one of the UIDs listed to --series, or leave --series out")
        reason = check_series(chosen[0])
        if reason:
            chosen[0].skip_reason = reason
            raise DatasetError(where, f"{chosen[0].label} cannot be converted: {reason}",
                               "pick another series or fix the series in a DICOM tool")
        return chosen
    usable = []
    for s in series:
        s.skip_reason = check_series(s)
        if s.skip_reason:
            log.warning("skipped %s: %s", s.label, s.skip_reason)
        else:
            usable.append(s)
    if not usable:
        detail = "; ".join(f"{s.label}: {s.skip_reason}" for s in series)
        raise DatasetError(where, f"has no series that can be converted to a volume ({detail})",
                           "pass the folder of a CT/MR image series (localizers and broken series are skipped)")
    return usable


def convert_dicom(input_dir_or_zip: Path | str, output_folder: Path | str,
                  series_uid: str | None = None, file_ending: str = ".nii.gz") -> list[DicomCase]:
    """Write one ``CASE_0000.nii.gz`` + ``CASE.json`` per image series of a DICOM folder or zip.

    Parameters
    ----------
    input_dir_or_zip : folder (searched recursively) or .zip of DICOM files
    output_folder : created if needed; existing case files are never overwritten
    series_uid : convert only this SeriesInstanceUID (an error if it cannot be converted)
    file_ending : ``.nii.gz`` (default), ``.nrrd``, ``.mha``, ``.nii``: the model's file_ending

    Returns
    -------
    the converted cases in series order. For a zip, ``DicomCase.series.files`` point into a
    temporary folder that is gone on return; use :func:`open_dicom_cases` to keep them.

    Raises
    ------
    DatasetError : missing input, zip-slip, no convertible series, an output file that exists.
    """
    with open_dicom_cases(input_dir_or_zip, output_folder, series_uid, file_ending) as cases:
        return cases


@contextmanager
def open_dicom_cases(input_dir_or_zip: Path | str, output_folder: Path | str, series_uid: str | None = None,
                     file_ending: str = ".nii.gz", sidecar_folder: Path | str | None = None
                     ) -> Iterator[list[DicomCase]]:
    """:func:`convert_dicom` whose source files stay readable inside the ``with`` (for DICOM-SEG export).

    ``sidecar_folder``: where the ``CASE.json`` files go (default ``output_folder``; a prediction input
    folder must hold images only)."""
    if file_ending not in WRITABLE_ENDINGS:
        raise DatasetError("dataset.json", f"DICOM series can be converted to {', '.join(WRITABLE_ENDINGS)}, "
                                           f"not '{file_ending}'", "use a model trained on NIfTI, NRRD or MHA files")
    source = Path(input_dir_or_zip)
    output = Path(output_folder)
    sidecars = Path(sidecar_folder) if sidecar_folder is not None else output
    with dicom_folder(source) as folder:
        series, _ = scan_dicom_folder(folder)
        usable = select_series(series, series_uid, source)
        taken: set[str] = set()
        plan = []
        for s in usable:
            name = case_name(s, taken)
            taken.add(name)
            image, sidecar = output / f"{name}_0000{file_ending}", sidecars / f"{name}.json"
            for f in (image, sidecar):
                if f.exists():
                    raise DatasetError(f, f"already exists (it would be overwritten by {s.label})",
                                       "convert into an empty folder or delete the old case files")
            plan.append((s, name, image, sidecar))
        cases = []
        for i, (s, name, image, sidecar) in enumerate(plan, 1):
            img = read_series(s)
            with atomic_path(image) as tmp:
                sitk.WriteImage(img, str(tmp), True)
            write_json_atomic(sidecar, _sidecar(s, name, img, source, folder, image))
            log.info("[%d/%d] %s -> %s (%s voxels, spacing %s mm)", i, len(plan), s.label, image.name,
                     "x".join(map(str, img.GetSize())), ", ".join(f"{v:.4g}" for v in img.GetSpacing()))
            cases.append(DicomCase(name, image, sidecar, s))
        skipped = [s for s in series if s.skip_reason]
        log.info("converted %d series into %s%s", len(cases), output,
                 f"; skipped {len(skipped)} (see the warnings above)" if skipped else "")
        yield cases


@contextmanager
def prediction_input(path: Path | str, scratch_parent: Path | str,
                     file_ending: str = ".nii.gz") -> Iterator[tuple[Path, list[DicomCase] | None]]:
    """The folder to predict and the DICOM cases: ``(path, None)`` for a folder of images; for a DICOM
    folder or zip, its series converted into a hidden temporary folder under ``scratch_parent``
    (removed on exit; the source files stay readable inside the ``with`` for DICOM-SEG export)."""
    path = Path(path)
    if not looks_like_dicom_input(path):
        yield path, None
        return
    Path(scratch_parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dicom_input-", dir=scratch_parent) as tmp:
        images = Path(tmp) / "images"
        with open_dicom_cases(path, images, file_ending=file_ending, sidecar_folder=tmp) as cases:
            yield images, cases


def describe_series(series: Sequence[DicomSeries]) -> str:
    """One line per series (UID, modality, files, description, skip reason) for listings and errors."""
    return "\n".join(f"{s.uid}  {s.modality:<3} {len(s.files):>4} file(s)  {s.description}"
                     + (f"  [skipped: {s.skip_reason}]" if s.skip_reason else "") for s in series)
