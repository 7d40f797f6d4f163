"""The previous stage's segmentation as extra input of a cascade stage (reference §5.2, §5.4 step 14,
§5.10, §7.2, §7.7, Appendix E).

A cascade configuration (``previous_stage`` in its plan, e.g. ``3d_cascade_fullres`` after
``3d_lowres``) sees its image channels followed by the one-hot encoding of the previous stage's
segmentation over the foreground labels. Training takes that segmentation from the previous
stage's cross-validation: each lowres fold's final validation resamples its held-out cases'
logits to the next stage's preprocessed grid and stores the argmax in
``<lowres model>/predicted_next_stage/<next stage>/{CASE}.b2nd`` (a 3D Blosc2 array chunked for the next
stage's patch, as upstream; ``{CASE}.npy`` written by older pnnunet versions is read too). Prediction
reads the previous stage's output files and preprocesses them like a label map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import PnnunetError
from pnnunet.preprocessing.storage import find_array, open_array, save_array

PREDICTED_NEXT_STAGE = "predicted_next_stage"


def next_stage_names(config: Mapping) -> list[str]:
    """The configurations that take this one's predictions as input (``next_stage``: a name or a list)."""
    value = config.get("next_stage")
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def num_network_inputs(dataset_json: dict, previous_stage: str | None) -> int:
    """Network input channels: image channels, plus one per foreground label for a cascade stage."""
    channels = len(dataset_json.get("channel_names") or dataset_json["modality"])
    if previous_stage:
        channels += len(LabelInfo.from_dataset_json(dataset_json).foreground_labels)
    return channels


def one_hot_foreground(seg: np.ndarray, foreground_labels: Sequence[int], dtype=np.float32) -> np.ndarray:
    """One channel per foreground label, in label order: ``(len(labels), *seg.shape)`` (Appendix E).

    Background (0) and the outside marker (-1) are zero in every channel.
    """
    out = np.zeros((len(foreground_labels), *seg.shape), dtype=dtype)
    for i, label in enumerate(foreground_labels):
        out[i][seg == label] = 1
    return out


def append_previous_stage(data: np.ndarray, seg: np.ndarray, foreground_labels: Sequence[int]) -> np.ndarray:
    """``data`` (C, *S) followed by the one-hot previous-stage ``seg`` (*S) or (1, *S): (C + L, *S) float32."""
    seg = np.asarray(seg)
    if seg.ndim == data.ndim:
        seg = seg[0]
    if tuple(seg.shape) != tuple(data.shape[1:]):
        raise PnnunetError(f"the previous stage's segmentation has shape {tuple(seg.shape)}, the image "
                           f"{tuple(data.shape[1:])}")
    return np.concatenate([np.asarray(data, dtype=np.float32), one_hot_foreground(seg, foreground_labels)])


def next_stage_folder(model_dir: Path | str, next_stage: str) -> Path:
    """Where a stage's fold validations put their inputs for ``next_stage``."""
    return Path(model_dir) / PREDICTED_NEXT_STAGE / next_stage


def save_next_stage_segmentation(folder: Path | str, case: str, seg: np.ndarray,
                                 patch_size: Sequence[int] | None = None) -> Path:
    """Write ``{folder}/{case}.b2nd`` atomically (uint8/uint16 (X, Y, Z) label map in the next stage's grid,
    chunked for the next stage's ``patch_size``)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return save_array(folder, case, np.ascontiguousarray(seg), patch_size)


def previous_stage_file(folder: Path | str, case: str) -> Path:
    """The stored segmentation of ``case`` (``.b2nd``, or ``.npy`` of older versions); the ``.b2nd`` path if none."""
    return find_array(folder, case) or Path(folder) / f"{case}.b2nd"


def missing_previous_stage_cases(folder: Path | str, cases: Sequence[str]) -> list[str]:
    return [c for c in cases if find_array(folder, c) is None]


def check_previous_stage_available(folder: Path | str, cases: Sequence[str], previous_stage: str,
                                   configuration: str, fold: int | str | None = None) -> None:
    """Raise a PnnunetError naming the cases without a previous-stage segmentation and the fix.

    ``fold`` is the fold being trained: for ``all`` the fix is the previous stage's fold ``all`` (whose
    validation covers every case), otherwise its folds 0-4."""
    missing = missing_previous_stage_cases(folder, cases)
    if not missing:
        return
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    if str(fold) == "all":
        fix = (f"train {previous_stage} fold all first (pnnunet_train {previous_stage} all): its final validation "
               f"writes every case there; for a finished fold all, pnnunet_train {previous_stage} all --val "
               "rewrites them")
    else:
        fix = (f"train {previous_stage} first, all folds (pnnunet_train {previous_stage} FOLD for FOLD in 0 1 2 3 4): "
               f"each fold's final validation writes its held-out cases there; for a finished fold, "
               f"pnnunet_train {previous_stage} FOLD --val rewrites them")
    raise PnnunetError(
        f"{folder}: no {previous_stage} segmentation for {len(missing)} of {len(cases)} cases ({shown}); "
        f"'{configuration}' trains on them as extra input\n  fix: {fix}")


def load_previous_stage_segmentation(folder: Path | str, case: str, expected_shape: Sequence[int],
                                     mmap: bool = True) -> np.ndarray:
    """The stored previous-stage label map of ``case`` (X, Y, Z); its shape must be ``expected_shape``."""
    path = previous_stage_file(folder, case)
    if not path.is_file():
        raise PnnunetError(f"{path}: not found\n  fix: rerun the previous stage's final validation "
                           "(pnnunet_train <previous stage> FOLD --val) for the fold holding this case")
    seg = open_array(path, mmap)
    if tuple(seg.shape) != tuple(int(s) for s in expected_shape):
        raise PnnunetError(f"{path}: has shape {tuple(seg.shape)} but the preprocessed case "
                           f"{tuple(int(s) for s in expected_shape)}; it was made for other preprocessing\n"
                           "  fix: rerun the previous stage's final validation (pnnunet_train <previous stage> "
                           "FOLD --val) after preprocessing")
    return seg
