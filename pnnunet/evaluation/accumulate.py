"""Collect a model's cross-validation predictions into one folder and evaluate them (reference §8.2 step 2).

Every ``fold_K/validation/CASE{file_ending}`` of a trained model is copied into
``crossval_results_folds_0_1_2_3_4/`` (folds joined by ``_``) together with the model's
``plans.json`` and ``dataset.json``; the folder is then evaluated against the ground truth into
its ``summary.json``. Evaluating the merged folder (rather than averaging the folds' summaries)
gives every case the same weight.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

from pnnunet.dataset.labels import LabelInfo
from pnnunet.defaults import VALIDATION_SETTINGS_FILE
from pnnunet.errors import DatasetError
from pnnunet.metrics import compute_metrics_on_folder
from pnnunet.fileio import atomic_path, load_json
from pnnunet.dataset.folders import resolve_io, segmentation_files

log = logging.getLogger(__name__)


def folds_to_string(folds: Sequence[int | str]) -> str:
    """``(0, 1, 2, 3, 4)`` → ``"0_1_2_3_4"`` (upstream's folder suffix)."""
    if not folds:
        raise ValueError("no folds given")
    return "_".join(str(f) for f in folds)


def crossval_folder_name(folds: Sequence[int | str]) -> str:
    return f"crossval_results_folds_{folds_to_string(folds)}"


def _train_hint(model_dir: Path, fold: int | str) -> str:
    parts = model_dir.name.split("__")
    if len(parts) != 3:
        return f"train fold {fold} of this model, or select the trained folds (-f)"
    trainer, plans, config = parts
    return f"train it (pnnunet_train {config} {fold} -tr {trainer} -p {plans}), or select the trained folds (-f)"


def collect_cv_predictions(model_dir: Path, folds: Sequence[int | str], file_ending: str) -> dict[str, Path]:
    """``{file name: fold_K/validation/file}`` over ``folds``.

    Raises
    ------
    DatasetError : a fold's validation folder is missing or empty, or a case is in two folds
    """
    mapping: dict[str, Path] = {}
    for fold in folds:
        val = model_dir / f"fold_{fold}" / "validation"
        if not val.is_dir():
            raise DatasetError(val, f"fold {fold} of model {model_dir.name} is missing (no validation folder)",
                               _train_hint(model_dir, fold))
        files = segmentation_files(val, file_ending)
        if not files:
            raise DatasetError(val, f"fold {fold} has no validation predictions ending in {file_ending}",
                               "run the final validation of this fold (pnnunet_train ... --val)")
        for f in files:
            if f in mapping:
                raise DatasetError(val, f"case {f} was also predicted in {mapping[f].parent}",
                                   "each case must be in exactly one fold's validation (check splits_final.json)")
            mapping[f] = val / f
    return mapping


def validation_deviations(model_dir: Path | str, folds: Sequence[int | str]) -> dict[str, list[int | str]]:
    """``{deviation: [folds]}``: how the folds' validations differ from upstream's, as each recorded it in
    ``fold_K/validation/validation_settings.json`` (e.g. made with ``--val_disable_tta``). Folds without that
    file (validated by an older pnnunet) count as upstream's validation."""
    found: dict[str, list[int | str]] = {}
    for fold in folds:
        path = Path(model_dir) / f"fold_{fold}" / "validation" / VALIDATION_SETTINGS_FILE
        if path.is_file():
            for deviation in load_json(path).get("deviations", []):
                found.setdefault(str(deviation), []).append(fold)
    return found


def accumulate_cv_results(model_dir: Path | str, folds: Sequence[int | str], output_folder: Path | str | None,
                          gt_folder: Path | str, num_processes: int = 2) -> dict:
    """Merge the folds' validation predictions of ``model_dir`` and evaluate them (reference §8.2 step 2).

    Parameters
    ----------
    model_dir : ``<Trainer>__<Plans>__<config>/`` with ``plans.json``, ``dataset.json`` and
        ``fold_K/validation/``
    folds : folds to merge, e.g. ``(0, 1, 2, 3, 4)``
    output_folder : default ``model_dir/crossval_results_folds_<folds>``; predictions of cases
        not in these folds (left from an earlier run) are removed from it
    gt_folder : ground truth with the same file names (``$pnnunet_preprocessed/DatasetXXX/gt_segmentations``)
    num_processes : worker processes for the evaluation

    Returns
    -------
    the summary dict, also written to ``output_folder/summary.json``
    """
    model_dir = Path(model_dir)
    output_folder = model_dir / crossval_folder_name(folds) if output_folder is None else Path(output_folder)
    if not model_dir.is_dir():
        raise DatasetError(model_dir, "trained model folder does not exist", "train the model first")
    dataset_json_file = model_dir / "dataset.json"
    if not dataset_json_file.is_file():
        raise DatasetError(dataset_json_file, "missing in the model folder", "it is written by pnnunet_train")
    dataset_json = load_json(dataset_json_file)
    rw, ending = resolve_io(model_dir, dataset_json, model_dir / "plans.json")
    mapping = collect_cv_predictions(model_dir, folds, ending)
    output_folder.mkdir(parents=True, exist_ok=True)
    for stale in set(segmentation_files(output_folder, ending)) - set(mapping):
        (output_folder / stale).unlink()
    for name, src in [("plans.json", model_dir / "plans.json"), ("dataset.json", dataset_json_file),
                      *sorted(mapping.items())]:
        if src.is_file():
            with atomic_path(output_folder / name) as tmp:
                shutil.copyfile(src, tmp)
    labels = LabelInfo.from_dataset_json(dataset_json)
    classes = labels.foreground_regions if labels.has_regions else labels.foreground_labels
    summary = compute_metrics_on_folder(gt_folder, output_folder, output_folder / "summary.json", rw, ending,
                                        classes, labels.ignore_label, num_processes, chill=True)
    log.info("%s: %d cross-validation cases, foreground mean Dice %.4f", model_dir.name, len(mapping),
             summary["foreground_mean"]["Dice"])
    return summary
