"""Read and validate a raw dataset's ``dataset.json`` (reference §1.2, v1/MSD: §1.3).

A v2 dataset.json needs ``channel_names``, ``labels`` (name → int, or name → list of ints for a
region), ``numTraining`` and ``file_ending``. The legacy key ``modality`` is accepted in place of
``channel_names`` (upstream does the same) and copied into ``channel_names``. Everything else is
kept unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import DatasetError
from pnnunet.fileio import read_json_file

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")

_EXAMPLE = ('{"channel_names": {"0": "MRI"}, "labels": {"background": 0, "tumour": 1}, '
            '"numTraining": 20, "file_ending": ".nii.gz"}')


def load_dataset_json(path: Path) -> dict:
    """Read ``path`` and validate it as a v2 dataset.json (reference §1.2).

    Parameters
    ----------
    path : the dataset.json file.

    Returns
    -------
    dict : the parsed content; ``channel_names`` is filled from ``modality`` when only that is
        present. Other keys are returned unchanged.

    Raises
    ------
    DatasetError : the file is missing, is not valid JSON (the message gives line and column), lacks
        required keys (all missing keys are named) or has malformed ``labels``/``channel_names``.
    """
    path = Path(path)
    d = read_json_file(path, f"create it next to imagesTr/ and labelsTr/, for example {_EXAMPLE}")
    return validate_dataset_json(d, path)


def validate_dataset_json(d: Any, source: Path | str = "dataset.json") -> dict:
    """Validate an already parsed dataset.json (see :func:`load_dataset_json`); returns a copy.

    ``source`` is only used in error messages.
    """
    if not isinstance(d, dict):
        raise DatasetError(source, f"must contain a JSON object, found {type(d).__name__}",
                           f"write dataset.json as an object, for example {_EXAMPLE}")
    d = dict(d)
    if "channel_names" not in d and "modality" in d:
        d["channel_names"] = d["modality"]
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        fix = f"add the key(s) {', '.join(missing)}; a minimal v2 dataset.json is {_EXAMPLE}"
        if is_msd_dataset_json(d):
            fix = ("this is an MSD/v1 dataset.json: pass the dataset folder to -d (or run pnnunet_convert_msd) "
                   "to convert it to the v2 layout")
        raise DatasetError(source, f"missing required key(s) {missing} (required: {list(REQUIRED_KEYS)})", fix)
    _check_channel_names(d["channel_names"], source)
    _check_labels(d["labels"], source)
    n = d["numTraining"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DatasetError(source, f"numTraining must be a non-negative integer, found {n!r}",
                           "set numTraining to the number of training cases")
    LabelInfo.from_dataset_json(d, source)  # ignore label and regions (reference §1.4, Appendix E)
    fe = d["file_ending"]
    if not isinstance(fe, str) or not fe.startswith(".") or len(fe) < 2:
        raise DatasetError(source, f"file_ending must be a string such as '.nii.gz' or '.png', found {fe!r}",
                           "set file_ending to the ending shared by all image and label files")
    return d


def _check_channel_names(cn: Any, source: Path | str) -> None:
    if not isinstance(cn, dict) or not cn:
        raise DatasetError(source, f"channel_names must be a non-empty object, found {cn!r}",
                           'map each channel index to a name, e.g. {"0": "T2", "1": "ADC"}')
    if set(cn) != {str(i) for i in range(len(cn))}:
        raise DatasetError(source, f"channel_names keys must be the channel indices 0..{len(cn) - 1} as strings, "
                                   f"found {list(cn)}",
                           'number the channels "0", "1", ... in the order of the _0000, _0001 ... files')


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_labels(labels: Any, source: Path | str) -> None:
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(source, f"labels must be a non-empty object mapping names to integers, found {labels!r}",
                           'write labels as {"background": 0, "name": 1, ...}')
    if all(isinstance(v, str) for v in labels.values()) and all(k.isdigit() for k in labels):
        raise DatasetError(source, f"labels map integers to names ({labels}); v2 maps names to integers",
                           "invert the mapping, e.g. {\"background\": 0, ...}, or convert the MSD/v1 folder by "
                           "passing it to -d")
    for name, v in labels.items():
        ok = _is_int(v) or (isinstance(v, list) and len(v) > 0 and all(_is_int(x) for x in v))
        if not ok:
            raise DatasetError(source, f"label '{name}' has value {v!r}; values must be integers "
                                       "(or, for a region, a list of integers)",
                               "use integer label values (background 0, then 1, 2, ...)")
    if "background" not in labels:
        raise DatasetError(source, f"labels have no 'background' entry ({labels})",
                           'add "background": 0 (nnU-Net requires background to be label 0)')
    if labels["background"] != 0 or isinstance(labels["background"], list):
        raise DatasetError(source, f"background must be label 0, found {labels['background']!r}",
                           'set "background": 0 and renumber the other labels from 1')


def is_msd_dataset_json(d: dict) -> bool:
    """True for an MSD/v1 dataset.json (reference §1.3).

    That is one with a ``modality`` object, ``labels`` mapping integer strings to names and a
    ``training`` list (entries ``{"image": ..., "label": ...}``).
    """
    if not isinstance(d, dict):
        return False
    labels = d.get("labels")
    return (isinstance(d.get("modality"), dict)
            and isinstance(labels, dict) and len(labels) > 0
            and all(isinstance(k, str) and k.strip().isdigit() for k in labels)
            and all(isinstance(v, str) for v in labels.values())
            and isinstance(d.get("training"), list))
