"""Final validation of a fold: sliding-window prediction of the held-out cases, export in the
original geometry, and per-case Dice into ``validation/summary.json`` (reference §5.10).

Cascade stages get the previous stage's segmentation as extra input channels; a stage with a
``next_stage`` also writes each case's segmentation in the next stage's preprocessed grid to
``predicted_next_stage/<next stage>/`` (the next stage's training input).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm import tqdm

from pnnunet.dataset.labels import LabelInfo
from pnnunet.preprocessing import previous_stage as ps

log = logging.getLogger(__name__)


def _next_stage_targets(job) -> list[tuple[str, object]]:
    """(next stage name, its preprocessed folder) for every next stage of the fold's configuration."""
    from pnnunet.planning.plans import ConfigurationPlan

    targets = []
    for name in ps.next_stage_names(job.plan.raw):
        nxt = ConfigurationPlan.from_plans(job.plans, name)
        targets.append((name, job.preprocessed_dataset_dir / nxt.data_identifier))
    return targets


def _export_next_stages(logits: np.ndarray, case: str, job, targets) -> None:
    from pnnunet.inference.export_prediction import logits_to_next_stage_segmentation

    for name, folder in targets:
        data_file = folder / f"{case}.npy"
        if not data_file.is_file():
            log.warning("%s: not preprocessed for %s, so its input for that stage is not written (fix: "
                        "pnnunet_plan_and_preprocess -c %s, then pnnunet_train %s %s --val)", case, name,
                        name, job.configuration, job.fold)
            continue
        shape = np.load(data_file, mmap_mode="r").shape[1:]
        seg = logits_to_next_stage_segmentation(logits, job.plans, job.configuration, shape, job.dataset_json)
        ps.save_next_stage_segmentation(ps.next_stage_folder(job.model_dir, name), case, seg)


def validate_fold(network, job, plan, val_ids: list[str], mirror_axes, checkpoint_path,
                  save_probabilities: bool = False) -> dict:
    from pnnunet.evaluation.metrics import compute_metrics_on_folder
    from pnnunet.imageio import reader_writer_by_name
    from pnnunet.inference.export_prediction import export_prediction
    from pnnunet.inference.sliding_window import predict_sliding_window
    from pnnunet.inference.static_graph import make_predict_fn
    from pnnunet.preprocessing.storage import load_preprocessed_case

    network.deep_supervision = False
    network.eval()
    # Paddle Inference (oneDNN) when it works, else the eager network
    predict, backend = make_predict_fn(lambda: network, checkpoint_path,
                                       ps.num_network_inputs(job.dataset_json, plan.previous_stage),
                                       len(plan.patch_size), device=job.device)
    log.info("final validation uses the %s network", backend)
    labels = LabelInfo.from_dataset_json(job.dataset_json)
    rw = reader_writer_by_name(job.plans["image_reader_writer"])
    out_dir = job.fold_dir / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = job.preprocessed_dataset_dir / plan.data_identifier
    prev_dir = job.previous_stage_dir
    if prev_dir is not None:
        ps.check_previous_stage_available(prev_dir, val_ids, plan.previous_stage, job.configuration)
    next_targets = _next_stage_targets(job)
    t0 = time.perf_counter()
    for case in tqdm(val_ids, desc="validation", disable=not job.progress_bar):
        data, _, props = load_preprocessed_case(folder, case, mmap=False)
        if prev_dir is not None:
            prev = ps.load_previous_stage_segmentation(prev_dir, case, data.shape[1:])
            data = ps.append_previous_stage(data, prev, labels.foreground_labels)
        logits = predict_sliding_window(predict, np.asarray(data), plan.patch_size, labels.num_segmentation_heads,
                                        step_size=0.5, mirror_axes=tuple(mirror_axes) or None)
        del data
        export_prediction(logits, props, job.plans, job.configuration, job.dataset_json, out_dir / case, rw,
                          save_probabilities=save_probabilities)
        _export_next_stages(logits, case, job, next_targets)
    seconds = time.perf_counter() - t0
    summary = compute_metrics_on_folder(job.preprocessed_dataset_dir / "gt_segmentations", out_dir,
                                        out_dir / "summary.json", rw, job.dataset_json["file_ending"],
                                        labels.foreground_regions if labels.has_regions else labels.foreground_labels,
                                        labels.ignore_label, chill=True)
    log.info("final validation: %d cases in %.1f s; mean foreground Dice %.4f (%s)", len(val_ids), seconds,
             summary["foreground_mean"]["Dice"],
             ", ".join(f"{labels.names.get(int(k), k)} {v['Dice']:.4f}" for k, v in summary["mean"].items()))
    if next_targets:
        log.info("inputs for %s written to %s", ", ".join(n for n, _ in next_targets),
                 ", ".join(str(ps.next_stage_folder(job.model_dir, n)) for n, _ in next_targets))
    return summary
