"""Choose the postprocessing by cross-validation (reference §8.4, Appendix A.5, Appendix G.9).

The only candidate operation is "keep the largest connected component"
(:func:`pnnunet.postprocessing.components.remove_all_but_largest_component`):

A. on the union of all foreground **labels** (labels even in region mode, Appendix G.9); accepted
   iff the foreground-mean Dice strictly improves and no class's mean Dice decreases;
B. if there is more than one class: for each foreground label (or region) in dataset.json order,
   on the current result; accepted iff that class's mean Dice strictly increases.

Candidates are evaluated in memory (the same per-case metrics as
:func:`pnnunet.metrics.compute_metrics_on_folder`); only the final choice is written:
the postprocessed predictions with their ``summary.json`` and ``postprocessing.json``
(Appendix C schema).

DEVIATION(nnU-Net §8.4): no ``postprocessing.pkl``; the recipe is the JSON file alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import DatasetError
from pnnunet.metrics import (
    compute_metrics_arrays,
    compute_metrics_on_folder,
    label_or_region_to_key,
    summarize_cases,
)
from pnnunet.fileio import load_json, write_json_atomic
from pnnunet.imageio import ImageIO
from pnnunet.parallel import map_in_pool
from pnnunet.dataset.folders import folder_dataset_json, resolve_io, segmentation_files
from pnnunet.postprocessing.apply import PostprocessingStep, apply_postprocessing, apply_postprocessing_to_folder
from pnnunet.postprocessing.components import PP_FN_NAME

log = logging.getLogger(__name__)


def postprocess_and_evaluate_case(pred_file: Path, ref_file: Path, reader_writer: ImageIO,
                                  steps: Sequence[PostprocessingStep], labels_or_regions: list,
                                  ignore_label: int | None) -> dict:
    """Metrics of one case after applying ``steps`` to its prediction (entry of ``metric_per_case``)."""
    ref, _ = reader_writer.read_seg(ref_file)
    pred, _ = reader_writer.read_seg(pred_file)
    if ref.shape != pred.shape:
        raise DatasetError(pred_file, f"has shape {pred.shape[1:]} but its reference {ref_file} has {ref.shape[1:]}",
                           "predictions must be in the reference's geometry")
    pred = apply_postprocessing(pred[0], steps)[None]
    return {"reference_file": str(ref_file), "prediction_file": str(pred_file),
            "metrics": compute_metrics_arrays(ref, pred, labels_or_regions, ignore_label)}


def evaluate_with_steps(pred_folder: Path, ref_folder: Path, files: list[str], reader_writer: ImageIO,
                        steps: Sequence[PostprocessingStep], labels_or_regions: list, ignore_label: int | None,
                        num_processes: int = 2) -> dict:
    """Summary (``summarize_cases`` schema) of the predictions ``files`` after ``steps``, without writing files."""
    jobs = [(pred_folder / f, ref_folder / f, reader_writer, list(steps), labels_or_regions, ignore_label)
            for f in files]
    per_case = map_in_pool(postprocess_and_evaluate_case, jobs, num_processes, progress=False)
    return summarize_cases(per_case, labels_or_regions)


def _dice(summary: dict, key: str | None = None) -> float:
    return summary["foreground_mean"]["Dice"] if key is None else summary["mean"][key]["Dice"]


def accept_all_foreground(baseline: dict, candidate: dict) -> bool:
    """Step A rule: foreground-mean Dice strictly better and no class mean worse (NaN compares as upstream)."""
    if not _dice(candidate) > _dice(baseline):
        return False
    return not any(_dice(candidate, k) < _dice(baseline, k) for k in candidate["mean"])


def accept_one_class(baseline: dict, candidate: dict, key: str) -> bool:
    """Step B rule: this class's mean Dice strictly better (other classes are not checked)."""
    return _dice(candidate, key) > _dice(baseline, key)


def _baseline_summary(pred_folder: Path, ref_folder: Path, files: list[str], reader_writer: ImageIO,
                      file_ending: str, classes: list, ignore_label: int | None, num_processes: int) -> dict:
    """``pred_folder/summary.json`` if it covers exactly these cases and classes, else computed and written."""
    path = pred_folder / "summary.json"
    keys = sorted(label_or_region_to_key(c) for c in classes)
    if path.is_file():
        try:
            s = load_json(path)
            if (sorted(Path(c["prediction_file"]).name for c in s["metric_per_case"]) == files
                    and sorted(s["mean"]) == keys):
                return s
        except (ValueError, KeyError, TypeError):
            pass
        log.info("%s does not match the predictions; recomputing it", path)
    return compute_metrics_on_folder(ref_folder, pred_folder, path, reader_writer, file_ending, classes,
                                     ignore_label, num_processes, chill=True)


def _check_references(pred_folder: Path, ref_folder: Path, files: list[str], file_ending: str) -> None:
    if not ref_folder.is_dir():
        raise DatasetError(ref_folder, "reference folder does not exist", "pass the folder with the ground truth")
    refs = set(segmentation_files(ref_folder, file_ending))
    missing = [f for f in files if f not in refs]
    if missing:
        raise DatasetError(ref_folder, f"has no reference for {len(missing)} prediction(s) of {pred_folder}: "
                                       f"{', '.join(missing[:10])}", "use the ground truth of these cases")
    if len(refs) > len(files):
        log.warning("%s has %d references but %s only %d predictions: postprocessing should be determined on "
                    "all cross-validation cases", ref_folder, len(refs), pred_folder, len(files))


def _scores(summary: dict) -> dict:
    return {"foreground_mean": summary["foreground_mean"], "mean": summary["mean"]}


def determine_postprocessing(pred_folder: Path | str, ref_folder: Path | str,
                             dataset_json: dict | Path | str | None = None, plans: dict | Path | str | None = None,
                             num_processes: int = 2, output_folder: Path | str | None = None, *,
                             pp_json_file: Path | str | None = None) -> dict:
    """Select the largest-component postprocessing on cross-validation predictions (reference §8.4, A.5).

    Parameters
    ----------
    pred_folder : predictions ``CASE{file_ending}`` (e.g. ``crossval_results_folds_0_1_2_3_4``); its
        ``summary.json`` is the baseline (computed and written if missing or stale)
    ref_folder : ground truth with the same file names (``gt_segmentations``)
    dataset_json, plans : dicts or files; default ``pred_folder/{dataset,plans}.json``
    num_processes : worker processes
    output_folder : where the postprocessed predictions and their ``summary.json`` go
        (default ``pred_folder/postprocessed``)
    pp_json_file : where ``postprocessing.json`` goes (default ``pred_folder/postprocessing.json``)

    Returns
    -------
    the ``postprocessing.json`` dict: ``input_folder`` and ``postprocessed`` (each
    ``foreground_mean`` and ``mean``), ``postprocessing_fns`` (names), ``postprocessing_kwargs``
    (``{"labels_or_regions": [1, 2]}`` / ``{"labels_or_regions": 1}``; regions as lists)
    """
    pred_folder, ref_folder = Path(pred_folder), Path(ref_folder)
    if not pred_folder.is_dir():
        raise DatasetError(pred_folder, "prediction folder does not exist", "check the path")
    output_folder = pred_folder / "postprocessed" if output_folder is None else Path(output_folder)
    pp_json_file = pred_folder / "postprocessing.json" if pp_json_file is None else Path(pp_json_file)
    dj = folder_dataset_json(dataset_json, pred_folder)
    rw, ending = resolve_io(pred_folder, dj, plans)
    labels = LabelInfo.from_dataset_json(dj)
    classes = list(labels.foreground_regions if labels.has_regions else labels.foreground_labels)
    files = segmentation_files(pred_folder, ending)
    if not files:
        raise DatasetError(pred_folder, f"contains no predictions ending in {ending}", "check the folder")
    _check_references(pred_folder, ref_folder, files, ending)

    def evaluate(steps: list[PostprocessingStep]) -> dict:
        return evaluate_with_steps(pred_folder, ref_folder, files, rw, steps, classes, labels.ignore_label,
                                   num_processes)

    baseline = _baseline_summary(pred_folder, ref_folder, files, rw, ending, classes, labels.ignore_label,
                                 num_processes)
    accepted: list[PostprocessingStep] = []
    current = baseline
    # step A: all foreground labels as one object (labels, also in region mode: Appendix G.9)
    step = PostprocessingStep(PP_FN_NAME, {"labels_or_regions": list(labels.foreground_labels)})
    candidate = evaluate([step])
    if accept_all_foreground(current, candidate):
        accepted.append(step)
        current = candidate
    log.info("largest foreground component: foreground mean Dice %.5f -> %.5f, %s", _dice(baseline),
             _dice(candidate), "accepted" if accepted else "rejected")
    # step B: each label/region on its own, in dataset.json order
    if len(classes) > 1:
        for c in classes:
            key = label_or_region_to_key(c)
            step = PostprocessingStep(PP_FN_NAME, {"labels_or_regions": list(c) if isinstance(c, tuple) else int(c)})
            candidate = evaluate(accepted + [step])
            ok = accept_one_class(current, candidate, key)
            log.info("largest component of %s: Dice %.5f -> %.5f, %s", key, _dice(current, key),
                     _dice(candidate, key), "accepted" if ok else "rejected")
            if ok:
                accepted.append(step)
                current = candidate

    apply_postprocessing_to_folder(pred_folder, output_folder, accepted, reader_writer=rw, file_ending=ending,
                                   num_processes=num_processes)
    for stale in set(segmentation_files(output_folder, ending)) - set(files):
        (output_folder / stale).unlink()
    final = compute_metrics_on_folder(ref_folder, output_folder, output_folder / "summary.json", rw, ending,
                                      classes, labels.ignore_label, num_processes, chill=True)
    result = {"input_folder": _scores(baseline), "postprocessed": _scores(final),
              "postprocessing_fns": [s.fn_name for s in accepted],
              "postprocessing_kwargs": [s.kwargs for s in accepted]}
    write_json_atomic(pp_json_file, result)
    return result


def describe_postprocessing(pp: dict, names: dict[int, str] | None = None) -> str:
    """Human-readable lines: each accepted step, then the foreground-mean Dice before and after."""
    names = names or {}
    lines = []
    for kw in pp["postprocessing_kwargs"]:
        what = kw.get("labels_or_regions")
        if isinstance(what, list):
            label = " + ".join(names.get(x, str(x)) if isinstance(x, int) else str(x) for x in what)
        else:
            label = names.get(int(what), str(what))
        lines.append(f"keep the largest connected component of {label}")
    if not lines:
        lines.append("no postprocessing (keeping the largest component did not improve the cross-validation Dice)")
    before, after = pp["input_folder"]["foreground_mean"]["Dice"], pp["postprocessed"]["foreground_mean"]["Dice"]
    lines.append(f"foreground mean Dice {before:.4f} -> {after:.4f}")
    return "\n".join(lines)
