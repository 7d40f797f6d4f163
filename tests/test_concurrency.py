"""Issue 14: one run at a time per fold, prediction output folder (part) and preprocessed dataset (pnnunet/locks.py).

The "other process" is a real second process that holds the lock through :func:`pnnunet.locks.hold_lock`
(as the commands do) and sleeps; the commands under test run as subprocesses, as a user would start them.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pnnunet.errors import PnnunetError
from pnnunet.locks import fold_lock, hold_lock, prediction_lock, preprocessing_lock
from tests.conftest import BUNDLED_SAMPLE
from tests.processes import wait_until_gone

DATASET = "Dataset004_Hippocampus_sample"
PLANS = "pnnunetTinyPlans"
MODEL = f"pnnunetTrainer__{PLANS}__3d_fullres"

HOLDER = """
import sys, time
from pnnunet.locks import hold_lock
with hold_lock(sys.argv[1], "test"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(lock: Path) -> subprocess.Popen:
    """A process holding ``lock`` until it is killed (waits until it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert wait_until_gone([proc.pid], timeout=10)


def test_second_holder_is_refused_with_the_owner_named(tmp_path):
    lock = tmp_path / "x.lock"
    proc = _holder(lock)
    try:
        with pytest.raises(PnnunetError, match=rf"(?s)in use by another process \(pid {proc.pid}\b.*kill {proc.pid}"):
            with hold_lock(lock, "the thing"):
                pass
    finally:
        _kill(proc)


def test_stale_lock_after_kill_9_is_taken_over(tmp_path, caplog):
    lock = tmp_path / "x.lock"
    proc = _holder(lock)
    _kill(proc)
    assert lock.exists() and json.loads(lock.read_text())["pid"] == proc.pid  # left behind by the kill
    with caplog.at_level("WARNING", logger="pnnunet.locks"):
        with hold_lock(lock, "the thing"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a process that is gone (pid {proc.pid}" in caplog.text
    assert not lock.exists()  # released and removed
    with hold_lock(lock, "the thing"):  # and usable again
        pass


def test_lock_names_keep_parts_apart(tmp_path):
    assert prediction_lock(tmp_path) != prediction_lock(tmp_path, (0, 2)) != prediction_lock(tmp_path, (1, 2))
    with hold_lock(prediction_lock(tmp_path, (0, 2)), "part 0"):
        with hold_lock(prediction_lock(tmp_path, (1, 2)), "part 1"):
            pass


# ---- the commands ------------------------------------------------------------------------------------------
@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def _cli(root: Path, module: str, *args: str, monkeypatch, capsys, entry: str = "main") -> Done:
    """Run the command in this process (Paddle is imported once), with the roots of ``root``."""
    for k, v in {"pnnunet_raw": root / "raw", "pnnunet_preprocessed": root / "pre",
                 "pnnunet_results": root / "res"}.items():
        monkeypatch.setenv(k, str(v))
    capsys.readouterr()
    code = getattr(importlib.import_module(f"pnnunet.cli.{module}"), entry)(list(args))
    out = capsys.readouterr()
    return Done(code, out.out, out.err)


@pytest.fixture
def ws(trained, tmp_path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(trained, root)
    images = root / "imagesTs"
    images.mkdir()
    for case in ("hippocampus_045", "hippocampus_049"):
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / f"{case}.nii.gz", images / f"{case}.nii.gz")
    return root


def _refused(out: Done, proc: subprocess.Popen, lock: Path) -> None:
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert f"in use by another process (pid {proc.pid}" in out.stderr and str(lock) in out.stderr


def test_second_train_of_the_same_fold_is_refused(ws, monkeypatch, capsys):
    fold_dir = ws / "res" / DATASET / MODEL / "fold_0"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in fold_dir.iterdir())
    proc = _holder(fold_lock(fold_dir))
    try:
        out = _cli(ws, "train", "3d_fullres", "0", "-d", DATASET, "-p", PLANS, "-device", "cpu", "--c",
                   "--epochs", "1", "--no_pbar", monkeypatch=monkeypatch, capsys=capsys)
        _refused(out, proc, fold_lock(fold_dir))
    finally:
        _kill(proc)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in fold_dir.iterdir() if p.suffix != ".lock") == before


def test_second_predict_into_the_same_folder_is_refused_but_parts_run(ws, monkeypatch, capsys):
    out_dir = ws / "pred"
    args = ("-i", str(ws / "imagesTs"), "-o", str(out_dir), "-d", DATASET, "-c", "3d_fullres", "-p", PLANS,
            "-npp", "0", "-nps", "0", "--disable_tta", "--no_pbar", "-device", "cpu")
    proc = _holder(prediction_lock(out_dir))
    try:
        _refused(_cli(ws, "predict", *args, monkeypatch=monkeypatch, capsys=capsys), proc, prediction_lock(out_dir))
        assert not list(out_dir.glob("*.nii.gz"))
        # a part has its own lock: part 1 of 2 runs while the other run holds the folder's lock
        done = _cli(ws, "predict", *args, "-num_parts", "2", "-part_id", "1", monkeypatch=monkeypatch, capsys=capsys)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [p.name for p in out_dir.glob("*.nii.gz")] == ["hippocampus_049.nii.gz"]
    finally:
        _kill(proc)
    proc = _holder(prediction_lock(out_dir, (0, 2)))
    try:
        _refused(_cli(ws, "predict", *args, "-num_parts", "2", "-part_id", "0", monkeypatch=monkeypatch, capsys=capsys),
                 proc,
                 prediction_lock(out_dir, (0, 2)))
    finally:
        _kill(proc)


def test_preprocessing_the_same_dataset_twice_is_refused_and_a_stale_lock_taken_over(ws, monkeypatch, capsys):
    pre_dir = ws / "pre" / DATASET
    args = ("-d", DATASET, "-plans_name", PLANS, "-c", "3d_fullres", "-np", "1", "--no_pbar")
    proc = _holder(preprocessing_lock(pre_dir))
    try:
        _refused(_cli(ws, "plan_and_preprocess", *args[:2], "-pl", "tiny", "-c", "3d_fullres", "-np", "1",
                      monkeypatch=monkeypatch, capsys=capsys), proc, preprocessing_lock(pre_dir))
    finally:
        _kill(proc)
    t0 = time.time()
    out = _cli(ws, "plan_and_preprocess", *args, monkeypatch=monkeypatch, capsys=capsys, entry="main_preprocess")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"warning: {preprocessing_lock(pre_dir)}: taking over the lock of a process that is gone (pid {proc.pid}" \
        in out.stdout
    assert time.time() - t0 < 300 and not preprocessing_lock(pre_dir).exists()
