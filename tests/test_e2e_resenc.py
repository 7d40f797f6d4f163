"""End to end with upstream's ResEnc M preset on the bundled sample: ``-pl ResEncM`` plans (equal to
upstream's), a tiny override of the network and schedule in a custom configuration, training (the trainer
builds the ResidualEncoderUNet from the plans), find_best_config and ``pnnunet_predict`` following it."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pnnunet.cli.find_best_config import main as find_best_config
from pnnunet.cli.plan_and_preprocess import main as plan_and_preprocess
from pnnunet.cli.predict import main as predict
from pnnunet.cli.train import main as train
from pnnunet.planning.compare import plan_differences
from tests.conftest import BUNDLED_SAMPLE, REPO
from tests.e2e_workspace import run_main

pytestmark = pytest.mark.e2e
pytest.importorskip("paddle")

DATASET = "Dataset004_Hippocampus_sample"
PLANS = "nnUNetResEncUNetMPlans"
CONFIG = "3d_fullres_tiny"
UPSTREAM_FINGERPRINT = REPO / "tests" / "data" / "upstream_preprocessed_b2nd" / "dataset_fingerprint.json"
UPSTREAM_PLANS = REPO / "tests" / "planning" / "expected_resenc" / "hippocampus_sample" / f"{PLANS}.json"
TEST_CASES = ("hippocampus_045", "hippocampus_049")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("e2e_resenc")
    pre = ws / "pre" / DATASET
    pre.mkdir(parents=True)
    # upstream's fingerprint of these 20 cases (pnnunet's equals it) instead of 1e8 intensity samples again
    shutil.copyfile(UPSTREAM_FINGERPRINT, pre / "dataset_fingerprint.json")
    assert run_main(ws, plan_and_preprocess, "-d", str(BUNDLED_SAMPLE), "-pl", "ResEncM", "-c", "3d_fullres",
                 "-np", "1", "--no_pbar") == 0
    # the tiny override: a custom configuration on the same preprocessed data, a narrow ResEnc, batch 2
    plans_file = pre / f"{PLANS}.json"
    plans = json.loads(plans_file.read_text())
    tiny = {"inherits_from": "3d_fullres", "batch_size": 2,
            "architecture": copy.deepcopy(plans["configurations"]["3d_fullres"]["architecture"])}
    tiny["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 16, 16]
    plans["configurations"][CONFIG] = tiny
    plans_file.write_text(json.dumps(plans, indent=2))
    assert run_main(ws, train, CONFIG, "0", "-d", "4", "-p", PLANS, "--epochs", "1", "--iterations_per_epoch", "2",
                 "--val_iterations_per_epoch", "1", "--num_workers", "0", "-device", "cpu", "--npz",
                 "--no_pbar") == 0
    images = ws / "imagesTs"
    images.mkdir()
    for case in TEST_CASES:
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / f"{case}.nii.gz", images / f"{case}.nii.gz")
    return ws


def test_resenc_m_plans_from_the_cli_equal_upstream(workspace):
    plans = json.loads((workspace / "pre" / DATASET / f"{PLANS}.json").read_text())
    plans["configurations"].pop(CONFIG)
    assert plan_differences(plans, json.loads(UPSTREAM_PLANS.read_text())) == []
    # 3d_fullres data is shared with the default plans, as upstream's ResEnc planners do
    assert plans["configurations"]["3d_fullres"]["data_identifier"] == "pnnunetPlans_3d_fullres"
    assert any((workspace / "pre" / DATASET / "pnnunetPlans_3d_fullres").iterdir())


def test_training_builds_the_residual_encoder_unet(workspace):
    from pnnunet.runtime.checkpoints import load_checkpoint

    fold = workspace / "res" / DATASET / f"pnnunetTrainer__{PLANS}__{CONFIG}" / "fold_0"
    ckpt = load_checkpoint(fold / "checkpoint_final.pdparams")
    weights = ckpt["network_weights"]
    assert "encoder.stem.convs.0.conv.weight" in weights
    assert list(weights["encoder.stages.3.blocks.5.conv2.conv.weight"].shape) == [16, 16, 3, 3, 3]  # 6 blocks
    assert list(weights["encoder.stages.1.blocks.0.skip.1.conv.weight"].shape) == [8, 4, 1, 1, 1]
    n_params = sum(int(np.prod(v.shape)) for v in weights.values())
    assert f"network ResidualEncoderUNet, {n_params:,} parameters" in (fold / "training_log.txt").read_text()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 4  # fold 0's validation cases, predicted by the ResEnc


def test_find_best_config_and_predict_follow_it(workspace):
    assert run_main(workspace, find_best_config, "-d", "4", "-c", CONFIG, "-p", PLANS, "-f", "0", "-np", "1") == 0
    info = json.loads((workspace / "res" / DATASET / "inference_instructions.json").read_text())
    chosen = info["best_model_or_ensemble"]["selected_model_or_models"]
    assert chosen == [{"configuration": CONFIG, "trainer": "pnnunetTrainer", "plans_identifier": PLANS}]
    out = workspace / "pred"
    assert run_main(workspace, predict, "-i", str(workspace / "imagesTs"), "-o", str(out), "-npp", "0", "-nps", "0",
                 "--no_pbar") == 0
    import SimpleITK as sitk

    for case in TEST_CASES:
        seg = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        img = sitk.ReadImage(str(BUNDLED_SAMPLE / "imagesTs" / f"{case}.nii.gz"))
        assert seg.GetSize() == img.GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}
