"""The work a prediction hands to its background processes: read + preprocess a case, export a case.

Paddle-free on purpose (a test checks it): every ``-npp``/``-nps`` worker imports this module, and a worker
that imported Paddle would start ~1.3 s slower and keep ~0.25 GiB more (importing this module: 1.05 s,
0.23 GiB peak RSS; ``pnnunet.inference.predictor``, which imports Paddle: 2.3-2.5 s, 0.47 GiB; issue 11).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pnnunet.dataset.labels import LabelInfo
from pnnunet.imageio import ImageIO
from pnnunet.inference.export_prediction import export_prediction
from pnnunet.preprocessing.preprocessor import preprocess_case_files
from pnnunet.preprocessing.previous_stage import append_previous_stage


def preprocess_for_inference(image_files: Sequence[Path], plans: dict, configuration: str, dataset_json: dict,
                             reader_writer: ImageIO, previous_stage_file: Path | None = None
                             ) -> tuple[np.ndarray, dict]:
    """Read and preprocess one case for prediction (reference §7.2): float32 (C, x, y, z) + properties.

    A cascade stage gets ``previous_stage_file``, the previous stage's segmentation of the case: it is
    transposed, cropped and resampled like a label map and appended one-hot (§7.7), giving
    ``C + #foreground labels`` channels.
    """
    data, seg, properties = preprocess_case_files(image_files, previous_stage_file, plans, configuration,
                                                  dataset_json, reader_writer, class_locations=False)
    if previous_stage_file is not None:
        labels = LabelInfo.from_dataset_json(dataset_json)
        data = append_previous_stage(data, seg, labels.foreground_labels)
    return data, properties


def export_case(logits: np.ndarray, properties: dict, plans: dict, configuration: str, dataset_json: dict,
                output_base: Path, reader_writer: ImageIO, save_probabilities: bool) -> Path:
    """Write one case's segmentation (and probabilities) in its original geometry (§7.6)."""
    return export_prediction(logits, properties, plans, configuration, dataset_json, output_base, reader_writer,
                             save_probabilities)
