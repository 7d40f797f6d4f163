"""Preprocessed cases on disk (reference §4.7): compressed, chunked Blosc2 arrays, read patch by patch.

Per case, in one folder (pnnunet writes):

- ``{CASE}.b2nd``: float32 (C, X, Y, Z) image data, a Blosc2 NDArray (lossless LZ4HC level 5,
  chunks and blocks chosen for the configuration's patch size, :mod:`.chunking`)
- ``{CASE}_seg.b2nd``: int16 (1, X, Y, Z) label map (-1 outside the non-zero mask), likewise
- ``{CASE}_locations.npz``: class locations, one int64 (k, 4) array per class, stored under
  ``str(label)`` / ``str(tuple)`` (no pickles)
- ``{CASE}.json``: the remaining properties; written last, so its presence marks a finished case

With ``storage="npy"`` the two arrays are plain ``{CASE}.npy`` / ``{CASE}_seg.npy`` instead (the
format of pnnunet before Blosc2, still read: uncompressed, memory-mapped, about 7x the disk of a CT).

Also read: upstream nnU-Net v2's folders, ``{CASE}.b2nd`` + ``{CASE}_seg.b2nd`` + ``{CASE}.pkl``
(the pickle through a restricted unpickler, :mod:`.upstream_properties`). The format of each
case is detected from the files present.

A folder can hold a pointer instead of cases (:data:`SHARED_POINTER`): a configuration whose
preprocessing is identical to another's reads that configuration's cases (see
:func:`case_folder`).

DEVIATION(nnU-Net §4.7): properties are JSON + ``.npz`` instead of a pickle (upstream's ``.pkl``
is read, never written).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import blosc2
import numpy as np

from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path, load_json, save_npy_atomic, write_json_atomic
from pnnunet.preprocessing.chunking import blosc2_blocks_and_chunks
from pnnunet.preprocessing.upstream_properties import LOCATIONS_KEY, load_upstream_properties

STORAGE_FORMATS = ("b2nd", "npy")
DEFAULT_STORAGE = "b2nd"
SHARED_POINTER = "cases_shared_with.json"
CLEVEL = 5
# threads per compression; 1 makes the bytes reproducible (upstream's 4 threads do not, see the fixture README)
COMPRESSION_THREADS = 1
_FIX_REPREPROCESS = "rerun pnnunet_plan_and_preprocess for this configuration with --clean"


@dataclass(frozen=True)
class StoredCase:
    """The files of one finished case as found on disk."""

    data: Path
    seg: Path
    properties: Path  # .json (pnnunet) or .pkl (upstream)
    locations: Path | None  # pnnunet's .npz (None for upstream: the locations are in the .pkl)

    @property
    def is_upstream(self) -> bool:
        return self.properties.suffix == ".pkl"


def case_files(folder: Path | str, case: str, storage: str = DEFAULT_STORAGE) -> dict[str, Path]:
    """Paths pnnunet writes for ``case`` in ``folder`` (``storage``: 'b2nd' or 'npy')."""
    folder = Path(folder)
    return {"data": folder / f"{case}.{storage}", "seg": folder / f"{case}_seg.{storage}",
            "locations": folder / f"{case}_locations.npz", "properties": folder / f"{case}.json"}


# ---------------------------------------------------------------- shared folders

def write_shared_pointer(folder: Path | str, owner_identifier: str, marker: dict) -> None:
    """Make ``folder`` read its cases from the sibling folder ``owner_identifier`` (same preprocessing).

    ``marker`` is the owner's ``preprocessing_config.json`` content minus the data identifier; the
    reader checks it so that a changed or deleted owner is an error, not silently other data.
    """
    write_json_atomic(Path(folder) / SHARED_POINTER, {"data_identifier": owner_identifier, "marker": marker})


def marker_without_identifier(marker: dict) -> dict:
    config = {k: v for k, v in marker.get("configuration", {}).items() if k != "data_identifier"}
    return {**marker, "configuration": config}


def case_folder(folder: Path | str, marker_name: str = "preprocessing_config.json") -> Path:
    """The folder that holds the cases of ``folder``: itself, or the owner its pointer names.

    Raises a PnnunetError when the owner is gone or was preprocessed differently since.
    """
    folder = Path(folder)
    pointer = folder / SHARED_POINTER
    if not pointer.is_file():
        return folder
    fix = f"rerun pnnunet_plan_and_preprocess for the configuration of {folder.name}"
    try:
        info = load_json(pointer)
        owner = folder.parent / str(info["data_identifier"])
        expected = info["marker"]
    except (ValueError, KeyError, TypeError) as e:
        raise PnnunetError(f"{pointer}: is damaged ({type(e).__name__}: {e})\n  fix: {fix}") from None
    if not owner.is_dir():
        raise PnnunetError(f"{folder}: its cases are shared with {owner}, which no longer exists\n  fix: {fix}")
    owner_marker = owner / marker_name
    if not owner_marker.is_file() or marker_without_identifier(load_json(owner_marker)) != expected:
        raise PnnunetError(f"{folder}: its cases are shared with {owner}, which was since preprocessed with other "
                           f"settings\n  fix: {fix}")
    return owner


# ---------------------------------------------------------------- arrays

def _cparams(filter_, typesize: int) -> blosc2.CParams:
    return blosc2.CParams(codec=blosc2.Codec.LZ4HC, clevel=CLEVEL, filters=[filter_], typesize=typesize,
                          nthreads=COMPRESSION_THREADS)


def select_filter(array: np.ndarray, chunks: Sequence[int], blocks: Sequence[int]) -> blosc2.Filter:
    """SHUFFLE or NOFILTER, whichever compresses a centred slab of one chunk smaller (ties: NOFILTER)."""
    starts = [(s - min(c, s)) // 2 for s, c in zip(array.shape, chunks)]
    slab = np.ascontiguousarray(array[tuple(slice(a, a + min(c, s)) for a, c, s in zip(starts, chunks, array.shape))])
    if slab.size == 0:
        return blosc2.Filter.NOFILTER
    slab_blocks = tuple(min(b, s) for b, s in zip(blocks, slab.shape))
    sizes = {}
    try:
        for f in (blosc2.Filter.NOFILTER, blosc2.Filter.SHUFFLE):
            sizes[f] = blosc2.asarray(slab, chunks=slab.shape, blocks=slab_blocks,
                                      cparams=_cparams(f, array.itemsize)).schunk.cbytes
    except (ValueError, RuntimeError):  # a trial that cannot compress decides nothing
        return blosc2.Filter.NOFILTER
    return blosc2.Filter.SHUFFLE if sizes[blosc2.Filter.SHUFFLE] < sizes[blosc2.Filter.NOFILTER] else \
        blosc2.Filter.NOFILTER


def save_b2nd_atomic(path: Path | str, array: np.ndarray, patch_size: Sequence[int] | None) -> None:
    """Write ``array`` (C, X, Y, Z) as a Blosc2 ``.b2nd`` with chunks/blocks for ``patch_size``, atomically."""
    array = np.ascontiguousarray(array)
    blocks, chunks = blosc2_blocks_and_chunks(array.shape, patch_size, array.itemsize)
    cparams = _cparams(select_filter(array, chunks, blocks), array.itemsize)
    with atomic_path(path) as tmp:
        blosc2.asarray(array, urlpath=str(tmp), mode="w", chunks=chunks, blocks=blocks, cparams=cparams)


def open_array(path: Path | str, mmap: bool = True):
    """A stored ``.npy`` / ``.b2nd`` array.

    ``mmap``: a lazy read-only array (``np.memmap`` or ``blosc2.NDArray``; slicing either returns a
    numpy array and reads / decompresses only what the slice covers); else a numpy array in memory.
    """
    path = Path(path)
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if mmap:
            kwargs = {"mmap_mode": "r"} if os.name != "nt" else {}
            return blosc2.open(str(path), mode="r", dparams={"nthreads": 1}, **kwargs)
        return blosc2.open(str(path), mode="r")[...]
    except FileNotFoundError:
        raise PnnunetError(f"{path}: not found\n  fix: {_FIX_REPREPROCESS}") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise PnnunetError(f"{path}: cannot be read ({type(e).__name__}: {e}); the file is damaged or incomplete"
                           f"\n  fix: {_FIX_REPREPROCESS}") from None


def find_array(folder: Path | str, name: str) -> Path | None:
    """``{folder}/{name}.b2nd`` or, else, ``{name}.npy`` if present."""
    for fmt in STORAGE_FORMATS:
        p = Path(folder) / f"{name}.{fmt}"
        if p.is_file():
            return p
    return None


def save_array(folder: Path | str, name: str, array: np.ndarray, patch_size: Sequence[int] | None = None,
               storage: str = DEFAULT_STORAGE) -> Path:
    """Write ``{folder}/{name}.{storage}`` atomically and remove a copy in the other format.

    ``array`` has a leading channel axis or is a 3D label map (stored as is; chunked as (1, X, Y, Z)).
    """
    _check_storage(storage)
    path = Path(folder) / f"{name}.{storage}"
    if storage == "npy":
        save_npy_atomic(path, array)
    elif array.ndim == 3:
        array = np.ascontiguousarray(array)
        blocks, chunks = blosc2_blocks_and_chunks((1, *array.shape), patch_size, array.itemsize)
        cparams = _cparams(select_filter(array, chunks[1:], blocks[1:]), array.itemsize)
        with atomic_path(path) as tmp:
            blosc2.asarray(array, urlpath=str(tmp), mode="w", chunks=chunks[1:], blocks=blocks[1:], cparams=cparams)
    else:
        save_b2nd_atomic(path, array, patch_size)
    for other in STORAGE_FORMATS:
        if other != storage:
            (Path(folder) / f"{name}.{other}").unlink(missing_ok=True)
    return path


def _check_storage(storage: str) -> None:
    if storage not in STORAGE_FORMATS:
        raise PnnunetError(f"unknown storage format '{storage}'\n  fix: use one of {list(STORAGE_FORMATS)}")


# ---------------------------------------------------------------- cases

def _locations_to_arrays(locations: dict) -> dict[str, np.ndarray]:
    return {str(k): np.asarray(v, dtype=np.int64).reshape(-1, 4) for k, v in locations.items()}


def _parse_key(key: str):
    value = ast.literal_eval(key)
    return tuple(int(v) for v in value) if isinstance(value, tuple) else int(value)


def save_preprocessed_case(folder: Path | str, case: str, data: np.ndarray, seg: np.ndarray,
                           properties: dict, patch_size: Sequence[int] | None = None,
                           storage: str = DEFAULT_STORAGE) -> None:
    """Write one preprocessed case atomically; the ``.json`` comes last as the completion marker.

    Parameters
    ----------
    data : (C, X, Y, Z), saved as float32
    seg : (1, X, Y, Z), saved as int16
    properties : JSON-serializable apart from ``class_locations`` (dict of (k, 4) int arrays with
        int or tuple keys), which goes to ``{CASE}_locations.npz``
    patch_size : the configuration's patch (chooses the Blosc2 chunks); None: (128, 128, 128)
    storage : 'b2nd' (default) or 'npy'; a copy of the case in the other format is removed
    """
    _check_storage(storage)
    files = case_files(folder, case, storage)
    files["properties"].unlink(missing_ok=True)  # an old marker must not outlive the files it vouches for
    Path(folder, f"{case}.pkl").unlink(missing_ok=True)
    save_array(folder, case, np.asarray(data, dtype=np.float32), patch_size, storage)
    save_array(folder, f"{case}_seg", np.asarray(seg, dtype=np.int16), patch_size, storage)
    props = {k: v for k, v in properties.items() if k != LOCATIONS_KEY}
    if LOCATIONS_KEY in properties:
        arrays = _locations_to_arrays(properties[LOCATIONS_KEY])
        with atomic_path(files["locations"]) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # the zip keeps the class order
    else:
        files["locations"].unlink(missing_ok=True)
    write_json_atomic(files["properties"], props)


def locate_case(folder: Path | str, case: str) -> StoredCase | None:
    """The files of a finished case in ``folder`` (pnnunet's ``.json`` or upstream's ``.pkl``), or None."""
    folder = Path(folder)
    data, seg = find_array(folder, case), find_array(folder, f"{case}_seg")
    if data is None or seg is None:
        return None
    js, pkl = folder / f"{case}.json", folder / f"{case}.pkl"
    if js.is_file():
        return StoredCase(data, seg, js, folder / f"{case}_locations.npz")
    if pkl.is_file() and data.suffix == ".b2nd":
        return StoredCase(data, seg, pkl, None)
    return None


def is_case_done(folder: Path | str, case: str) -> bool:
    """True if the case's completion marker (``.json``, upstream ``.pkl``) and its arrays exist."""
    return locate_case(folder, case) is not None


def list_cases(folder: Path | str) -> list[str]:
    """Sorted identifiers of the finished cases in ``folder`` (following a shared-cases pointer)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    folder = case_folder(folder)
    stems = {p.stem for pattern in ("*.json", "*.pkl") for p in folder.glob(pattern)}
    return sorted(c for c in stems if is_case_done(folder, c))


def _require_case(folder: Path | str, case: str) -> StoredCase:
    found = locate_case(folder, case)
    if found is None:
        raise PnnunetError(f"{folder}: case {case} is not (completely) preprocessed: {case}.json (or .pkl), "
                           f"{case}.b2nd (or .npy) and {case}_seg.b2nd (or .npy) are needed\n  fix: rerun "
                           "pnnunet_plan_and_preprocess for this configuration")
    return found


def load_class_locations(folder: Path | str, case: str) -> dict:
    """Class locations of a case: ``{label or tuple: int64 (k, 4) array}`` in the stored class order."""
    folder = case_folder(folder)
    found = _require_case(folder, case)
    if found.is_upstream:
        return load_upstream_properties(found.properties)[LOCATIONS_KEY]
    if not found.locations.is_file():
        return {}
    with np.load(found.locations, allow_pickle=False) as z:
        return {_parse_key(k): z[k] for k in z.files}


def load_case_properties(folder: Path | str, case: str) -> dict:
    """Properties of a case, ``class_locations`` included (if it has any)."""
    folder = case_folder(folder)
    found = _require_case(folder, case)
    if found.is_upstream:
        return load_upstream_properties(found.properties)
    props = load_json(found.properties)
    if found.locations.is_file():
        props[LOCATIONS_KEY] = load_class_locations(folder, case)
    return props


def case_done_time(folder: Path | str, case: str) -> float | None:
    """Modification time of the case's completion marker, None if the case is not finished."""
    found = locate_case(folder, case)
    return None if found is None else found.properties.stat().st_mtime


def preprocessed_case_shape(folder: Path | str, case: str) -> tuple[int, ...] | None:
    """``(C, X, Y, Z)`` of a finished case (reads only the array header), None if not preprocessed."""
    folder = case_folder(folder)
    found = locate_case(folder, case)
    return None if found is None else tuple(int(s) for s in open_array(found.data, mmap=True).shape)


def load_preprocessed_case(folder: Path | str, case: str, mmap: bool = True):
    """Load a finished case (pnnunet ``.b2nd`` / ``.npy`` + ``.json``, or upstream ``.b2nd`` + ``.pkl``).

    Returns
    -------
    data : float32 (C, X, Y, Z); with ``mmap`` a lazy read-only array (``np.memmap`` or
        ``blosc2.NDArray``: slicing reads only the chunks the slice covers), else a numpy array
    seg : int16 (1, X, Y, Z), likewise
    properties : dict including ``class_locations`` (if the case has any)
    """
    folder = case_folder(folder)
    found = _require_case(folder, case)
    return open_array(found.data, mmap), open_array(found.seg, mmap), load_case_properties(folder, case)
