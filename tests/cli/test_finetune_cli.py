"""Fine-tuning an upstream nnU-Net v2 model as a user does it (issue 11 item 5), on a few bundled-sample cases:
pnnunet_move_plans_between_datasets → pnnunet_preprocess → pnnunet_train --pretrained_weights checkpoint_final.pth,
interrupted and resumed with --c (the weights are not applied again); a checkpoint that does not fit is refused
with exit code 1 before anything of the fold is written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from pnnunet.cli import move_plans_between_datasets as move_cli  # noqa: E402
from pnnunet.cli import plan_and_preprocess as preprocess_cli  # noqa: E402
from pnnunet.cli import train as train_cli  # noqa: E402
from pnnunet.runtime.torch_checkpoint import read_torch_checkpoint  # noqa: E402
from pnnunet.training import trainer as trainer_module  # noqa: E402
from tests.planning.test_move_plans import SOURCE_PLANS, hippocampus_target  # noqa: E402
from tests.training.test_pretrained import MODELS  # noqa: E402

TARGET = "Dataset010_HippocampusSample"
PLANS = "nnUNetPlansTinyFrom4"
PTH = MODELS / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres" / "fold_0" / "checkpoint_final.pth"
CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007",
         "hippocampus_008")
TRAIN = ["3d_fullres", "0", "-d", "10", "-p", PLANS, "-device", "cpu", "--epochs", "2", "--iterations_per_epoch", "1",
         "--val_iterations_per_epoch", "1", "--num_workers", "0", "--no_pbar", "--val_disable_tta", "-step_size", "1"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Source Dataset004 with upstream's tiny plans (preprocessed folder only), target raw dataset; the plans
    moved and the target preprocessed with them."""
    root = tmp_path_factory.mktemp("finetune")
    mp = pytest.MonkeyPatch()
    for name in ("raw", "preprocessed", "results"):
        mp.setenv(f"pnnunet_{name}", str(root / name))
    (root / "preprocessed" / "Dataset004_Hippocampus").mkdir(parents=True)
    shutil.copyfile(SOURCE_PLANS["nnUNetPlansTiny"], root / "preprocessed" / "Dataset004_Hippocampus"
                    / "nnUNetPlansTiny.json")
    hippocampus_target(root / "raw" / TARGET, CASES)
    assert move_cli.main(["-s", "4", "-t", "10", "-sp", "nnUNetPlansTiny", "-tp", PLANS]) == 0
    assert preprocess_cli.main_preprocess(["-d", "10", "-p", PLANS, "-c", "3d_fullres", "-np", "1", "--no_pbar"]) == 0
    yield root
    mp.undo()


def _results_files(root):
    return sorted(p for p in (root / "results").rglob("*") if p.is_file()) if (root / "results").exists() else []


def test_a_checkpoint_that_does_not_fit_exits_1_and_writes_nothing(workspace, capsys):
    pth_2d = MODELS / "nnUNetTrainer__nnUNetPlansTiny__2d" / "fold_0" / "checkpoint_final.pth"
    assert train_cli.main(TRAIN + ["-pretrained_weights", str(pth_2d)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (f"{pth_2d}: the nnU-Net v2 weights do not fit the network of plans {PLANS} 3d_fullres of {TARGET} "
            "(the checkpoint was trained on Dataset004_Hippocampus, plans nnUNetPlansTiny, 2d): parameter "
            "encoder.stages.0.convs.0.conv.weight is [4, 1, 3, 3] in the checkpoint but [4, 1, 3, 3, 3] in this "
            "network") in err
    assert f"fix: move the plans first with pnnunet_move_plans_between_datasets -s Dataset004_Hippocampus -t {TARGET}" \
           in err
    assert _results_files(workspace) == []


def test_finetune_from_upstream_pth_then_resume_does_not_reapply(workspace, monkeypatch, capsys):
    applied, loaded = [], []
    real_apply, real_load, real_epoch = (trainer_module.apply_pretrained_weights, train_cli.load_pretrained_weights,
                                         trainer_module.Trainer._run_epoch)

    def spy_apply(network, pretrained, *target):
        real_apply(network, pretrained, *target)
        applied.append({k: v.numpy().copy() for k, v in network.state_dict().items()})

    def spy_load(*a, **k):
        loaded.append(a)
        return real_load(*a, **k)

    def interrupt_after_first_epoch(self, epoch, *a):
        real_epoch(self, epoch, *a)
        raise KeyboardInterrupt  # the user's Ctrl-C once checkpoint_latest of epoch 1 is written

    monkeypatch.setattr(trainer_module, "apply_pretrained_weights", spy_apply)
    monkeypatch.setattr(train_cli, "load_pretrained_weights", spy_load)
    monkeypatch.setattr(trainer_module.Trainer, "_run_epoch", interrupt_after_first_epoch)
    argv = TRAIN + ["--pretrained_weights", str(PTH), "--save_every", "1"]
    assert train_cli.main(argv) == 130
    fold = workspace / "results" / TARGET / f"pnnunetTrainer__{PLANS}__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_latest.pdparams").is_file()
    assert len(loaded) == 1 and len(applied) == 1
    upstream = read_torch_checkpoint(PTH)["network_weights"]
    np.testing.assert_array_equal(applied[0]["encoder.stages.0.convs.0.conv.weight"],
                                  upstream["encoder.stages.0.0.convs.0.conv.weight"])
    np.testing.assert_array_equal(applied[0]["decoder.transpconvs.1.weight"], upstream["decoder.transpconvs.1.weight"])
    assert "segmentation heads not taken" in (fold / "training_log.txt").read_text()

    monkeypatch.setattr(trainer_module.Trainer, "_run_epoch", real_epoch)
    capsys.readouterr()
    assert train_cli.main(argv + ["--c"]) == 0
    out = capsys.readouterr().out
    assert len(loaded) == 1 and len(applied) == 1  # neither read nor applied again
    assert f"--pretrained_weights {PTH} are not read again" in out
    assert (fold / "checkpoint_final.pdparams").is_file() and (fold / "validation" / "summary.json").is_file()
    log_text = (fold / "training_log.txt").read_text()
    assert "resumed from checkpoint_latest.pdparams at epoch 1" in log_text and "epoch 1 | train_loss" in log_text
