"""Tiny on-disk fixtures shared by the postprocessing, ensembling and model-selection tests.

Label maps are small 3D arrays written as ``.nii.gz`` with unit spacing; probabilities are made
by the tests and saved the way ``export_prediction(save_probabilities=True)`` saves them
(``CASE.npz`` key ``probabilities`` + ``CASE.json`` properties).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pnnunet.imageio import SimpleITKIO

FILE_ENDING = ".nii.gz"
PROPS = {"spacing": [1.0, 1.0, 1.0],
         "sitk_stuff": {"spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
                        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]}}
DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "alpha": 1, "beta": 2},
                "numTraining": 4, "file_ending": FILE_ENDING}
REGION_DATASET_JSON = {"channel_names": {"0": "MRI"},
                       "labels": {"background": 0, "whole": [1, 2], "core": 2},
                       "regions_class_order": [1, 2], "numTraining": 4, "file_ending": FILE_ENDING}


def plans(configurations=("2d", "3d_fullres")) -> dict:
    """A plans dict with what model selection reads (reader/writer, configuration names)."""
    return {"plans_name": "pnnunetPlans", "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "foreground_intensity_properties_per_channel": {},
            "configurations": {c: {"data_identifier": f"pnnunetPlans_{c}"} for c in configurations}}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_seg(path: Path, seg: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    SimpleITKIO().write_seg(np.asarray(seg, dtype=np.uint8), path, PROPS)
    return path


def read_seg(path: Path) -> np.ndarray:
    return SimpleITKIO().read_seg(path)[0][0].astype(np.uint8)


def write_probabilities(folder: Path, case: str, probabilities: np.ndarray, segmentation: np.ndarray | None = None
                        ) -> None:
    """``CASE.npz`` + ``CASE.json`` (+ ``CASE.nii.gz``, default: argmax) like a prediction with probabilities."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities.astype(np.float32))
    write_json(folder / f"{case}.json", PROPS)
    seg = np.argmax(probabilities, axis=0) if segmentation is None else segmentation
    write_seg(folder / f"{case}{FILE_ENDING}", seg)


def one_hot_probabilities(seg: np.ndarray, num_classes: int, confidence: float = 0.9) -> np.ndarray:
    """(K, *seg.shape) float32: ``confidence`` on the voxel's class, the rest spread evenly."""
    rest = (1.0 - confidence) / (num_classes - 1)
    p = np.full((num_classes, *seg.shape), rest, dtype=np.float32)
    for k in range(num_classes):
        p[k][seg == k] = confidence
    return p
