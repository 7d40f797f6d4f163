"""Upstream nnU-Net v2's ``CASE.pkl`` properties files, read without running arbitrary code (§4.7).

Upstream pickles one dict per preprocessed case (``write_pickle``). A pickle can name any Python
callable and have it called while loading, so :func:`load_upstream_properties` uses an unpickler
that resolves exactly the numpy globals such files need — ``numpy.dtype``, ``numpy.ndarray``,
``numpy._core.multiarray._reconstruct`` and ``.scalar`` (``numpy.core.multiarray`` in files written
by numpy 1.x) — and refuses every other global with a :class:`PnnunetError` before anything of it
is called. The dict is then converted into pnnunet's properties: plain JSON types, and
``class_locations`` as ``{label or region tuple: int64 (k, 4) array}``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pnnunet.errors import PnnunetError
from pnnunet.safe_pickle import NUMPY_ARRAY_GLOBALS, AllowListUnpickler, Refused

REQUIRED_KEYS = ("spacing", "shape_before_cropping", "bbox_used_for_cropping",
                 "shape_after_cropping_and_before_resampling")
LOCATIONS_KEY = "class_locations"


def _refusal(path: Path):
    def refuse(what: str) -> PnnunetError:
        return PnnunetError(
            f"{path}: refers to {what}, which an nnU-Net properties file never needs, so it was not loaded "
            "(nothing in it was run); the file is not from nnU-Net's preprocessing or was tampered with\n"
            "  fix: preprocess the dataset again (pnnunet_plan_and_preprocess) instead of using this folder")
    return refuse


def _plain(value):
    """numpy scalars/arrays and tuples → plain JSON-like Python values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _location_key(key, path: Path):
    if isinstance(key, (tuple, list)):
        return tuple(int(k) for k in key)
    if isinstance(key, (int, np.integer)):
        return int(key)
    raise PnnunetError(f"{path}: class_locations has the key {key!r}, expected a label (int) or a region (tuple)\n"
                       "  fix: preprocess the dataset again (pnnunet_plan_and_preprocess)")


def convert_upstream_properties(props: dict, path: Path | str) -> dict:
    """Upstream's property dict → pnnunet's (plain types; ``class_locations`` int64 (k, 4) arrays)."""
    path = Path(path)
    if not isinstance(props, dict):
        raise PnnunetError(f"{path}: holds a {type(props).__name__}, expected the dict of case properties\n"
                           "  fix: preprocess the dataset again (pnnunet_plan_and_preprocess)")
    missing = [k for k in REQUIRED_KEYS if k not in props]
    if missing:
        raise PnnunetError(f"{path}: misses the properties {missing}\n"
                           "  fix: preprocess the dataset again (pnnunet_plan_and_preprocess)")
    out = _plain({k: v for k, v in props.items() if k != LOCATIONS_KEY})
    locations = props.get(LOCATIONS_KEY) or {}
    if not isinstance(locations, dict):
        raise PnnunetError(f"{path}: class_locations is a {type(locations).__name__}, expected a dict\n"
                           "  fix: preprocess the dataset again (pnnunet_plan_and_preprocess)")
    converted = {}
    for key, value in locations.items():
        arr = np.asarray(value, dtype=np.int64)
        if arr.size and (arr.ndim != 2 or arr.shape[1] != 4):
            raise PnnunetError(f"{path}: class_locations[{key!r}] has shape {arr.shape}, expected (k, 4)\n"
                               "  fix: preprocess the dataset again (pnnunet_plan_and_preprocess)")
        converted[_location_key(key, path)] = arr.reshape(-1, 4)
    out[LOCATIONS_KEY] = converted
    return out


def load_upstream_properties(path: Path | str) -> dict:
    """Read an upstream ``CASE.pkl`` with the restricted unpickler and convert it (see module doc)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            props = AllowListUnpickler(f, NUMPY_ARRAY_GLOBALS, _refusal(path)).load()
    except PnnunetError:
        raise
    except Refused as e:  # an object or structured numpy dtype, an array of another class
        raise _refusal(path)(str(e)) from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, KeyError, IndexError, OverflowError,
            UnicodeDecodeError, AttributeError, TypeError) as e:  # unreadable, truncated or not a pickle of plain values
        raise PnnunetError(f"{path}: cannot be read as nnU-Net case properties ({type(e).__name__}: {e})\n"
                           "  fix: preprocess the dataset again (pnnunet_plan_and_preprocess)") from None
    return convert_upstream_properties(props, path)
