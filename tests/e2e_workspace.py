"""What the in-process end-to-end tests share: a workspace's three roots, running a command's ``main`` in this
process with them (no interpreter and Paddle start-up per command: the tests stay fast), and a raw dataset
made of bundled-sample cases with a fingerprint from few samples."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_SAMPLE


def roots(ws: Path) -> dict[str, str]:
    return dict(pnnunet_raw=str(ws / "raw"), pnnunet_preprocessed=str(ws / "pre"), pnnunet_results=str(ws / "res"))


def run_main(ws: Path, main: Callable[[list[str]], int], *args: str) -> int:
    """``main(args)`` with the workspace's roots in the environment; returns its exit code."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in roots(ws).items():
            mp.setenv(key, value)
        return main(list(args))


def sample_dataset(ws: Path, name: str, labels: dict, cases: Sequence[str], test_cases: Sequence[str] = (),
                   write_label: Callable[[Path, Path], None] = shutil.copyfile, **dataset_json) -> Path:
    """``ws/raw/name`` from bundled-sample cases (training cases from imagesTr/labelsTr, test cases from
    imagesTs/labelsTs into imagesTs/labelsTs), each training label written by ``write_label(src, dst)``; extra
    dataset.json keys from ``dataset_json``. Its fingerprint goes to ``ws/pre/name`` from 1e5 foreground
    samples instead of upstream's 1e8 (17 s of sampling and percentiles); MRI z-scoring does not use them,
    and plan_and_preprocess reuses an existing fingerprint."""
    from pnnunet.dataset.cases import get_training_cases
    from pnnunet.dataset.dataset_json import load_dataset_json
    from pnnunet.fileio import write_json_atomic
    from pnnunet.imageio.simpleitk_io import SimpleITKIO
    from pnnunet.planning.fingerprint import extract_fingerprint

    raw = ws / "raw" / name
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
        (raw / sub).mkdir(parents=True)
    for case in cases:
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTr" / f"{case}.nii.gz", raw / "imagesTr" / f"{case}_0000.nii.gz")
        write_label(BUNDLED_SAMPLE / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz")
    for case in test_cases:
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / f"{case}.nii.gz", raw / "imagesTs" / f"{case}_0000.nii.gz")
        shutil.copyfile(BUNDLED_SAMPLE / "labelsTs" / f"{case}.nii.gz", raw / "labelsTs" / f"{case}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels,
                                                  "numTraining": len(cases), "file_ending": ".nii.gz",
                                                  **dataset_json}))
    found = get_training_cases(raw, load_dataset_json(raw / "dataset.json"))
    fingerprint = extract_fingerprint(found, SimpleITKIO(), num_processes=0, progress=False, num_total_samples=1e5)
    write_json_atomic(ws / "pre" / name / "dataset_fingerprint.json", fingerprint)
    return raw
