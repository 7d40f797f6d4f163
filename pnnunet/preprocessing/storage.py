"""Preprocessed cases on disk (reference §4.7; pnnunet's own format, readable by memory map).

Per case, in one folder:

- ``{CASE}.npy``: float32 (C, X, Y, Z) image data
- ``{CASE}_seg.npy``: int16 (1, X, Y, Z) label map (-1 outside the non-zero mask)
- ``{CASE}_locations.npz``: class locations, one int64 (k, 4) array per class, stored under
  ``str(label)`` / ``str(tuple)`` (no pickles)
- ``{CASE}.json``: the remaining properties; written last, so its presence marks a finished case

DEVIATION(nnU-Net §4.7): upstream stores Blosc2 ``.b2nd`` files and a pickled ``.pkl``; pnnunet
stores plain ``.npy`` (memory-mappable without unpacking) and JSON, never pickles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from pnnunet.fileio import atomic_path, load_json, save_npy_atomic, write_json_atomic

LOCATIONS_KEY = "class_locations"


def case_files(folder: Path | str, case: str) -> dict[str, Path]:
    """Paths of the four files of ``case`` in ``folder``."""
    folder = Path(folder)
    return {"data": folder / f"{case}.npy", "seg": folder / f"{case}_seg.npy",
            "locations": folder / f"{case}_locations.npz", "properties": folder / f"{case}.json"}


def _locations_to_arrays(locations: dict) -> dict[str, np.ndarray]:
    return {str(k): np.asarray(v, dtype=np.int64).reshape(-1, 4) for k, v in locations.items()}


def _parse_key(key: str):
    value = ast.literal_eval(key)
    return tuple(int(v) for v in value) if isinstance(value, tuple) else int(value)


def save_preprocessed_case(folder: Path | str, case: str, data: np.ndarray, seg: np.ndarray,
                           properties: dict) -> None:
    """Write one preprocessed case atomically; the ``.json`` comes last as the completion marker.

    Parameters
    ----------
    data : (C, X, Y, Z), saved as float32
    seg : (1, X, Y, Z), saved as int16
    properties : JSON-serializable apart from ``class_locations`` (dict of (k, 4) int arrays with
        int or tuple keys), which goes to ``{CASE}_locations.npz``
    """
    files = case_files(folder, case)
    files["properties"].unlink(missing_ok=True)  # an old marker must not outlive the files it vouches for
    save_npy_atomic(files["data"], np.asarray(data, dtype=np.float32))
    save_npy_atomic(files["seg"], np.asarray(seg, dtype=np.int16))
    props = {k: v for k, v in properties.items() if k != LOCATIONS_KEY}
    if LOCATIONS_KEY in properties:
        arrays = _locations_to_arrays(properties[LOCATIONS_KEY])
        with atomic_path(files["locations"]) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # the zip keeps the class order
    else:
        files["locations"].unlink(missing_ok=True)
    write_json_atomic(files["properties"], props)


def is_case_done(folder: Path | str, case: str) -> bool:
    """True if the case's completion marker (``.json``) and its arrays exist."""
    files = case_files(folder, case)
    return files["properties"].is_file() and files["data"].is_file() and files["seg"].is_file()


def list_cases(folder: Path | str) -> list[str]:
    """Sorted identifiers of the finished cases in ``folder`` (see :func:`is_case_done`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if is_case_done(folder, p.stem))


def load_class_locations(folder: Path | str, case: str) -> dict:
    """Class locations of a case: ``{label or tuple: int64 (k, 4) array}`` in the stored class order."""
    files = case_files(folder, case)
    if not files["locations"].is_file():
        return {}
    with np.load(files["locations"], allow_pickle=False) as z:
        return {_parse_key(k): z[k] for k in z.files}


def load_preprocessed_case(folder: Path | str, case: str, mmap: bool = True
                           ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load a case written by :func:`save_preprocessed_case`.

    Returns
    -------
    data : float32 (C, X, Y, Z), read-only memory map when ``mmap``
    seg : int16 (1, X, Y, Z), likewise
    properties : dict including ``class_locations`` (if the case has any)
    """
    files = case_files(folder, case)
    mode = "r" if mmap else None
    data = np.load(files["data"], mmap_mode=mode, allow_pickle=False)
    seg = np.load(files["seg"], mmap_mode=mode, allow_pickle=False)
    props = load_json(files["properties"])
    if files["locations"].is_file():
        props[LOCATIONS_KEY] = load_class_locations(folder, case)
    return data, seg, props


def preprocessed_case_shape(folder: Path | str, case: str) -> tuple[int, ...]:
    """``(C, X, Y, Z)`` of a stored case's image, from the file header (no data read)."""
    return tuple(int(s) for s in np.load(case_files(folder, case)["data"], mmap_mode="r", allow_pickle=False).shape)
