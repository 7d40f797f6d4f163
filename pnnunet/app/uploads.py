"""Uploaded files: where they may go, how big they may be, and what they are.

An upload is one image file (NIfTI, NRRD, MHA), one ``.zip`` of a DICOM series, or the files of a
DICOM folder (sent one by one with their relative paths). Everything lands under the job's
``upload/`` folder: a relative path that would leave it (``..``, an absolute path, a drive letter)
is refused, and so is a zip member that would. Sizes are counted while the bytes arrive, so a
limit holds even when the client lies about ``Content-Length``.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio
import SimpleITK as sitk

from pnnunet.errors import PnnunetError

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
ACCEPTED = "a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MHA (.mha) image, or a DICOM series as a .zip or a folder"
DICOM_MAGIC_OFFSET = 128


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


def extract_zip(archive: Path, destination: Path, limit: int) -> list[Path]:
    """Extract ``archive`` into ``destination``; every member is checked first (paths inside, no links,
    total uncompressed size within ``limit``) so that a bad zip writes nothing."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UploadError(f"{archive.name}: not a readable zip file ({e})\n  fix: {ACCEPTED}") from None
    with zf:
        members, total = [], 0
        for info in zf.infolist():
            if info.is_dir():
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UploadError(f"{archive.name}: the zip contains a link ('{info.filename}'); nothing was "
                                  "extracted\n  fix: zip the DICOM files themselves")
            try:
                rel = safe_relative_path(info.filename)
            except UploadError:
                raise UploadError(f"{archive.name}: the zip contains a path that leaves its folder "
                                  f"('{info.filename}'); nothing was extracted\n  fix: zip the DICOM folder "
                                  "without '..' or absolute paths") from None
            total += info.file_size
            if total > limit:
                raise UploadError(f"{archive.name}: " + too_large(limit), 413)
            members.append((info, rel))
        if not members:
            raise UploadError(f"{archive.name}: the zip is empty\n  fix: {ACCEPTED}")
        out = []
        for info, rel in members:
            target = destination / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out.append(target)
    return out


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


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
            extracted = extract_zip(path, folder, limit)
            path.unlink()
            return _dicom_folder(folder, extracted, case_name(PurePosixPath(name).name))
        if is_dicom_file(path):
            return UploadedInput("dicom", path.parent, case_name(PurePosixPath(name).name))
        raise UploadError(f"'{PurePosixPath(name).name}' is not an image pnnunet can read\n  fix: upload {ACCEPTED}")
    paths = [upload_dir / safe_relative_path(f) for f in files]
    top = PurePosixPath(files[0].replace("\\", "/")).parts[0] if "/" in files[0].replace("\\", "/") else "dicom"
    return _dicom_folder(upload_dir, paths, case_name(top))


def _dicom_folder(folder: Path, files: list[Path], name: str) -> UploadedInput:
    if not any(is_dicom_file(f) for f in files):
        raise UploadError(f"none of the {len(files)} uploaded file(s) is a DICOM file (e.g. '{files[0].name}')\n"
                          f"  fix: upload {ACCEPTED}")
    return UploadedInput("dicom", folder, name)
