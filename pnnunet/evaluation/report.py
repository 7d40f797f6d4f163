"""Evaluation reports: summary.json + CSV, a printable table, and a flat zip of predictions.

The metrics themselves are :mod:`pnnunet.metrics` (reference §8.1). This module turns a
summary into rows (one per case × class, then the means), writes them as CSV, formats a table
with the class names from dataset.json, and packs prediction files into a flat zip (entries
``CASE{file_ending}`` without folders, as challenge submission systems expect).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import zipfile
from pathlib import Path

from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import DatasetError
from pnnunet.metrics import METRICS, class_names, compute_metrics_on_folder
from pnnunet.fileio import atomic_path
from pnnunet.imageio import ImageIO
from pnnunet.dataset.folders import folder_dataset_json, resolve_io, segmentation_files

log = logging.getLogger(__name__)

CSV_COLUMNS = ("case", "class", "name", *METRICS)


def case_name(prediction_file: str, file_ending: str) -> str:
    name = Path(prediction_file).name
    return name[:-len(file_ending)] if file_ending and name.endswith(file_ending) else name


def summary_rows(summary: dict, names: dict[str, str], file_ending: str = "") -> list[dict]:
    """Rows for the CSV: one per case × class, then ``mean`` per class and ``foreground_mean``.

    Parameters
    ----------
    summary : summary dict (``metric_per_case``, ``mean``, ``foreground_mean``)
    names : ``{class key: name}`` (e.g. from :func:`pnnunet.evaluation.find_best.class_names`)
    file_ending : stripped from the case names
    """
    rows = []
    for case in summary["metric_per_case"]:
        cname = case_name(case["prediction_file"], file_ending)
        for key, m in case["metrics"].items():
            rows.append({"case": cname, "class": key, "name": names.get(key, ""), **m})
    for key, m in summary["mean"].items():
        rows.append({"case": "mean", "class": key, "name": names.get(key, ""), **m})
    rows.append({"case": "foreground_mean", "class": "all", "name": "", **summary["foreground_mean"]})
    return rows


def write_summary_csv(summary: dict, path: Path | str, names: dict[str, str], file_ending: str = "") -> None:
    """Write :func:`summary_rows` as CSV (atomic; NaN written as ``nan``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in summary_rows(summary, names, file_ending):
        writer.writerow(row)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.{digits}f}"


def format_table(summary: dict, names: dict[str, str], per_case: bool = False, file_ending: str = "") -> str:
    """A table of Dice, IoU and mean TP/FP/FN per class (+ foreground mean); optionally Dice per case."""
    keys = list(summary["mean"])
    label_w = max([len("foreground mean")] + [len(f"{names.get(k, '')} ({k})") for k in keys])
    head = f"{'class':<{label_w}}  {'Dice':>7}  {'IoU':>7}  {'TP':>10}  {'FP':>10}  {'FN':>10}"
    lines = []
    if per_case:
        case_w = max([len("case")] + [len(case_name(c["prediction_file"], file_ending))
                                      for c in summary["metric_per_case"]])
        heads = [names.get(k, k) for k in keys]
        cols = [max(7, len(h)) for h in heads]
        lines.append(f"{'case':<{case_w}}" + "".join(f"  {h:>{w}}" for h, w in zip(heads, cols)))
        for c in summary["metric_per_case"]:
            lines.append(f"{case_name(c['prediction_file'], file_ending):<{case_w}}"
                         + "".join(f"  {_fmt(c['metrics'][k]['Dice']):>{w}}" for k, w in zip(keys, cols)))
        lines.append("")
    lines += [head, "-" * len(head)]
    for k in keys:
        m = summary["mean"][k]
        lines.append(f"{names.get(k, '') + ' (' + k + ')':<{label_w}}  {_fmt(m['Dice']):>7}  {_fmt(m['IoU']):>7}  "
                     f"{_fmt(m['TP'], 1):>10}  {_fmt(m['FP'], 1):>10}  {_fmt(m['FN'], 1):>10}")
    f = summary["foreground_mean"]
    lines.append(f"{'foreground mean':<{label_w}}  {_fmt(f['Dice']):>7}  {_fmt(f['IoU']):>7}  "
                 f"{_fmt(f['TP'], 1):>10}  {_fmt(f['FP'], 1):>10}  {_fmt(f['FN'], 1):>10}")
    lines.append(f"{len(summary['metric_per_case'])} cases; TP/FP/FN are means over cases (voxels)")
    return "\n".join(lines)


def zip_predictions(pred_folder: Path | str, file_ending: str, zip_file: Path | str) -> list[str]:
    """Pack every ``CASE{file_ending}`` of ``pred_folder`` into ``zip_file`` as flat entries.

    Returns
    -------
    the entry names, sorted (no folders, nothing else from the folder)
    """
    pred_folder = Path(pred_folder)
    files = segmentation_files(pred_folder, file_ending)
    if not files:
        raise DatasetError(pred_folder, f"contains no predictions ending in {file_ending}", "check the folder")
    with atomic_path(zip_file) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in files:
            zf.write(pred_folder / name, arcname=name)
    return files


def evaluate_folder(ref_folder: Path | str, pred_folder: Path | str, dataset_json: dict | Path | str,
                    output_file: Path | str | None = None, *, plans: dict | Path | str | None = None,
                    reader_writer: ImageIO | None = None, num_processes: int = 2, chill: bool = False
                    ) -> dict:
    """Evaluate a prediction folder against references with the classes of ``dataset_json`` (§8.1).

    Parameters
    ----------
    ref_folder, pred_folder : folders of ``CASE{file_ending}`` label maps
    dataset_json : dict or file; gives labels/regions, ignore label and file ending
    output_file : summary.json path (default ``pred_folder/summary.json``); a CSV with the same
        stem is written beside it
    plans, reader_writer : pick the reader (default: from the file ending)
    num_processes : worker processes
    chill : evaluate only the predicted cases when some references have no prediction

    Returns
    -------
    the summary dict (upstream schema)
    """
    pred_folder = Path(pred_folder)
    output_file = pred_folder / "summary.json" if output_file is None else Path(output_file)
    if not isinstance(dataset_json, dict):
        dataset_json = folder_dataset_json(dataset_json, pred_folder)
    rw, ending = resolve_io(pred_folder, dataset_json, plans, reader_writer)
    labels = LabelInfo.from_dataset_json(dataset_json)
    classes = labels.foreground_regions if labels.has_regions else labels.foreground_labels
    summary = compute_metrics_on_folder(ref_folder, pred_folder, output_file, rw, ending, classes,
                                        labels.ignore_label, num_processes, chill=chill)
    write_summary_csv(summary, output_file.with_suffix(".csv"), class_names(dataset_json), ending)
    return summary
