"""Cross-validation splits, ``splits_final.json`` (reference §5.9).

Same algorithm and file as upstream v2: identifiers sorted, ``KFold(5, shuffle=True,
random_state=12345)``; the file lives in the preprocessed dataset folder and an existing one
(e.g. a custom split with any number of folds) is always respected.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import KFold

from pnnunet.defaults import SPLITS_FILE, parse_fold
from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.fileio import load_json, write_json_atomic

log = logging.getLogger(__name__)

SPLIT_SEED = 12345


def make_splits(case_ids: Sequence[str], n_splits: int = 5, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """K-fold split of the sorted case identifiers (§5.9).

    Parameters
    ----------
    case_ids : case identifiers (any order; sorted here).
    n_splits, seed : ``sklearn.model_selection.KFold(n_splits, shuffle=True, random_state=seed)``.

    Returns
    -------
    ``[{"train": [...], "val": [...]}, ...]``, one entry per fold; ids within a fold keep the
    sorted order.
    """
    keys = sorted(str(c) for c in case_ids)
    if len(set(keys)) != len(keys):
        raise PnnunetError("case identifiers for the split contain duplicates")
    if len(keys) < n_splits:
        raise PnnunetError(
            f"{len(keys)} training case(s) cannot be split into {n_splits} folds; "
            "add cases, train with fold 'all', or write your own splits_final.json"
        )
    kfold = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [
        {"train": [keys[i] for i in train_idx], "val": [keys[i] for i in val_idx]}
        for train_idx, val_idx in kfold.split(keys)
    ]


def _check_splits(splits, path: Path, case_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    fix = "correct it, or delete it to have a 5-fold split created"
    if not isinstance(splits, list) or not splits:
        raise DatasetError(path, "is not a non-empty list of {'train': [...], 'val': [...]} entries", fix)
    known = set(case_ids)
    for k, fold in enumerate(splits):
        well_formed = isinstance(fold, dict) and all(isinstance(fold.get(k), list) for k in ("train", "val"))
        if not well_formed:
            raise DatasetError(path, f"fold {k} is not a {{'train': [...], 'val': [...]}} entry", fix)
        unknown = sorted(set(fold["train"] + fold["val"]) - known)
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DatasetError(path, f"fold {k} names {len(unknown)} case(s) not in the dataset: {shown}", fix)
    return splits


def load_or_create_splits(
    preprocessed_dataset_dir: Path | str, case_ids: Sequence[str]
) -> list[dict[str, list[str]]]:
    """Splits from ``<dir>/splits_final.json``, created (5-fold, §5.9) and written atomically if missing.

    Parameters
    ----------
    preprocessed_dataset_dir : ``$pnnunet_preprocessed/DatasetXXX_Name``.
    case_ids : identifiers of the training cases; an existing file must only name these.
    """
    path = Path(preprocessed_dataset_dir) / SPLITS_FILE
    if path.is_file():
        splits = _check_splits(load_json(path), path, case_ids)
        log.info("using %d split(s) from %s", len(splits), path)
        return splits
    splits = make_splits(case_ids)
    write_json_atomic(path, splits)
    log.info("created a new %d-fold cross-validation split: %s", len(splits), path)
    return splits


def get_fold(
    splits: list[dict[str, list[str]]], fold: int | str, case_ids: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Training and validation identifiers of one fold (§5.9).

    Parameters
    ----------
    splits : output of :func:`load_or_create_splits`.
    fold : fold index, or ``"all"`` (train = val = all cases, sorted).
    case_ids : all training case identifiers.

    Returns
    -------
    (train, val). A fold index beyond the splits gives upstream's seeded random 80:20 split:
    ``RandomState(12345 + fold).choice(n, int(0.8·n), replace=False)`` over the sorted ids,
    train in drawn order, val in sorted order.
    """
    keys = sorted(str(c) for c in case_ids)
    fold = parse_fold(fold)
    if fold == "all":
        return list(keys), list(keys)
    if fold < len(splits):
        return list(splits[fold]["train"]), list(splits[fold]["val"])
    log.warning("fold %d requested but the splits have %d fold(s): using a seeded random 80:20 split",
                fold, len(splits))
    rng = np.random.RandomState(SPLIT_SEED + fold)
    train_idx = rng.choice(len(keys), int(len(keys) * 0.8), replace=False)
    chosen = set(int(i) for i in train_idx)
    return [keys[i] for i in train_idx], [k for i, k in enumerate(keys) if i not in chosen]
