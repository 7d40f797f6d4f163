"""Issue 14: the output disk fills up, or is read-only. The outputs live on a small tmpfs mounted for the test
(``mount -t tmpfs``; skipped where mounting is not permitted): the run stops with one message naming the path,
what was written before stays intact, and the same command resumes once space is back.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_SAMPLE

pytest.importorskip("paddle")

DATASET = "Dataset004_Hippocampus_sample"
PLANS = "pnnunetTinyPlans"
MODEL = f"pnnunetTrainer__{PLANS}__3d_fullres"


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs at ``tmp_path/disk`` (unmounted afterwards)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes with one filler file (returned, to be deleted later)."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(module: str, entry: str, args: list[str], roots: dict, monkeypatch, capsys):
    for k, v in roots.items():
        monkeypatch.setenv(k, str(v))
    capsys.readouterr()
    code = getattr(importlib.import_module(f"pnnunet.cli.{module}"), entry)(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _roots(trained: Path, results: Path) -> dict:
    return {"pnnunet_raw": trained / "raw", "pnnunet_preprocessed": trained / "pre", "pnnunet_results": results}


def test_prediction_on_a_full_disk_stops_keeps_earlier_outputs_and_resumes(trained, tmpfs, tmp_path, monkeypatch,
                                                                          capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / "hippocampus_045.nii.gz", inputs / "a.nii.gz")
    out = tmpfs / "pred"
    args = ["-i", str(inputs), "-o", str(out), "-d", DATASET, "-c", "3d_fullres", "-p", PLANS, "-npp", "0", "-nps",
            "0", "--disable_tta", "--no_pbar", "-device", "cpu", "--save_probabilities", "--continue_prediction"]
    roots = _roots(trained, trained / "res")
    code, _, err = _cli("predict", "main", args, roots, monkeypatch, capsys)
    assert code == 0, err
    earlier = {p.name: _sha(p) for p in out.iterdir()}
    shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / "hippocampus_049.nii.gz", inputs / "b.nii.gz")
    filler = _fill(tmpfs, leave=8192)  # room for the small files, not for b's probabilities
    code, _, err = _cli("predict", "main", args, roots, monkeypatch, capsys)
    assert code == 1 and "Traceback" not in err
    assert "cannot be written: no space left on the device" in err and str(out) in err, err
    assert {p.name: _sha(p) for p in out.iterdir() if p.name in earlier} == earlier  # a's outputs intact
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # no half-written file left
    filler.unlink()
    code, outlog, err = _cli("predict", "main", args, roots, monkeypatch, capsys)
    assert code == 0, err
    assert "1 of 2 cases already predicted" in outlog
    assert {p.name: _sha(p) for p in out.iterdir() if p.name in earlier} == earlier
    assert (out / "b.nii.gz").is_file() and (out / "b.npz").is_file()


def test_training_on_a_full_disk_keeps_the_previous_checkpoint_and_resumes(trained, tmpfs, monkeypatch, capsys):
    results = tmpfs / "res"
    shutil.copytree(trained / "res", results)
    fold = results / DATASET / MODEL / "fold_0"
    # checkpoint_latest as after epoch 1 of a 2-epoch run: the fixture's 1-epoch checkpoint with num_epochs 2
    from pnnunet.runtime.checkpoints import load_checkpoint, save_checkpoint

    state = load_checkpoint(fold / "checkpoint_final.pdparams")
    state["init_args"]["num_epochs"] = 2
    save_checkpoint(fold / "checkpoint_latest.pdparams", state)
    (fold / "checkpoint_final.pdparams").unlink()
    kept = _sha(fold / "checkpoint_latest.pdparams")
    args = ["3d_fullres", "0", "-d", DATASET, "-p", PLANS, "-device", "cpu", "--no_pbar", "--c", "--epochs", "2",
            "--iterations_per_epoch", "2", "--val_iterations_per_epoch", "1", "--num_workers", "0", "--val_disable_tta"]
    roots = _roots(trained, results)
    # fails on the model files (plans.json first); then with a little more room, on the checkpoint (~0.5 MB)
    for leave in (0, 64 * 1024):
        filler = _fill(tmpfs, leave=leave)
        code, _, err = _cli("train", "main", args, roots, monkeypatch, capsys)
        assert code == 1 and "Traceback" not in err, err
        assert "cannot be written: no space left on the device" in err and str(results) in err, err
        assert _sha(fold / "checkpoint_latest.pdparams") == kept
        assert not [p for p in fold.rglob(".tmp-*")]
        filler.unlink()
    code, outlog, err = _cli("train", "main", args, roots, monkeypatch, capsys)
    assert code == 0, err
    assert "resumed from checkpoint_latest.pdparams at epoch 1" in outlog
    assert (fold / "checkpoint_final.pdparams").is_file()


def test_read_only_output_folder(trained, tmpfs, tmp_path, monkeypatch, capsys):
    out = tmpfs / "pred"
    out.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / "hippocampus_045.nii.gz", inputs / "a.nii.gz")
    args = ["-i", str(inputs), "-o", str(out), "-d", DATASET, "-c", "3d_fullres", "-p", PLANS, "-npp", "0", "-nps",
            "0", "--no_pbar", "-device", "cpu"]
    code, _, err = _cli("predict", "main", args, _roots(trained, trained / "res"), monkeypatch, capsys)
    assert code == 1 and "Traceback" not in err
    assert f"{out}: cannot be written: the file system is read-only" in err
