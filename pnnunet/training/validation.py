"""Final validation of a fold: the held-out cases predicted in their original geometry
(:mod:`pnnunet.inference.preprocessed`), then per-case Dice into ``validation/summary.json``
(reference §5.10)."""

from __future__ import annotations

import logging
import time

from pnnunet.dataset.labels import LabelInfo
from pnnunet.imageio import reader_writer_by_name
from pnnunet.inference.preprocessed import next_stages, predict_preprocessed_cases
from pnnunet.inference.case_predictor import CasePredictor
from pnnunet.inference.static_graph import resolve_precision
from pnnunet.metrics import compute_metrics_on_folder
from pnnunet.preprocessing.previous_stage import num_network_inputs

log = logging.getLogger(__name__)


def validate_fold(network, job, plan, val_ids: list[str], mirror_axes, checkpoint_path,
                  save_probabilities: bool = False) -> dict:
    network.deep_supervision = False
    network.eval()
    labels = LabelInfo.from_dataset_json(job.dataset_json)
    # CPU: Paddle Inference (oneDNN) in float32 when it works, else the eager network; GPU: float16 autocast
    predict = CasePredictor(lambda: network, checkpoint_path, num_network_inputs(job.dataset_json, plan.previous_stage),
                            plan.patch_size, labels.num_segmentation_heads, device=job.device,
                            precision=resolve_precision("fp32" if job.device == "cpu" else "auto", job.device))
    log.info("final validation uses the %s network", predict.backend)
    rw = reader_writer_by_name(job.plans["image_reader_writer"])
    out_dir = job.fold_dir / "validation"
    targets = next_stages(job.plans, job.configuration, job.preprocessed_dataset_dir, job.model_dir)
    t0 = time.perf_counter()
    predict_preprocessed_cases(predict, val_ids, job.preprocessed_dataset_dir / plan.data_identifier, job.plans,
                               job.configuration, job.dataset_json, out_dir, rw, mirror_axes=mirror_axes,
                               previous_stage_dir=job.previous_stage_dir, next_stage_targets=targets,
                               save_probabilities=save_probabilities, progress=job.progress_bar)
    seconds = time.perf_counter() - t0
    summary = compute_metrics_on_folder(job.preprocessed_dataset_dir / "gt_segmentations", out_dir,
                                        out_dir / "summary.json", rw, job.dataset_json["file_ending"],
                                        labels.foreground_regions if labels.has_regions else labels.foreground_labels,
                                        labels.ignore_label, chill=True)
    log.info("final validation: %d cases in %.1f s; mean foreground Dice %.4f (%s)", len(val_ids), seconds,
             summary["foreground_mean"]["Dice"],
             ", ".join(f"{labels.names.get(int(k), k)} {v['Dice']:.4f}" for k, v in summary["mean"].items()))
    if targets:
        log.info("inputs for %s written to %s", ", ".join(t.name for t in targets),
                 ", ".join(str(t.output_folder) for t in targets))
    return summary
