"""Turn the ``-d`` argument into a dataset folder name (DESIGN "Datasets" contract).

Accepted: ``4``, ``004``, ``Dataset004``, ``Dataset004_Hippocampus``, a unique name (``Hippocampus``,
case-insensitive), or a folder: an MSD/v1 folder is converted into raw, a v2 folder outside raw is
copied into raw, a folder already in raw is used as it is. Without ``-d`` the only dataset present
is used.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path

from pnnunet.dataset.msd import convert_msd_dataset, dataset_folders, import_dataset_folder, is_msd_folder
from pnnunet.defaults import DATASET_FOLDER
from pnnunet.errors import PnnunetError

log = logging.getLogger(__name__)

_ID = re.compile(r"(?:Dataset)?(?P<id>\d{1,3})")


def available_datasets(raw_root: Path | None, preprocessed_root: Path | None = None) -> list[str]:
    """Sorted names of the ``DatasetXXX_Name`` folders in raw and preprocessed."""
    names = {p.name for root in (raw_root, preprocessed_root) if root is not None for p in dataset_folders(root)}
    return sorted(names)


def _where(raw_root: Path, preprocessed_root: Path | None) -> str:
    return str(raw_root) + (f" and {preprocessed_root}" if preprocessed_root is not None else "")


def _listing(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.startswith((".", "~"))


def _by_name(spec: str, names: list[str]) -> list[str]:
    """Datasets matching an id/name form of ``spec`` (empty if none)."""
    s = spec.strip()
    if m := _ID.fullmatch(s):
        return [n for n in names if int(n[7:10]) == int(m["id"])]
    if s in names:
        return [s]
    low = s.casefold()
    return [n for n in names if DATASET_FOLDER.fullmatch(n)["name"].casefold() == low or n.casefold() == low]


def _from_folder(folder: Path, raw_root: Path, preprocessed_root: Path | None, dataset_id: int | None,
                 num_processes: int) -> str:
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise PnnunetError(f"{folder}: folder not found")
    roots = [Path(r).expanduser().resolve() for r in (raw_root, preprocessed_root) if r is not None]
    if folder.parent in roots and DATASET_FOLDER.fullmatch(folder.name):
        return folder.name
    if is_msd_folder(folder):
        return convert_msd_dataset(folder, raw_root, dataset_id, num_processes).name
    if (folder / "dataset.json").is_file():
        return import_dataset_folder(folder, raw_root, dataset_id).name
    raise PnnunetError(f"{folder}: not a dataset folder (no dataset.json)\n"
                       "  fix: pass a folder with dataset.json, imagesTr/ and labelsTr/ (v2 or MSD layout), "
                       "a dataset id or a dataset name")


def resolve_dataset(spec: str | None, raw_root: Path, preprocessed_root: Path | None = None,
                    dataset_id: int | None = None, *, num_processes: int = 2, import_folders: bool = True) -> str:
    """The dataset folder name (e.g. ``Dataset004_Hippocampus``) that ``spec`` refers to.

    Parameters
    ----------
    spec : ``-d``: an id (``4``, ``004``, ``Dataset004``), a full name, a unique name, a folder, or None.
    raw_root, preprocessed_root : where ``DatasetXXX_Name`` folders are looked up (preprocessed optional).
    dataset_id : ``--id N`` for a folder that has to be converted/copied into raw.
    num_processes : worker processes for an MSD conversion.
    import_folders : False where ``raw_root`` is not a raw-data root (e.g. the results root of a model
        export): a folder is accepted only if it is one of ``raw_root``'s datasets, never copied or converted.

    Raises
    ------
    PnnunetError : no or several datasets match (the message lists the available ones and a
        "did you mean"), ``spec`` is None but there is not exactly one dataset.
    """
    names = available_datasets(raw_root, preprocessed_root)
    where = _where(raw_root, preprocessed_root)
    if spec is None:
        if len(names) == 1:
            log.info("no dataset given: using the only one, %s", names[0])
            return names[0]
        raise PnnunetError(f"no dataset given (-d) and {'no' if not names else len(names)} datasets found in "
                           f"{where}; available: {_listing(names)}\n"
                           "  fix: pass -d with a dataset id, name or folder")
    spec = str(spec).strip()
    if not _looks_like_path(spec):
        matches = _by_name(spec, names)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise PnnunetError(f"dataset '{spec}' is ambiguous: {', '.join(matches)}\n"
                               "  fix: pass the full name DatasetXXX_Name (or remove the duplicate folders)")
    if Path(spec).expanduser().is_dir() and not import_folders:
        folder = Path(spec).expanduser().resolve()
        if folder.parent == Path(raw_root).expanduser().resolve() and folder.name in names:
            return folder.name
        raise PnnunetError(f"{spec}: not a dataset folder of {where}\n  fix: pass -d with the id or name of a "
                           f"dataset in {where}; available: {_listing(names)}")
    if Path(spec).expanduser().is_dir():
        return _from_folder(Path(spec), raw_root, preprocessed_root, dataset_id, num_processes)
    short = {DATASET_FOLDER.fullmatch(n)["name"]: n for n in names}
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.6)
    close += [short[s] for s in difflib.get_close_matches(spec, list(short), n=3, cutoff=0.6) if short[s] not in close]
    hint = f" Did you mean {' or '.join(close[:3])}?" if close else ""
    raise PnnunetError(f"dataset '{spec}' not found in {where}.{hint} Available: {_listing(names)}\n"
                       "  fix: pass a dataset id, a DatasetXXX_Name, a unique name or a dataset folder")
