"""End to end on the bundled real sample: plan (tiny preset) → preprocess → train a few epochs →
kill → resume with --c → final validation → summary.json (reference §5.7–5.10)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pnnunet.training.lr_schedule import poly_lr
from tests.conftest import BUNDLED_SAMPLE

pytestmark = pytest.mark.e2e
EPOCHS = 4


def _env(ws: Path) -> dict:
    env = dict(os.environ)
    env.update(pnnunet_raw=str(ws / "raw"), pnnunet_preprocessed=str(ws / "pre"), pnnunet_results=str(ws / "res"),
               OMP_NUM_THREADS="1")
    return env


def _cli(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"pnnunet.cli.{module}", *args]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("e2e")
    subprocess.run(_cli("plan_and_preprocess", "-d", str(BUNDLED_SAMPLE), "-pl", "tiny", "-c", "3d_fullres", "-np",
                        "1", "--no_pbar"), env=_env(ws), check=True, capture_output=True, text=True)
    return ws


def test_train_kill_resume_validate(workspace):
    env = _env(workspace)
    args = ["3d_fullres", "0", "-p", "pnnunetTinyPlans", "--epochs", str(EPOCHS), "--iterations_per_epoch", "3",
            "--val_iterations_per_epoch", "2", "--num_workers", "0", "-device", "cpu", "--no_pbar"]
    fold = workspace / "res" / "Dataset004_Hippocampus_sample" / "pnnunetTrainer__pnnunetTinyPlans__3d_fullres" / "fold_0"
    latest = fold / "checkpoint_latest.pdparams"
    proc = subprocess.Popen(_cli("train", *args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (fold / "checkpoint_final.pdparams").exists()

    out = subprocess.run(_cli("train", *args, "--c"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    log = (fold / "training_log.txt").read_text()
    assert "resumed from checkpoint_latest" in log

    import paddle

    state = paddle.load(str(fold / "checkpoint_final.pdparams"))
    assert state["current_epoch"] == EPOCHS
    lrs = state["logging"]["lrs"]  # one entry per epoch, exactly the uninterrupted poly schedule
    assert lrs == pytest.approx([poly_lr(e, EPOCHS) for e in range(EPOCHS)], rel=1e-12)
    assert not latest.exists()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    splits = json.loads((workspace / "pre" / "Dataset004_Hippocampus_sample" / "splits_final.json").read_text())
    assert len(summary["metric_per_case"]) == len(splits[0]["val"]) == 4
    assert set(summary["mean"]) == {"1", "2"}
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    assert (fold / "progress.png").exists()
    assert "mean foreground Dice" in out.stdout

    # pnnunet_evaluate on the same validation folder gives the trainer's numbers (issue 4 must-show)
    ev = subprocess.run(_cli("evaluate", "-ref", str(workspace / "pre" / "Dataset004_Hippocampus_sample" /
                                                      "gt_segmentations"), "-pred", str(fold / "validation"), "-d", "4",
                             "--chill", "-o", str(workspace / "evaluate_summary.json")),
                        env=env, capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr[-2000:]
    again = json.loads((workspace / "evaluate_summary.json").read_text())
    assert again["foreground_mean"]["Dice"] == pytest.approx(summary["foreground_mean"]["Dice"], abs=1e-12)
    for label in ("1", "2"):
        assert again["mean"][label]["Dice"] == pytest.approx(summary["mean"][label]["Dice"], abs=1e-12)


UPSTREAM_PREPROCESSED = Path(__file__).resolve().parent / "data" / "upstream_preprocessed_b2nd"


def test_train_on_upstream_preprocessed_folder(tmp_path):
    """Upstream nnU-Net's own preprocessed folder (.b2nd + .pkl, nnUNetPlans.json) trains and validates as is.

    Only the network width in the copied plans is reduced (features 32…256 → 4…32) to keep the test fast;
    the cases, properties and everything else are upstream's files unchanged.
    """
    pre = tmp_path / "pre" / "Dataset004_Hippocampus"
    shutil.copytree(UPSTREAM_PREPROCESSED, pre, ignore=shutil.ignore_patterns("README.md"))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["conv_op"] == "torch.nn.modules.conv.Conv3d"  # upstream's plans, not ours
    arch["features_per_stage"] = [4, 8, 16, 32]
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans))
    (tmp_path / "raw").mkdir()
    out = subprocess.run(_cli("train", "3d_fullres", "0", "-d", "4", "-p", "nnUNetPlans", "--epochs", "1",
                              "--iterations_per_epoch", "2", "--val_iterations_per_epoch", "1", "--num_workers", "0",
                              "-device", "cpu", "--no_pbar"), env=_env(tmp_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 training, 1 validation cases" in out.stdout + out.stderr
    fold = tmp_path / "res" / "Dataset004_Hippocampus" / "pnnunetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    splits = json.loads((pre / "splits_final.json").read_text())
    assert [m["reference_file"].split("/")[-1] for m in summary["metric_per_case"]] == \
        [f"{c}.nii.gz" for c in splits[0]["val"]]
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    assert sorted(p.name for p in (pre / "nnUNetPlans_3d_fullres").iterdir())[:3] == \
        ["hippocampus_001.b2nd", "hippocampus_001.pkl", "hippocampus_001_seg.b2nd"]  # read, nothing rewritten
