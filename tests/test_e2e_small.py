"""End to end on a one-case dataset (one real Hippocampus case of the bundled sample, tiny plans):
fold ``all`` needs no 5-fold split, trains and validates; ``--val`` reruns the validation without
repeating the training schedule (reference §5.9, §5.10)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pnnunet.cli.plan_and_preprocess import main as plan_and_preprocess
from tests.conftest import BUNDLED_SAMPLE

pytestmark = pytest.mark.e2e
pytest.importorskip("paddle")

DATASET = "Dataset902_OneCase"
CASE = "hippocampus_001"
FOLD = Path("res") / DATASET / "pnnunetTrainer__pnnunetTinyPlans__3d_fullres" / "fold_all"
TRAIN = ["3d_fullres", "all", "-d", "902", "-p", "pnnunetTinyPlans", "--num_workers", "0", "-device", "cpu",
         "--no_pbar"]


def _roots(ws: Path) -> dict:
    return dict(pnnunet_raw=str(ws / "raw"), pnnunet_preprocessed=str(ws / "pre"), pnnunet_results=str(ws / "res"))


def _cli(ws: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **_roots(ws))
    return subprocess.run([sys.executable, "-m", f"pnnunet.cli.{module}", *args], env=env, capture_output=True,
                          text=True, check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("e2e_small")
    raw = ws / "raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    shutil.copyfile(BUNDLED_SAMPLE / "imagesTr" / f"{CASE}.nii.gz", raw / "imagesTr" / f"{CASE}_0000.nii.gz")
    shutil.copyfile(BUNDLED_SAMPLE / "labelsTr" / f"{CASE}.nii.gz", raw / "labelsTr" / f"{CASE}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    with pytest.MonkeyPatch.context() as mp:  # in this process: planning needs no Paddle, saves a start-up
        for key, value in _roots(ws).items():
            mp.setenv(key, value)
        assert plan_and_preprocess(["-d", "902", "-pl", "tiny", "-c", "3d_fullres", "-np", "1", "--no_pbar"]) == 0
    out = _cli(ws, "train", *TRAIN, "--epochs", "1", "--iterations_per_epoch", "2", "--val_iterations_per_epoch", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mean foreground Dice" in out.stdout
    return ws


def test_one_case_trains_fold_all_and_validates(trained):
    fold = trained / FOLD
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert [c["prediction_file"].endswith(f"{CASE}.nii.gz") for c in summary["metric_per_case"]] == [True]
    assert (fold / "validation" / f"{CASE}.nii.gz").is_file()
    assert not (trained / "pre" / DATASET / "splits_final.json").exists()  # fold all needs no split
    log = (fold / "training_log.txt").read_text()
    assert "1 training, 1 validation cases" in log


def test_val_needs_no_epochs_flag(trained):
    # trained with --epochs 1; the default schedule is 1000 epochs: validation alone does not care
    out = _cli(trained, "train", *TRAIN, "--val")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mean foreground Dice" in out.stdout
    # (resuming with --c still needs the same --epochs: tests/training/test_trainer_split.py)
