"""Bring a dataset folder from outside raw into raw as ``DatasetXXX_Name`` (reference §1.3).

Two kinds of source:

- MSD / nnU-Net v1 folders (``TaskXX_Name/{dataset.json, imagesTr, labelsTr, imagesTs}``, dataset.json
  with ``modality`` and ``labels`` int → name): :func:`convert_msd_dataset` splits 4D images into one
  file per channel (``_0000``, ``_0001``, ...), copies 3D images as ``CASE_0000.nii.gz``, copies the
  labels (float-typed label files are cast to uint8/uint16, values unchanged) and writes a v2
  dataset.json, like upstream's ``nnUNetv2_convert_MSD_dataset``. A v1 folder whose images already
  carry the ``_0000`` suffix is copied as it is.
- v2 folders (dataset.json with ``channel_names``/``file_ending``): :func:`import_dataset_folder` copies them.

The result is written to a hidden temporary folder in raw and renamed when complete, so a killed
run never leaves a half-converted dataset. A marker file (``.pnnunet_source.json``) records the
source folder: converting the same folder again reuses the result; another folder with a taken id
is an error. The source folder is only read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pnnunet.dataset.dataset_json import is_msd_dataset_json, load_dataset_json, validate_dataset_json
from pnnunet.defaults import DATASET_FOLDER
from pnnunet.errors import DatasetError, DatasetProblems, PnnunetError
from pnnunet.fileio import load_json, read_json_file, write_json_atomic
from pnnunet.imageio.completeness import check_complete
from pnnunet.parallel import map_in_pool

log = logging.getLogger(__name__)

MARKER = ".pnnunet_source.json"
FIRST_FREE_ID = 500
_PREFIX = re.compile(r"(?:Task|Dataset)(?P<id>\d+)_(?P<name>.+)")
_MSD_ENDING = ".nii.gz"

# A worker job: (kind, source file, destination); kind "image" (split/copy) or "label" (copy/cast).
Job = tuple[str, str, str]


def is_msd_folder(path: Path) -> bool:
    """True if ``path`` is a folder with ``imagesTr/`` and an MSD/v1 dataset.json (reference §1.3)."""
    path = Path(path)
    dj = path / "dataset.json"
    if not (path.is_dir() and dj.is_file() and (path / "imagesTr").is_dir()):
        return False
    try:
        return is_msd_dataset_json(json.loads(dj.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False


# ---------------------------------------------------------------- ids, names, markers


def _sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_\-]+", "_", name.strip()).strip("_")
    return name or "Dataset"


def dataset_folders(root: Path) -> list[Path]:
    """``DatasetXXX_Name`` folders directly under ``root`` (sorted; none if ``root`` is missing)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and DATASET_FOLDER.fullmatch(p.name))


def lowest_free_id(raw_root: Path, start: int = FIRST_FREE_ID) -> int:
    """Smallest dataset id ≥ ``start`` not used by a ``DatasetXXX_*`` folder in ``raw_root``."""
    used = {int(DATASET_FOLDER.fullmatch(p.name)["id"]) for p in dataset_folders(raw_root)}
    for i in range(start, 1000):
        if i not in used:
            return i
    raise PnnunetError(f"{raw_root}: no free dataset id between {start} and 999; pass --id N with a free id")


def _check_id(dataset_id: int, src: Path) -> int:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise DatasetError(src, f"dataset id {dataset_id!r} is not an integer between 1 and 999",
                           "pass --id N with 1 <= N <= 999")
    return dataset_id


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_marker(folder: Path) -> dict | None:
    try:
        m = load_json(folder / MARKER)
        return m if isinstance(m, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def _find_existing(raw_root: Path, src: Path, dataset_id: int | None, want_id: int) -> Path | None:
    """The folder to reuse for ``src``, or None if a new conversion is needed.

    Raises DatasetError when ``want_id`` is taken by another source or ``src`` changed since it
    was converted.
    """
    same_id = [p for p in dataset_folders(raw_root) if int(p.name[7:10]) == want_id]
    from_src = _converted_from(raw_root, src)
    # An explicit id asks for that id; otherwise any earlier conversion of this source is reused.
    candidates = [p for p in from_src if p in same_id] if dataset_id is not None else from_src
    if candidates:
        found = candidates[0]
        if _read_marker(found).get("dataset_json_sha256") != _sha256(src / "dataset.json"):
            raise DatasetError(found, f"was converted from {src}, whose dataset.json has changed since",
                               f"delete {found} to convert {src} again")
        log.info("reusing %s (converted from %s)", found, src)
        return found
    if same_id:
        other = (_read_marker(same_id[0]) or {}).get("source", "unknown source")
        raise DatasetError(same_id[0], f"dataset id {want_id} is already taken by {same_id[0].name} "
                                       f"(from {other}), so {src} cannot be converted with that id",
                           f"choose another id with --id N (e.g. --id {lowest_free_id(raw_root)}), "
                           f"or delete {same_id[0]} if it is no longer needed")
    return None


def _publish(tmp: Path, target: Path, src: Path) -> Path:
    """Rename the finished temporary folder to its final name (atomic on one file system).

    If another process published the same source meanwhile, its result is used.
    """
    try:
        os.rename(tmp, target)
        return target
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (_read_marker(target) or {}).get("source") == str(src):
            return target
        raise DatasetError(target, f"could not be created ({e.strerror})",
                           "check that the raw folder is writable and run the command again") from None


def _converted_from(raw_root: Path, src: Path) -> list[Path]:
    """Dataset folders in raw whose marker names ``src`` as their source."""
    return [p for p in dataset_folders(raw_root) if (_read_marker(p) or {}).get("source") == str(src)]


def _prepare(src: Path, raw_root: Path, dataset_id: int | None, dj_name: str | None,
             name: str | None = None) -> tuple[Path | None, Path]:
    """Decide the target folder. Returns (existing folder to reuse or None, target path).

    Id: ``dataset_id``, else the ``TaskXXX_``/``DatasetXXX_`` prefix, else the id of an earlier
    conversion of ``src``, else the lowest free id ≥ 500. Name: ``name``, else the rest of a prefixed
    folder name, else dataset.json ``name``, else the folder name.
    """
    m = _PREFIX.fullmatch(src.name)
    if name is None:
        name = m["name"] if m else (dj_name if isinstance(dj_name, str) and dj_name.strip() else src.name)
    name = _sanitize(name)
    if dataset_id is not None:
        want_id = _check_id(dataset_id, src)
    elif m:
        want_id = _check_id(int(m["id"]), src)
    elif earlier := _converted_from(raw_root, src):
        want_id = int(earlier[0].name[7:10])
    else:
        want_id = lowest_free_id(raw_root)
        log.info("%s has no TaskXXX_/DatasetXXX_ prefix: using the lowest free id %d", src, want_id)
    existing = _find_existing(raw_root, src, dataset_id, want_id)
    return existing, Path(raw_root) / f"Dataset{want_id:03d}_{name}"


def _marker(src: Path, kind: str) -> dict:
    return {"source": str(src), "kind": kind, "dataset_json_sha256": _sha256(src / "dataset.json")}


def _tmp_folder(raw_root: Path, target: Path) -> Path:
    tmp = Path(raw_root) / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


# ---------------------------------------------------------------- per-file work (runs in workers)


def _listed(folder: Path, ending: str = _MSD_ENDING) -> list[Path]:
    """Files ending in ``ending``, skipping hidden and ``_``-prefixed ones (macOS ``._x`` files in MSD tars)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(ending) and not p.name.startswith((".", "_")))


def _read_header(src_file: Path) -> sitk.ImageFileReader:
    """A reader with the file's header (dimension, pixel type) loaded, or a clear error."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(src_file))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DatasetError(src_file, "cannot be read as a NIfTI image", "check that the file is complete") from None
    return reader


def split_image(src_file: Path, dst_dir: Path) -> list[Path]:
    """Write an MSD image as one 3D file per channel: ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...

    A 2D/3D file is copied unchanged. A 4D file (x, y, z, c) is split along the channel axis;
    each channel keeps the spacing, origin and direction of the first three dimensions.
    """
    src_file, dst_dir = Path(src_file), Path(dst_dir)
    case = src_file.name[: -len(_MSD_ENDING)]
    reader = _read_header(src_file)
    dim = reader.GetDimension()
    if dim in (2, 3):
        dst = dst_dir / f"{case}_0000{_MSD_ENDING}"
        shutil.copyfile(src_file, dst)
        return [dst]
    if dim != 4:
        raise DatasetError(src_file, f"has {dim} dimensions; MSD images are 3D or 4D", "check the file")
    check_complete(src_file)  # SimpleITK would split a truncated file zero-filled
    img = sitk.ReadImage(str(src_file))
    arr = sitk.GetArrayFromImage(img)  # (c, z, y, x)
    spacing, origin = img.GetSpacing()[:3], img.GetOrigin()[:3]
    direction = np.array(img.GetDirection()).reshape(4, 4)[:3, :3].ravel().tolist()
    out = []
    for c in range(arr.shape[0]):
        ch = sitk.GetImageFromArray(arr[c])
        ch.SetSpacing(spacing)
        ch.SetOrigin(origin)
        ch.SetDirection(direction)
        dst = dst_dir / f"{case}_{c:04d}{_MSD_ENDING}"
        sitk.WriteImage(ch, str(dst), True)
        out.append(dst)
    return out


_INT_TYPES = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
              sitk.sitkUInt64, sitk.sitkInt64}


def copy_label(src_file: Path, dst_file: Path) -> None:
    """Copy a label map; one stored as float (with integer values) is rewritten as uint8/uint16.

    The values and the geometry are unchanged. Non-integer or negative values are an error.
    """
    src_file, dst_file = Path(src_file), Path(dst_file)
    reader = _read_header(src_file)
    if reader.GetPixelID() in _INT_TYPES:
        shutil.copyfile(src_file, dst_file)
        return
    check_complete(src_file)
    img = sitk.ReadImage(str(src_file))
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(src_file, "label map has vector pixels", "store one integer label per voxel")
    arr = sitk.GetArrayFromImage(img)
    finite = np.isfinite(arr).all()
    if not finite or not np.array_equal(arr, np.round(arr)) or (arr.size and (arr.min() < 0 or arr.max() > 65535)):
        raise DatasetError(src_file, f"label map of type {img.GetPixelIDTypeAsString()} holds values that are not "
                                     "integers in 0..65535", "store the label map as integers (0, 1, 2, ...)")
    dtype = np.uint8 if arr.size == 0 or arr.max() <= 255 else np.uint16
    out = sitk.GetImageFromArray(arr.astype(dtype))
    out.CopyInformation(img)
    sitk.WriteImage(out, str(dst_file), True)
    log.debug("%s: label stored as %s, written as %s", src_file, img.GetPixelIDTypeAsString(), dtype.__name__)


def _run_job(job: Job) -> tuple[str, str, str] | None:
    """Run one job; a DatasetError comes back as (path, problem, fix) so that it survives pickling."""
    kind, src, dst = job
    try:
        if kind == "image":
            split_image(Path(src), Path(dst))
        elif kind == "copy":
            shutil.copyfile(src, dst)
        else:
            copy_label(Path(src), Path(dst))
    except DatasetError as e:
        return str(e.path), e.problem, e.fix
    return None


def _run_jobs(jobs: list[Job], num_processes: int, what: str) -> None:
    results = map_in_pool(_run_job, [(j,) for j in jobs], num_processes if len(jobs) >= 8 else 1, progress=False)
    problems = [DatasetError(*r) for r in results if r is not None]
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise DatasetProblems(problems, what=what)


# ---------------------------------------------------------------- MSD conversion


def _is_presplit(src: Path, msd: dict) -> bool:
    """True for a v1 raw folder whose images already carry ``_0000`` (reference §1.3)."""
    for entry in msd.get("training", []):
        image = entry.get("image") if isinstance(entry, dict) else None
        if isinstance(image, str):
            stem = Path(image).name[: -len(_MSD_ENDING)]
            if (src / "imagesTr" / Path(image).name).is_file():
                return False
            return (src / "imagesTr" / f"{stem}_0000{_MSD_ENDING}").is_file()
    return False


def msd_to_v2_json(msd: dict, num_training: int, source: Path) -> dict:
    """The v2 dataset.json for an MSD dataset.json (reference §1.3).

    ``channel_names`` = ``modality``; ``labels`` inverted to name → int (label 0 named ``background``);
    ``file_ending`` ``.nii.gz``; ``numTraining`` kept (``num_training`` if absent); ``training``/``test``
    dropped; other descriptive keys kept.
    """
    labels: dict[str, int] = {}
    for k, name in sorted(msd["labels"].items(), key=lambda kv: int(kv[0])):
        value = int(k)
        if value == 0 and name != "background":
            log.info("%s: label 0 is named '%s'; nnU-Net v2 requires 'background'", source, name)
            name = "background"
        if name in labels:
            raise DatasetError(source, f"label name '{name}' is used for both {labels[name]} and {value}",
                               "give every label a unique name in dataset.json")
        labels[name] = value
    out = {"channel_names": dict(msd["modality"]), "labels": labels,
           "numTraining": msd.get("numTraining", num_training), "file_ending": _MSD_ENDING}
    out.update({k: v for k, v in msd.items() if k not in ("modality", "labels", "training", "test") and k not in out})
    return validate_dataset_json(out, source)


def convert_msd_dataset(src: Path, raw_root: Path, dataset_id: int | None = None, num_processes: int = 2,
                        name: str | None = None) -> Path:
    """Convert an MSD/v1 dataset folder into ``raw_root/DatasetXXX_Name`` (v2 layout; reference §1.3).

    Parameters
    ----------
    src : the MSD folder, e.g. ``Task04_Hippocampus`` (dataset.json, imagesTr/, labelsTr/, optional imagesTs/).
    raw_root : the raw root (``pnnunet_raw``).
    dataset_id : the id XXX; default: from the ``TaskXXX_``/``DatasetXXX_`` prefix, else the lowest free
        id ≥ 500. ``Name`` is the rest of the folder name.
    num_processes : worker processes for splitting/copying.
    name : the ``Name`` part of the target folder (default: from the folder name, see ``_prepare``).

    Returns
    -------
    Path : the converted folder (reused if this source was converted before).

    Raises
    ------
    DatasetError : not an MSD folder, id taken by another dataset, unreadable files, labels that are
        not integers.
    """
    src = Path(src).expanduser().resolve()
    raw_root = Path(raw_root).expanduser().absolute()
    if not src.is_dir():
        raise DatasetError(src, "folder not found", "pass an existing MSD dataset folder")
    for sub in ("imagesTr", "labelsTr"):
        if not (src / sub).is_dir():
            raise DatasetError(src / sub, f"{sub} folder not found", "an MSD folder has imagesTr/, labelsTr/ "
                               "and dataset.json")
    msd = read_json_file(src / "dataset.json", "an MSD folder has imagesTr/, labelsTr/ and dataset.json")
    if not is_msd_dataset_json(msd):
        raise DatasetError(src / "dataset.json", "is not an MSD/v1 dataset.json (needs 'modality', 'labels' "
                           "int → name and 'training')", "for a v2 dataset folder use import_dataset_folder")
    train_images = _listed(src / "imagesTr")
    if not train_images:
        raise DatasetError(src / "imagesTr", "no .nii.gz images found", "an MSD folder has its images in imagesTr/")
    presplit = _is_presplit(src, msd)
    n_train = len({p.name[: -len("_0000.nii.gz")] for p in train_images}) if presplit else len(train_images)
    v2 = msd_to_v2_json(msd, n_train, src / "dataset.json")
    existing, target = _prepare(src, raw_root, dataset_id, msd.get("name"), name)
    if existing is not None:
        return existing

    tmp = _tmp_folder(raw_root, target)
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        # the optional test/validation folders are carried over too when the source has them (as upstream does)
        extra_labels = [sub for sub in ("labelsTs", "labelsVal") if (src / sub).is_dir()]
        extra_images = ["imagesVal"] if (src / "imagesVal").is_dir() else []
        for sub in extra_labels + extra_images:
            (tmp / sub).mkdir()
        kind = "copy" if presplit else "image"
        jobs: list[Job] = [(kind, str(p), str(tmp / "imagesTr" / p.name) if presplit else str(tmp / "imagesTr"))
                           for p in train_images]
        for sub in ["imagesTs"] + extra_images:
            jobs += [(kind, str(p), str(tmp / sub / p.name) if presplit else str(tmp / sub))
                     for p in _listed(src / sub)]
        for sub in ["labelsTr"] + extra_labels:
            jobs += [("label", str(p), str(tmp / sub / p.name)) for p in _listed(src / sub)]
        _run_jobs(jobs, num_processes, what=f"conversion of {src.name}")
        write_json_atomic(tmp / "dataset.json", v2)
        write_json_atomic(tmp / MARKER, _marker(src, "msd"))
    except BaseException:  # also on Ctrl-C: remove the half-converted folder, then re-raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    target = _publish(tmp, target, src)
    log.info("converted %s to %s (%d training cases)", src, target, n_train)
    return target


def convert_old_nnunet_dataset(src: Path, raw_root: Path, target_name: str, num_processes: int = 2) -> Path:
    """An nnU-Net v1 ``TaskXXX_Name`` folder (v1 dataset.json) → ``raw_root/<target_name>`` (upstream's
    ``nnUNetv2_convert_old_nnUNet_dataset``): :func:`convert_msd_dataset` with the id and name taken from
    ``target_name``, which must follow the ``DatasetXXX_Name`` convention."""
    m = DATASET_FOLDER.fullmatch(target_name)
    if m is None or _sanitize(m["name"]) != m["name"]:
        raise DatasetError(target_name, "is not a dataset name of the form DatasetXXX_Name (three digits, a name of "
                                        "letters, digits, '_' or '-')",
                           "give the new dataset's NAME (not a path), e.g. Dataset004_Hippocampus")
    return convert_msd_dataset(src, raw_root, dataset_id=int(m["id"]), num_processes=num_processes, name=m["name"])


# ---------------------------------------------------------------- v2 import


def _rewrite_dataset_paths(dj: dict, src: Path) -> dict:
    """Make ``dataset`` entries that point outside ``src`` absolute, so they survive the copy."""
    if not isinstance(dj.get("dataset"), dict):
        return dj

    def fix(p: str) -> str:
        if not isinstance(p, str) or "$" in p or Path(p).expanduser().is_absolute():
            return p
        full = (src / p).resolve()
        return p if full.is_relative_to(src) else str(full)

    dj = dict(dj)
    dj["dataset"] = {k: {**e, "images": [fix(i) for i in e.get("images", [])], "label": fix(e.get("label"))}
                     if isinstance(e, dict) else e for k, e in dj["dataset"].items()}
    return dj


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy the files under ``src`` into the existing folder ``dst``, without copying permission bits
    (a read-only source must not give a read-only copy); our marker and temporary folders are skipped."""
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if not d.startswith(".tmp-")]
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in filenames:
            if rel == Path(".") and f == MARKER:
                continue
            shutil.copyfile(Path(dirpath) / f, dst / rel / f)


def import_dataset_folder(src: Path, raw_root: Path, dataset_id: int | None = None) -> Path:
    """Copy a v2-layout dataset folder from outside raw into ``raw_root/DatasetXXX_Name``.

    Parameters
    ----------
    src : a folder with a v2 dataset.json (``channel_names``, ``labels``, ``numTraining``, ``file_ending``).
    raw_root : the raw root.
    dataset_id : the id XXX; default: from a ``DatasetXXX_`` prefix, else the lowest free id ≥ 500.
        An explicit id wins over the prefix (so ``--id N`` resolves a clash).

    Returns
    -------
    Path : the folder in raw (reused if this source was imported before). ``Name`` is the rest of a
        ``DatasetXXX_`` folder name, else dataset.json ``name``, else the folder name.
    """
    src = Path(src).expanduser().resolve()
    raw_root = Path(raw_root).expanduser().absolute()
    if not src.is_dir():
        raise DatasetError(src, "folder not found", "pass an existing dataset folder")
    if src.parent == raw_root.resolve() and DATASET_FOLDER.fullmatch(src.name):
        return raw_root / src.name  # already in raw
    dj = load_dataset_json(src / "dataset.json")
    existing, target = _prepare(src, raw_root, dataset_id, dj.get("name"))
    if existing is not None:
        return existing
    tmp = _tmp_folder(raw_root, target)
    try:
        _copy_tree(src, tmp)
        raw_dj = json.loads((src / "dataset.json").read_text())
        fixed = _rewrite_dataset_paths(raw_dj, src)
        if fixed is not raw_dj:
            write_json_atomic(tmp / "dataset.json", fixed)
        write_json_atomic(tmp / MARKER, _marker(src, "v2"))
    except BaseException:  # also on Ctrl-C: remove the half-converted folder, then re-raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    target = _publish(tmp, target, src)
    log.info("imported %s as %s", src, target)
    return target
