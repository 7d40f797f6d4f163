"""End to end on a one-case dataset (one real Hippocampus case of the bundled sample, tiny plans):
fold ``all`` needs no 5-fold split, trains and validates; ``--val`` reruns the validation without
repeating the training schedule, here without mirroring and with step size 1 (reference §5.9, §5.10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pnnunet.cli.plan_and_preprocess import main as plan_and_preprocess
from pnnunet.cli.train import main as train
from tests.e2e_workspace import run_main, sample_dataset

pytestmark = pytest.mark.e2e
pytest.importorskip("paddle")

DATASET = "Dataset902_OneCase"
CASE = "hippocampus_001"
FOLD = Path("res") / DATASET / "pnnunetTrainer__pnnunetTinyPlans__3d_fullres" / "fold_all"
TRAIN = ["3d_fullres", "all", "-d", "902", "-p", "pnnunetTinyPlans", "--num_workers", "0", "-device", "cpu",
         "--no_pbar"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("e2e_small")
    sample_dataset(ws, DATASET, {"background": 0, "Anterior": 1, "Posterior": 2}, [CASE])
    assert run_main(ws, plan_and_preprocess, "-d", "902", "-pl", "tiny", "-c", "3d_fullres", "-np", "1", "--no_pbar") == 0
    assert run_main(ws, train, *TRAIN, "--epochs", "1", "--iterations_per_epoch", "2", "--val_iterations_per_epoch",
                 "1") == 0
    return ws


def test_one_case_trains_fold_all_and_validates(trained):
    fold = trained / FOLD
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert [c["prediction_file"].endswith(f"{CASE}.nii.gz") for c in summary["metric_per_case"]] == [True]
    assert (fold / "validation" / f"{CASE}.nii.gz").is_file()
    assert not (trained / "pre" / DATASET / "splits_final.json").exists()  # fold all needs no split
    log = (fold / "training_log.txt").read_text()
    assert "1 training, 1 validation cases" in log
    assert "case 1/1 hippocampus_001: 8 tiles × 8 mirrorings in" in log  # the validation's per-case line
    settings = json.loads((fold / "validation" / "validation_settings.json").read_text())
    assert settings["disable_tta"] is False and settings["mirror_axes"] == [0, 1, 2] and settings["step_size"] == 0.5


def test_val_needs_no_epochs_flag_and_takes_the_validation_options(trained, capsys):
    # trained with --epochs 1; the default schedule is 1000 epochs: validation alone does not care
    assert run_main(trained, train, *TRAIN, "--val", "--val_disable_tta", "-step_size", "1") == 0
    assert "mean foreground Dice" in capsys.readouterr().out
    # patch 24x40x24 on the 36x50x35 case: 2x2x2 tiles at step 0.5 and at step 1, mirrored 8 times before
    assert "case 1/1 hippocampus_001: 8 tiles, no mirroring in" in (trained / FOLD / "training_log.txt").read_text()
    settings = json.loads((trained / FOLD / "validation" / "validation_settings.json").read_text())
    assert settings["disable_tta"] is True and settings["mirror_axes"] == [] and settings["step_size"] == 1.0
    # (resuming with --c still needs the same --epochs: tests/training/test_trainer_split.py)
