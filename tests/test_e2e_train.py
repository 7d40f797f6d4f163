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
from tests.processes import wait_until_gone
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


DDP_EPOCHS = 3


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out




@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_data_parallel_two_cpu_processes_kill_resume_validate(workspace):
    """-num_gpus 2 -device cpu: two gloo ranks; the launcher is SIGKILLed after the first checkpoint (its
    ranks must go with it), --c resumes on both ranks, the validation is split; one set of outputs."""
    env = _env(workspace)
    args = ["3d_fullres", "0", "-p", "pnnunetTinyPlans", "-tr", f"pnnunetTrainer_{DDP_EPOCHS}epochs",
            "--iterations_per_epoch", "2", "--val_iterations_per_epoch", "1", "--num_workers", "0",
            "-device", "cpu", "-num_gpus", "2", "--no_pbar"]
    fold = (workspace / "res" / "Dataset004_Hippocampus_sample" /
            f"pnnunetTrainer_{DDP_EPOCHS}epochs__pnnunetTinyPlans__3d_fullres" / "fold_0")
    latest = fold / "checkpoint_latest.pdparams"
    proc = subprocess.Popen(_cli("train", *args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not latest.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be killed"
        ranks = [p for p in _descendants(proc.pid)]
        assert len(ranks) >= 2
        proc.send_signal(signal.SIGKILL)  # the launcher only
        proc.wait()
        assert wait_until_gone(ranks, 30), "training processes outlived the killed launcher"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not (fold / "checkpoint_final.pdparams").exists()

    out = subprocess.run(_cli("train", *args, "--c"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    log = (fold / "training_log.txt").read_text()
    assert log.count("resumed from checkpoint_latest") == 1  # rank 0 alone writes the log
    assert log.count("data parallel: 2 processes, batch per process [1, 1] (foreground-forced samples [0, 1])") == 2
    for e in range(DDP_EPOCHS):
        assert f"epoch {e} | train_loss" in log
    from pnnunet.runtime.amp import CPU_BF16
    from pnnunet.runtime.onednn.primitives import bf16_supported

    precision = CPU_BF16 if bf16_supported() else "float32"  # the default: bfloat16 where the CPU has it
    assert "skipped_steps 0" in log and f"precision {precision}" in log

    import paddle

    state = paddle.load(str(fold / "checkpoint_final.pdparams"))
    assert state["current_epoch"] == DDP_EPOCHS and state["world_size"] == 2 and state["precision"] == precision
    lrs = state["logging"]["lrs"]
    assert lrs == pytest.approx([poly_lr(e, DDP_EPOCHS) for e in range(DDP_EPOCHS)], rel=1e-12)
    assert not latest.exists() and (fold / "progress.png").exists()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 4  # both ranks' shares
    assert sorted(p.name for p in (fold / "validation").iterdir() if p.name.startswith(".")) == []
    assert out.stdout.count("fold 0: mean foreground Dice") == 1


def _use_workspace(workspace, monkeypatch):
    for key, value in _env(workspace).items():
        if key.startswith("pnnunet_"):
            monkeypatch.setenv(key, value)


def test_data_parallel_flag_errors(workspace, monkeypatch, capsys):
    from pnnunet.cli import train as train_cli

    _use_workspace(workspace, monkeypatch)
    base = ["3d_fullres", "0", "-p", "pnnunetTinyPlans", "--no_pbar"]
    cases = [(["-device", "cpu", "-num_gpus", "3"], "the plan's batch size 2 is smaller than the 3 training processes"),
             (["-device", "gpu:1", "-num_gpus", "2"], "CUDA_VISIBLE_DEVICES"),
             (["-num_gpus", "2"], "for data-parallel training in CPU processes add -device cpu"),
             (["-device", "gpu:1"], "Paddle sees no GPU"),
             (["-device", "tpu"], "unknown device 'tpu'")]
    for extra, expected in cases:
        code = train_cli.main([*base, *extra])
        err = capsys.readouterr().err
        assert code == 1, (extra, err[-2000:])
        assert expected in err and "Traceback" not in err, (extra, err[-2000:])


def test_out_of_memory_is_a_clear_error_and_exit_code_1(workspace, monkeypatch, capsys):
    from pnnunet.cli import train as train_cli
    from pnnunet.training.trainer import Trainer

    def raise_oom(self, batch):
        raise MemoryError("(ResourceExhausted) Out of memory error on GPU 0. Cannot allocate 1.5GB memory on GPU 0")

    _use_workspace(workspace, monkeypatch)
    monkeypatch.setattr(Trainer, "_forward_backward_step", raise_oom)
    code = train_cli.main(["3d_fullres", "0", "-p", "pnnunetTinyPlans", "-tr", "pnnunetTrainer_1epochs",
                           "--num_workers", "0", "-device", "cpu", "--no_pbar"])
    err = capsys.readouterr().err
    assert code == 1
    assert "pnnunet: error: out of memory in host memory (CPU) during a training step" in err
    assert "pnnunet_plan_and_preprocess -d Dataset004_Hippocampus_sample -gpu_memory_target 6" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag", ["--bf16", "--fp32"])
def test_train_precision_flags_are_recorded_in_log_and_checkpoint(workspace, flag):
    """``pnnunet_train --bf16``: bfloat16 convolutions on a CPU that has them, else float32 with a warning;
    ``--fp32``: float32 on any CPU. Either way the log, train_config.json and the checkpoint name the
    precision used."""
    from pnnunet.runtime.amp import CPU_BF16
    from pnnunet.runtime.onednn.primitives import bf16_supported

    env = _env(workspace)
    env["pnnunet_results"] = str(workspace / f"res_{flag[2:]}")
    out = subprocess.run(_cli("train", "3d_fullres", "0", "-p", "pnnunetTinyPlans", "--epochs", "1",
                              "--iterations_per_epoch", "2", "--val_iterations_per_epoch", "1", "--num_workers", "0",
                              "-device", "cpu", "--no_pbar", "--val_disable_tta", "--val_step_size", "1", flag),
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    fold = (workspace / f"res_{flag[2:]}" / "Dataset004_Hippocampus_sample"
            / "pnnunetTrainer__pnnunetTinyPlans__3d_fullres" / "fold_0")
    expected = CPU_BF16 if bf16_supported() and flag == "--bf16" else "float32"
    log = (fold / "training_log.txt").read_text()
    assert f"precision {expected}" in log
    assert ("falling back to float32" in log) == (flag == "--bf16" and not bf16_supported())
    config = json.loads((fold / "train_config.json").read_text())
    assert config["precision"] == expected and config["cpu_bf16"] is (flag == "--bf16")

    import paddle

    state = paddle.load(str(fold / "checkpoint_final.pdparams"))
    assert state["precision"] == expected
    assert all(str(v.dtype).endswith("float32") for v in state["network_weights"].values())


def test_training_keeps_freed_memory_after_the_first_step_on_small_patches(workspace, monkeypatch, capsys):
    """A small training process (the tiny plans) keeps freed memory in the heap from its second step on (no
    page-faulting the batch's activations in again each step) and says so in the log; glibc's defaults are
    back once training has ended. (The CT-sized case, freed memory returned: tests/test_heap.py.)"""
    from pnnunet import heap
    from pnnunet.cli import train as train_cli
    from pnnunet.training.trainer import Trainer

    depths = []
    step = Trainer._forward_backward_step

    def spy(self, batch):
        depths.append(heap._HEAP_DEPTH)
        return step(self, batch)

    _use_workspace(workspace, monkeypatch)
    monkeypatch.setenv("pnnunet_results", str(workspace / "res_heap"))
    monkeypatch.setattr(Trainer, "_forward_backward_step", spy)
    code = train_cli.main(["3d_fullres", "0", "-p", "pnnunetTinyPlans", "--epochs", "1", "--iterations_per_epoch",
                           "3", "--val_iterations_per_epoch", "1", "--num_workers", "0", "-device", "cpu",
                           "--no_pbar"])
    assert code == 0, capsys.readouterr().err[-2000:]
    kept = 1 if heap._glibc() is not None else 0
    assert depths == [0, kept, kept], depths
    assert heap._HEAP_DEPTH == 0
    log = next((workspace / "res_heap").rglob("training_log.txt")).read_text()
    assert ("CPU heap: freed memory kept between steps" if kept else "CPU heap: freed memory returned") in log
