"""Prediction of already preprocessed cases (a fold's held-out cases in its final validation).

Each case is read from the configuration's preprocessed folder, gets the previous stage's
segmentation as extra input channels for a cascade stage, is predicted with the sliding window and
exported in its original geometry; a stage with a ``next_stage`` also writes the segmentation in
the next stage's preprocessed grid to ``predicted_next_stage/<next stage>/`` (its training input).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pnnunet.dataset.labels import LabelInfo
from pnnunet.imageio import ImageIO
from pnnunet.inference.case_progress import CaseProgress
from pnnunet.inference.export_prediction import export_prediction, logits_to_next_stage_segmentation
from pnnunet.inference.case_predictor import CasePredictor
from pnnunet.inference.sliding_window import count_tiles, mirror_combinations
from pnnunet.plans import ConfigurationPlan
from pnnunet.preprocessing import previous_stage as ps
from pnnunet.preprocessing.storage import load_preprocessed_case, preprocessed_case_shape

log = logging.getLogger(__name__)

TILE_BAR_MIN_PASSES = 32  # a case with at least this many network passes (tiles × mirrorings) gets a tile bar


@dataclass(frozen=True)
class NextStage:
    """A later cascade stage that takes this stage's segmentations as input."""

    name: str
    preprocessed_folder: Path  # the next stage's preprocessed cases (their grid)
    output_folder: Path        # <model>/predicted_next_stage/<name>


def next_stages(plans: dict, configuration: str, preprocessed_dataset_dir: Path, model_dir: Path) -> list[NextStage]:
    """The next stages of ``configuration`` (none unless it is a cascade's low-resolution stage)."""
    plan = ConfigurationPlan.from_plans(plans, configuration)
    return [NextStage(name, preprocessed_dataset_dir / ConfigurationPlan.from_plans(plans, name).data_identifier,
                      ps.next_stage_folder(model_dir, name))
            for name in ps.next_stage_names(plan.raw)]


def _export_next_stages(logits: np.ndarray, case: str, plans: dict, configuration: str, dataset_json: dict,
                        stages: Sequence[NextStage]) -> None:
    for stage in stages:
        shape = preprocessed_case_shape(stage.preprocessed_folder, case)
        if shape is None:
            log.warning("%s: not preprocessed for %s, so its input for that stage is not written (fix: "
                        "pnnunet_plan_and_preprocess -c %s, then rerun the validation with --val)", case, stage.name,
                        stage.name)
            continue
        seg = logits_to_next_stage_segmentation(logits, plans, configuration, shape[1:], dataset_json)
        ps.save_next_stage_segmentation(stage.output_folder, case, seg,
                                        ConfigurationPlan.from_plans(plans, stage.name).patch_size)


def predict_preprocessed_cases(predict: CasePredictor, cases: Sequence[str], preprocessed_folder: Path, plans: dict,
                               configuration: str, dataset_json: dict, output_folder: Path, reader_writer: ImageIO, *,
                               mirror_axes: Sequence[int] | None, step_size: float = 0.5,
                               previous_stage_dir: Path | None = None, next_stage_targets: Sequence[NextStage] = (),
                               save_probabilities: bool = False, progress: bool = True) -> None:
    """Predict ``cases`` of ``preprocessed_folder`` into ``output_folder/CASE<file_ending>``.

    ``predict``: the fold's :class:`CasePredictor`; ``mirror_axes`` None or empty: no test-time mirroring;
    ``step_size``: tile overlap (0.5 as upstream). Each case logs its tiles, mirrorings, time and the estimated
    remaining time; with ``progress``, cases of at least ``TILE_BAR_MIN_PASSES`` network passes also show a bar
    over their tiles.
    """
    plan = ConfigurationPlan.from_plans(plans, configuration)
    labels = LabelInfo.from_dataset_json(dataset_json)
    output_folder.mkdir(parents=True, exist_ok=True)
    if previous_stage_dir is not None:
        ps.check_previous_stage_available(previous_stage_dir, list(cases), plan.previous_stage, configuration)
    mirror_axes = tuple(mirror_axes or ()) or None
    mirrorings = len(mirror_combinations(mirror_axes))
    tiles = [count_tiles(preprocessed_case_shape(preprocessed_folder, c)[1:], plan.patch_size, step_size)
             for c in cases]
    tracker = CaseProgress(tiles, mirrorings)
    for i, case in enumerate(tqdm(cases, desc="validation", disable=not progress)):
        start = time.perf_counter()
        data, _, props = load_preprocessed_case(preprocessed_folder, case, mmap=False)
        if previous_stage_dir is not None:
            prev = ps.load_previous_stage_segmentation(previous_stage_dir, case, data.shape[1:])
            data = ps.append_previous_stage(data, prev, labels.foreground_labels)
        logits = predict(np.asarray(data), mirror_axes, step_size,
                         progress=progress and tiles[i] * mirrorings >= TILE_BAR_MIN_PASSES)
        del data
        export_prediction(logits, props, plans, configuration, dataset_json, output_folder / case, reader_writer,
                          save_probabilities=save_probabilities)
        _export_next_stages(logits, case, plans, configuration, dataset_json, next_stage_targets)
        tracker.case_done(i, case, time.perf_counter() - start)
