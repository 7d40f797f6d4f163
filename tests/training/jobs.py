"""A small training job on fake preprocessed cases (real default plans of a 20³ dataset), for trainer tests."""

from __future__ import annotations

import numpy as np

from pnnunet.planning.planner import plan_experiment
from pnnunet.preprocessing.storage import save_preprocessed_case
from pnnunet.training.config import TrainConfig
from pnnunet.training.trainer import TrainingJob

DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 3,
                "file_ending": ".nii.gz"}


def small_plans() -> dict:
    intensities = {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0, "percentile_00_5": 0.0,
                   "percentile_99_5": 1.0, "std": 1.0}
    fingerprint = {"foreground_intensity_properties_per_channel": {"0": intensities},
                   "median_relative_size_after_cropping": 1.0, "shapes_after_crop": [[20, 20, 20]] * 3,
                   "spacings": [[1.0, 1.0, 1.0]] * 3}
    return plan_experiment(fingerprint, DATASET_JSON, "Dataset001_X", "SimpleITKIO")


def small_job(tmp_path, n_cases: int, fold, epochs: int = 1000, shape=(4, 4, 4)) -> TrainingJob:
    """``n_cases`` zero cases ``c0``, ``c1``, … of ``shape`` in ``tmp_path/pre``."""
    plans = small_plans()
    pre = tmp_path / "pre"
    folder = pre / plans["configurations"]["3d_fullres"]["data_identifier"]
    for i in range(n_cases):
        save_preprocessed_case(folder, f"c{i}", np.zeros((1, *shape)), np.zeros((1, *shape)), {})
    return TrainingJob(pre, tmp_path / "res" / "pnnunetTrainer__pnnunetPlans__3d_fullres", plans, "3d_fullres",
                       fold, DATASET_JSON, "pnnunetTrainer", TrainConfig(num_epochs=epochs))
