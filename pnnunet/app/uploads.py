"""Uploaded files: where they may go, how big they may be, and what they are.

An upload is one image file (NIfTI, NRRD, MHA), one ``.zip`` of a DICOM series, or the files of a
DICOM folder (sent one by one with their relative paths). Everything lands under the job's
``upload/`` folder: a relative path that would leave it (``..``, an absolute path, a drive letter)
is refused, and so is a zip member that would. Sizes are counted while the bytes arrive, so a
limit holds even when the client lies about ``Content-Length``.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio
import SimpleITK as sitk

from pnnunet.dataset.dicom import looks_like_dicom_input, safe_extract
from pnnunet.errors import DatasetError, PnnunetError

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
ACCEPTED = "a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MHA (.mha) image, or a DICOM series as a .zip or a folder"


class UploadError(PnnunetError):
    """A problem with what the user sent; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def safe_relative_path(name: str) -> PurePosixPath:
    """``name`` (a client's relative file name, ``/`` or ``\\`` separated) as a path that stays inside
    its folder; :class:`UploadError` for an empty, absolute or escaping name."""
    text = name.replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or text.startswith("/") or ".." in parts or ":" in parts[0] or any("\x00" in p for p in parts):
        raise UploadError(f"the file name '{name}' points outside the upload folder; it was not saved\n"
                          "  fix: upload the files themselves, or a zip without '..' or absolute paths")
    return PurePosixPath(*parts)


def image_ending(name: str) -> str | None:
    lower = name.lower()
    return next((e for e in IMAGE_ENDINGS if lower.endswith(e)), None)


async def save_stream(chunks, destination: Path, limit: int, already: int = 0) -> int:
    """Write the async byte ``chunks`` to ``destination``; the bytes written. Past ``limit`` bytes
    (``already`` counted before this file) the partial file is removed and :class:`UploadError` (413)
    raised."""
    written = 0
    tmp = destination.with_name(f".{destination.name}.part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        async with await anyio.open_file(tmp, "wb") as f:  # writes off the event loop: other requests go on
            async for chunk in chunks:
                written += len(chunk)
                if already + written > limit:
                    raise UploadError(too_large(limit), 413)
                await f.write(chunk)
        tmp.replace(destination)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def too_large(limit: int) -> str:
    return (f"the upload is larger than this server's limit of {limit / 2**20:.0f} MB; nothing was kept\n"
            "  fix: upload a smaller file (one series, compressed .nii.gz), or start pnnunet_app with a larger "
            "--max_upload_mb")


def extract_zip(archive: Path, destination: Path, limit: int) -> None:
    """Extract ``archive`` into ``destination`` with the DICOM import's checks (zip-slip refused before
    anything is written, :func:`pnnunet.dataset.dicom.safe_extract`), after checking that its
    uncompressed size stays within ``limit`` (a zip bomb is refused the same way)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as e:
        raise UploadError(f"{archive.name}: not a readable zip file ({e})\n  fix: upload {ACCEPTED}") from None
    if not infos:
        raise UploadError(f"{archive.name}: the zip is empty\n  fix: upload {ACCEPTED}")
    if sum(i.file_size for i in infos) > limit:
        raise UploadError(f"{archive.name} (uncompressed): " + too_large(limit), 413)
    try:
        safe_extract(archive, destination)
    except DatasetError as e:
        shutil.rmtree(destination, ignore_errors=True)
        raise UploadError(f"{archive.name}: {e.problem}\n  fix: {e.fix}") from None


def check_image(path: Path, shown_name: str) -> tuple[int, ...]:
    """The size of the image in ``path`` (header only); :class:`UploadError` if it cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise UploadError(f"'{shown_name}' is not an image pnnunet can read (the file is damaged or of another "
                          f"kind)\n  fix: upload {ACCEPTED}") from None
    size = tuple(int(s) for s in reader.GetSize())
    if reader.GetNumberOfComponents() != 1 or len(size) not in (2, 3):
        raise UploadError(f"'{shown_name}': a {len(size)}D image with {reader.GetNumberOfComponents()} components "
                          "per voxel; the platform segments one 2D or 3D grey-value image\n"
                          "  fix: upload a single-channel image")
    return size


@dataclass(frozen=True)
class UploadedInput:
    """What a job's upload turned out to be."""

    kind: str  # "image" or "dicom"
    path: Path  # the image file, or the folder of DICOM files
    name: str  # the case name shown and used for the output files


def case_name(file_name: str) -> str:
    """A safe case name from an uploaded file name (``hippocampus_045.nii.gz`` -> ``hippocampus_045``)."""
    ending = image_ending(file_name) or Path(file_name).suffix
    stem = Path(file_name).name[: len(Path(file_name).name) - len(ending)] if ending else Path(file_name).name
    stem = stem.removesuffix("_0000")
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("_")
    return clean[:64] or "case"


def classify_upload(upload_dir: Path, files: list[str], limit: int) -> UploadedInput:
    """Decide what the uploaded ``files`` (relative names under ``upload_dir``) are: one image, a DICOM
    zip (extracted into ``upload_dir/dicom``) or a DICOM folder. :class:`UploadError` otherwise."""
    if not files:
        raise UploadError(f"nothing was uploaded\n  fix: choose {ACCEPTED}")
    if len(files) == 1:
        name = files[0]
        path = upload_dir / safe_relative_path(name)
        if image_ending(name):
            check_image(path, PurePosixPath(name).name)
            return UploadedInput("image", path, case_name(PurePosixPath(name).name))
        if name.lower().endswith(".zip"):
            folder = upload_dir / "dicom"
            extract_zip(path, folder, limit)
            path.unlink()
            return _dicom_folder(folder, case_name(PurePosixPath(name).name))
        if looks_like_dicom_input(path):
            return UploadedInput("dicom", path.parent, case_name(PurePosixPath(name).name))
        raise UploadError(f"'{PurePosixPath(name).name}' is not an image pnnunet can read\n  fix: upload {ACCEPTED}")
    for f in files:
        safe_relative_path(f)
    first = files[0].replace("\\", "/")
    return _dicom_folder(upload_dir, case_name(PurePosixPath(first).parts[0] if "/" in first else "dicom"))


def _dicom_folder(folder: Path, name: str) -> UploadedInput:
    if not looks_like_dicom_input(folder):
        raise UploadError(f"none of the uploaded files is a DICOM file (and there is not one image)\n"
                          f"  fix: upload {ACCEPTED}")
    return UploadedInput("dicom", folder, name)
