"""Issue 14: kill -9 inside an export, rerun with --continue_prediction: the outputs equal an uninterrupted run's
and no half-written file is left (the full seeded trials of every stage: benchmarks/kill_resume.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_SAMPLE
from tests.processes import wait_until_gone

pytest.importorskip("paddle")

DATASET = "Dataset004_Hippocampus_sample"
PLANS = "pnnunetTinyPlans"


def _cmd(images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pnnunet.cli.predict", "-i", str(images), "-o", str(out), "-d", DATASET, "-c",
            "3d_fullres", "-p", PLANS, "-npp", "0", "-nps", "0", "--disable_tta", "--save_probabilities", "--no_pbar",
            "-device", "cpu", *extra]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "predict_args.json"}


def test_prediction_killed_inside_an_export_resumes_to_identical_outputs(trained, tmp_path):
    env = dict(os.environ, pnnunet_raw=str(trained / "raw"), pnnunet_preprocessed=str(trained / "pre"),
               pnnunet_results=str(trained / "res"), OMP_NUM_THREADS="1")
    images = tmp_path / "in"
    images.mkdir()
    for case in ("hippocampus_045", "hippocampus_049", "hippocampus_050"):
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / f"{case}.nii.gz", images / f"{case}.nii.gz")
    ref = tmp_path / "ref"
    done = subprocess.run(_cmd(images, ref), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # A kill lands inside an atomic write only if the writer has not renamed its temporary yet; the window is
    # short, so try a few fresh runs until one leaves a temporary behind (the proof that the kill hit a write).
    for attempt in range(8):
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen(_cmd(images, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not list(out.glob(".tmp-*")):
            time.sleep(0.001)
        assert proc.poll() is None, "prediction ended before an export could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_until_gone([proc.pid], timeout=10)
        if list(out.glob(".tmp-*")):  # killed inside an atomic write: its temporary is left
            break
    else:
        pytest.fail("8 kills all landed outside an atomic write")
    finished = [p for p in out.iterdir() if not p.name.startswith(".")]
    for p in finished:  # what is there under a final name is complete
        if p.name in _hashes(ref):
            assert hashlib.sha256(p.read_bytes()).hexdigest() == _hashes(ref)[p.name]

    again = subprocess.run(_cmd(images, out, "--continue_prediction"), env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _hashes(out) == _hashes(ref)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temporaries and the lock are gone


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    from pnnunet.fileio import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "sub" / f".tmp-{dead.pid}-checkpoint_latest.pdparams"
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    live = tmp_path / f".tmp-{os.getppid()}-case.nii.gz"  # a live writer (another part, a worker)
    live.write_bytes(b"in progress")
    final = tmp_path / "case.nii.gz"
    final.write_bytes(b"done")
    assert remove_stale_temporaries(tmp_path) == []  # not recursive: sub/ untouched
    assert remove_stale_temporaries(tmp_path, recursive=True) == [stale]
    assert live.exists() and final.exists() and not stale.exists()
    # a folder of a killed writer (a static-graph export cut by kill -9), with its contents
    export = tmp_path / "inference" / f".tmp-{dead.pid}-k3x9"
    (export / ".tmp-1-inner").mkdir(parents=True)
    (export / "model.pdmodel").write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path / "inference") == [export]
    assert not export.exists() and live.exists()
