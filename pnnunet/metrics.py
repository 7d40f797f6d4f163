"""Per-case, per-class Dice/IoU and the folder summary ``summary.json`` (reference §8.1, Appendix C).

A label ``l`` is evaluated as the mask ``seg == l``; a region (tuple of labels) as the union of its
labels. Voxels where the reference has the ignore label are not counted. Dice and IoU are NaN when
a class is absent from both reference and prediction (TP + FP + FN == 0); means over cases skip
NaN. ``summary.json`` has upstream nnU-Net v2's schema: ``metric_per_case`` (``reference_file``,
``prediction_file``, ``metrics`` keyed by ``str(label_or_region)``), ``mean`` per class and
``foreground_mean``, written with sorted keys.

The dicts returned here use the same string keys as the file (``"1"``, ``"(1, 2)"``);
:func:`key_to_label_or_region` converts back.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import DatasetError
from pnnunet.fileio import write_json_atomic
from pnnunet.imageio import ImageIO
from pnnunet.parallel import worker_context

log = logging.getLogger(__name__)

LabelOrRegion = int | tuple[int, ...]
METRICS = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")  # upstream's order


def label_or_region_to_key(label_or_region: LabelOrRegion | Sequence[int]) -> str:
    """``1`` → ``"1"``, ``(1, 2)`` → ``"(1, 2)"`` (lists are treated as tuples), as upstream's keys."""
    if isinstance(label_or_region, (list, tuple)):
        return str(tuple(int(x) for x in label_or_region))
    return str(int(label_or_region))


def key_to_label_or_region(key: str) -> LabelOrRegion:
    """Inverse of :func:`label_or_region_to_key`: ``"1"`` → 1, ``"(1, 2)"`` → (1, 2), ``"(3,)"`` → (3,)."""
    try:
        return int(key)
    except ValueError:
        parts = key.strip().strip("()").split(",")
        return tuple(int(p) for p in parts if p.strip())


def class_names(dataset_json: dict) -> dict[str, str]:
    """``{summary key: name}`` for the foreground labels/regions of dataset.json (``"1"`` → ``"Anterior"``)."""
    has_regions = LabelInfo.from_dataset_json(dataset_json).has_regions
    out = {}
    for name, value in dataset_json["labels"].items():
        if name == "ignore":
            continue
        if isinstance(value, (list, tuple)):
            value = tuple(value) if has_regions else value[0]
        key = label_or_region_to_key(value)
        if key not in ("0", "(0,)"):
            out[key] = name
    return out


def label_or_region_mask(seg: np.ndarray, label_or_region: LabelOrRegion | Sequence[int]) -> np.ndarray:
    """Bool mask of a label (``seg == l``) or region (union of its labels); same shape as ``seg``."""
    if isinstance(label_or_region, (list, tuple)):
        return np.isin(seg, [int(x) for x in label_or_region])
    return seg == label_or_region


def compute_tp_fp_fn_tn(ref: np.ndarray, pred: np.ndarray, label_or_region: LabelOrRegion | Sequence[int],
                        ignore_mask: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Voxel counts of one class (reference §8.1).

    Parameters
    ----------
    ref, pred : label maps of equal shape (any integer-valued dtype)
    label_or_region : an int label or a tuple of labels (region = their union)
    ignore_mask : bool, same shape; True voxels are not counted (reference == ignore label)

    Returns
    -------
    (TP, FP, FN, TN) as Python ints
    """
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    r = label_or_region_mask(ref, label_or_region)
    p = label_or_region_mask(pred, label_or_region)
    if ignore_mask is not None:
        use = ~ignore_mask
        r &= use
        p &= use
        n = int(np.count_nonzero(use))
    else:
        n = r.size
    tp = int(np.count_nonzero(r & p))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    return tp, fp, fn, n - tp - fp - fn


def metrics_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict:
    """Dice, IoU (NaN when TP + FP + FN == 0) and the counts, in upstream's key order."""
    denom = tp + fp + fn
    dice = 2 * tp / (2 * tp + fp + fn) if denom else float("nan")
    iou = tp / denom if denom else float("nan")
    return {"Dice": dice, "IoU": iou, "FP": fp, "TP": tp, "FN": fn, "TN": tn, "n_pred": fp + tp, "n_ref": fn + tp}


def compute_metrics_arrays(ref: np.ndarray, pred: np.ndarray, labels_or_regions: Sequence[LabelOrRegion],
                           ignore_label: int | None = None) -> dict[str, dict]:
    """Metrics of every class for one pair of label maps: ``{str(class): {metric: value}}``."""
    ignore_mask = (ref == ignore_label) if ignore_label is not None else None
    return {label_or_region_to_key(r): metrics_from_counts(*compute_tp_fp_fn_tn(ref, pred, r, ignore_mask))
            for r in labels_or_regions}


def compute_metrics(ref_file: Path | str, pred_file: Path | str, reader_writer: ImageIO,
                    labels_or_regions: Sequence[LabelOrRegion], ignore_label: int | None = None) -> dict:
    """Metrics of one case (reference §8.1).

    Returns
    -------
    ``{"reference_file": str, "prediction_file": str, "metrics": {str(class): {"Dice", "IoU", "FP",
    "TP", "FN", "TN", "n_pred", "n_ref"}}}``
    """
    ref, _ = reader_writer.read_seg(ref_file)
    pred, _ = reader_writer.read_seg(pred_file)
    if ref.shape != pred.shape:
        raise DatasetError(pred_file, f"has shape {pred.shape[1:]} but its reference {ref_file} has {ref.shape[1:]}",
                           "predictions must be in the reference's geometry (were they exported for this dataset?)")
    return {"reference_file": str(ref_file), "prediction_file": str(pred_file),
            "metrics": compute_metrics_arrays(ref, pred, labels_or_regions, ignore_label)}


def _nanmean(values: list) -> float:
    with warnings.catch_warnings():  # all-NaN → NaN without numpy's "Mean of empty slice" warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.asarray(values, dtype=np.float64)))


def summarize_cases(metric_per_case: list[dict], labels_or_regions: Sequence[LabelOrRegion | str]) -> dict:
    """Aggregate per-case metrics into upstream's summary (reference §8.1).

    ``mean[class][metric]`` = nanmean over cases; ``foreground_mean[metric]`` = mean over classes of
    ``mean`` (class 0 skipped if listed; a class whose mean is NaN makes it NaN, as upstream).

    Parameters
    ----------
    metric_per_case : entries as returned by :func:`compute_metrics` (metrics keyed by str)
    labels_or_regions : the evaluated classes (ints/tuples or their string keys)

    Returns
    -------
    ``{"metric_per_case": [...], "mean": {str(class): {...}}, "foreground_mean": {...}}``
    """
    if not metric_per_case:
        raise ValueError("no cases to summarize")
    keys = [r if isinstance(r, str) else label_or_region_to_key(r) for r in labels_or_regions]
    metric_names = list(metric_per_case[0]["metrics"][keys[0]].keys())
    mean = {k: {m: _nanmean([case["metrics"][k][m] for case in metric_per_case]) for m in metric_names}
            for k in keys}
    foreground = [k for k in keys if k != "0"]
    foreground_mean = {m: float(np.mean([mean[k][m] for k in foreground])) for m in metric_names}
    return {"metric_per_case": metric_per_case, "mean": mean, "foreground_mean": foreground_mean}


def _case_files(folder: Path, file_ending: str) -> list[str]:
    # hidden files are skipped: they are temporary files of atomic writes in progress
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith("."))


def _format_names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def compute_metrics_on_folder(ref_folder: Path | str, pred_folder: Path | str, output_file: Path | str | None,
                              reader_writer: ImageIO, file_ending: str,
                              labels_or_regions: Sequence[LabelOrRegion], ignore_label: int | None = None,
                              num_processes: int = 2, chill: bool = False) -> dict:
    """Evaluate every prediction in ``pred_folder`` against the same-named reference (reference §8.1).

    Parameters
    ----------
    ref_folder, pred_folder : folders of label maps ``{CASE}{file_ending}``
    output_file : where to write ``summary.json`` (atomic, sorted keys); None: do not write
    reader_writer : an :class:`pnnunet.imageio.ImageIO` that reads both folders
    file_ending : e.g. ``".nii.gz"``
    labels_or_regions : foreground labels (label mode) or regions (tuples) to evaluate
    ignore_label : reference voxels with this value are not counted
    num_processes : worker processes (spawned); <= 1 evaluates in this process
    chill : tolerate references without a prediction (only the predicted cases are evaluated)

    Returns
    -------
    the summary dict (see :func:`summarize_cases`); ``metric_per_case`` sorted by file name

    Raises
    ------
    DatasetError : no predictions, a prediction without reference, or (unless ``chill``) references
        without prediction; the message names the files.
    """
    ref_folder, pred_folder = Path(ref_folder), Path(pred_folder)
    for folder in (ref_folder, pred_folder):
        if not folder.is_dir():
            raise DatasetError(folder, "folder does not exist", "check the path")
    if not labels_or_regions:
        raise ValueError("labels_or_regions is empty: nothing to evaluate")
    preds = _case_files(pred_folder, file_ending)
    refs = set(_case_files(ref_folder, file_ending))
    if not preds:
        raise DatasetError(pred_folder, f"contains no predictions ending in {file_ending}",
                           "run the prediction first, or check the folder and file ending")
    no_ref = [p for p in preds if p not in refs]
    if no_ref:
        raise DatasetError(ref_folder, f"has no reference for {len(no_ref)} prediction(s): {_format_names(no_ref)}",
                           "evaluate against the folder with the ground truth of these cases")
    missing = sorted(refs - set(preds))
    if missing and not chill:
        raise DatasetError(pred_folder, f"misses the prediction of {len(missing)} reference case(s): "
                                        f"{_format_names(missing)}",
                           "predict these cases, or pass chill=True (--chill) to evaluate only the present ones")
    jobs = [(ref_folder / name, pred_folder / name, reader_writer, list(labels_or_regions), ignore_label)
            for name in preds]
    if num_processes <= 1 or len(jobs) == 1:
        per_case = [compute_metrics(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=min(num_processes, len(jobs)),
                                 mp_context=worker_context([compute_metrics.__module__])) as pool:
            per_case = list(pool.map(compute_metrics, *zip(*jobs)))
    summary = summarize_cases(per_case, labels_or_regions)
    if output_file is not None:
        write_json_atomic(output_file, summary, sort_keys=True)
    log.info("evaluated %d cases in %s: foreground mean Dice %.4f", len(per_case), pred_folder,
             summary["foreground_mean"]["Dice"])
    return summary
