"""Final validation of a fold: sliding-window prediction of the held-out cases, export in the
original geometry, and per-case Dice into ``validation/summary.json`` (reference §5.10)."""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm import tqdm

from pnnunet.dataset.labels import LabelInfo

log = logging.getLogger(__name__)


def network_input_channels(job) -> int:
    return len(job.dataset_json.get("channel_names") or job.dataset_json["modality"])


def validate_fold(network, job, plan, val_ids: list[str], mirror_axes, checkpoint_path,
                  save_probabilities: bool = False) -> dict:
    from pnnunet.evaluation.metrics import compute_metrics_on_folder
    from pnnunet.imageio import reader_writer_by_name
    from pnnunet.inference.export_prediction import export_prediction
    from pnnunet.inference.sliding_window import predict_sliding_window
    from pnnunet.preprocessing.storage import load_preprocessed_case

    from pnnunet.inference.static_graph import make_predict_fn

    network.deep_supervision = False
    network.eval()
    # Paddle Inference (oneDNN) when it works, else the eager network
    predict, backend = make_predict_fn(lambda: network, checkpoint_path, network_input_channels(job),
                                       len(plan.patch_size), device=job.device)
    log.info("final validation uses the %s network", backend)
    labels = LabelInfo.from_dataset_json(job.dataset_json)
    rw = reader_writer_by_name(job.plans["image_reader_writer"])
    out_dir = job.fold_dir / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = job.preprocessed_dataset_dir / plan.data_identifier
    t0 = time.perf_counter()
    for case in tqdm(val_ids, desc="validation", disable=not job.progress_bar):
        data, _, props = load_preprocessed_case(folder, case, mmap=False)
        logits = predict_sliding_window(predict, np.asarray(data), plan.patch_size, labels.num_segmentation_heads,
                                        step_size=0.5, mirror_axes=tuple(mirror_axes) or None)
        export_prediction(logits, props, job.plans, job.configuration, job.dataset_json, out_dir / case, rw,
                          save_probabilities=save_probabilities)
    seconds = time.perf_counter() - t0
    summary = compute_metrics_on_folder(job.preprocessed_dataset_dir / "gt_segmentations", out_dir,
                                        out_dir / "summary.json", rw, job.dataset_json["file_ending"],
                                        labels.foreground_regions if labels.has_regions else labels.foreground_labels,
                                        labels.ignore_label, chill=True)
    log.info("final validation: %d cases in %.1f s; mean foreground Dice %.4f (%s)", len(val_ids), seconds,
             summary["foreground_mean"]["Dice"],
             ", ".join(f"{labels.names.get(int(k), k)} {v['Dice']:.4f}" for k, v in summary["mean"].items()))
    return summary
