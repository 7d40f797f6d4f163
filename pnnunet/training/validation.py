"""Final validation of a fold: the held-out cases predicted in their original geometry
(:mod:`pnnunet.inference.preprocessed`), then per-case Dice into ``validation/summary.json``
(reference §5.10)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pnnunet.dataset.labels import LabelInfo
from pnnunet.defaults import DEFAULT_STEP_SIZE, VALIDATION_SETTINGS_FILE
from pnnunet.fileio import write_json_atomic
from pnnunet.imageio import reader_writer_by_name
from pnnunet.inference.preprocessed import next_stages, predict_preprocessed_cases
from pnnunet.inference.case_predictor import CasePredictor
from pnnunet.inference.sliding_window import check_step_size
from pnnunet.inference.static_graph import resolve_precision
from pnnunet.metrics import class_names, compute_metrics_on_folder
from pnnunet.preprocessing.previous_stage import num_network_inputs

log = logging.getLogger(__name__)


def validation_settings(checkpoint_path, mirror_axes, disable_tta: bool, step_size: float) -> dict:
    """What ``validation/validation_settings.json`` records; read by find_best_config to flag validations
    made unlike upstream's (no test-time mirroring, another step size)."""
    deviations = []
    if disable_tta:
        deviations.append("no test-time mirroring (--val_disable_tta; upstream's validation mirrors)")
    if step_size != DEFAULT_STEP_SIZE:
        deviations.append(f"tile step size {step_size} (--val_step_size; upstream's is {DEFAULT_STEP_SIZE})")
    return {"checkpoint": Path(checkpoint_path).name, "disable_tta": bool(disable_tta),
            "mirror_axes": [int(a) for a in (mirror_axes or ())], "step_size": float(step_size),
            "deviations": deviations}


def validate_fold(network, job, plan, val_ids: list[str], mirror_axes, checkpoint_path,
                  save_probabilities: bool = False, disable_tta: bool = False,
                  step_size: float = DEFAULT_STEP_SIZE, after_export=None, evaluate: bool = True) -> dict | None:
    """Predict ``val_ids`` into ``fold_K/validation`` and evaluate them. ``mirror_axes``: the model's
    test-time mirroring, not used with ``disable_tta``; ``step_size``: tile overlap (upstream 0.5).

    Data-parallel final validation (one rank's share of the cases): ``after_export`` is called once
    the predictor exists (rank 0 exports the static graph before the other ranks look for it), and
    ``evaluate=False`` leaves the metrics to :func:`summarize_validation` once every rank is done."""
    step_size = check_step_size(step_size, "--val_step_size")
    if disable_tta:
        mirror_axes = None
    network.deep_supervision = False
    network.eval()
    if disable_tta:
        log.info("final validation without test-time mirroring (--val_disable_tta): faster, but not upstream's "
                 "validation (its Dice is usually a little lower)")
    labels = LabelInfo.from_dataset_json(job.dataset_json)
    # CPU: Paddle Inference (oneDNN) in float32 when it works, else the eager network; GPU: float16 autocast
    predict = CasePredictor(lambda: network, checkpoint_path, num_network_inputs(job.dataset_json, plan.previous_stage),
                            plan.patch_size, labels.num_segmentation_heads, device=job.device,
                            precision=resolve_precision("fp32" if job.device == "cpu" else "auto", job.device))
    if after_export is not None:
        after_export()
    log.info("final validation uses the %s network", predict.backend)
    rw = reader_writer_by_name(job.plans["image_reader_writer"])
    out_dir = job.fold_dir / "validation"
    targets = next_stages(job.plans, job.configuration, job.preprocessed_dataset_dir, job.model_dir)
    (out_dir / VALIDATION_SETTINGS_FILE).unlink(missing_ok=True)  # rewritten when this validation is complete
    t0 = time.perf_counter()
    predict_preprocessed_cases(predict, val_ids, job.preprocessed_dataset_dir / plan.data_identifier, job.plans,
                               job.configuration, job.dataset_json, out_dir, rw, mirror_axes=mirror_axes,
                               step_size=step_size,
                               previous_stage_dir=job.previous_stage_dir, next_stage_targets=targets,
                               save_probabilities=save_probabilities,
                               progress=job.progress_bar and job.dist.is_main)
    seconds = time.perf_counter() - t0
    if targets:
        log.info("inputs for %s written to %s", ", ".join(t.name for t in targets),
                 ", ".join(str(t.output_folder) for t in targets))
    if not evaluate:
        log.info("final validation: %d cases predicted in %.1f s", len(val_ids), seconds)
        return None
    return summarize_validation(job, checkpoint_path, mirror_axes, disable_tta, step_size, len(val_ids), seconds)


def summarize_validation(job, checkpoint_path, mirror_axes, disable_tta: bool, step_size: float, num_cases: int,
                         seconds: float | None = None) -> dict:
    """Record the validation settings and evaluate every case in ``fold_K/validation`` → ``summary.json``."""
    labels = LabelInfo.from_dataset_json(job.dataset_json)
    rw = reader_writer_by_name(job.plans["image_reader_writer"])
    out_dir = job.fold_dir / "validation"
    write_json_atomic(out_dir / VALIDATION_SETTINGS_FILE,
                      validation_settings(checkpoint_path, None if disable_tta else mirror_axes, disable_tta,
                                          step_size))
    summary = compute_metrics_on_folder(job.preprocessed_dataset_dir / "gt_segmentations", out_dir,
                                        out_dir / "summary.json", rw, job.dataset_json["file_ending"],
                                        labels.foreground_regions if labels.has_regions else labels.foreground_labels,
                                        labels.ignore_label, chill=True)
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    names = class_names(job.dataset_json)
    log.info("final validation: %d cases%s; mean foreground Dice %.4f (%s)", num_cases, took,
             summary["foreground_mean"]["Dice"],
             ", ".join(f"{names.get(k, k)} {v['Dice']:.4f}" for k, v in summary["mean"].items()))
    return summary
