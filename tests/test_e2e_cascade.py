"""End to end, the cascade on a synthetic volume large enough for a 3d_lowres stage (tiny plans):
3d_lowres training writes predicted_next_stage, 3d_cascade_fullres trains on it with the one-hot
previous stage as extra input channels, and pnnunet_predict runs lowres then fullres
(reference §3.7, §5.2, §5.4 step 14, §5.10, §7.7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pnnunet.preprocessing.storage import open_array, preprocessed_case_shape

pytestmark = pytest.mark.e2e
pytest.importorskip("paddle")

DATASET = "Dataset321_CascadeToy"
PLANS = "pnnunetTinyPlans"
SHAPE = (40, 72, 72)  # z, y, x; spacing 1.5 x 1 x 1: the smallest size measured to get a tiny-plans 3d_lowres
N_TRAIN = 5
TRAIN_ARGS = ["-p", PLANS, "-tr", "pnnunetTrainerNoMirroring", "--epochs", "1", "--iterations_per_epoch", "2",
              "--val_iterations_per_epoch", "1", "--num_workers", "0", "-device", "cpu", "--no_pbar"]


def _write(path: Path, arr: np.ndarray) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 1.5))
    img.SetOrigin((3.0, -2.0, 7.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def make_dataset(root: Path) -> Path:
    """Two spheres per case (labels 1 and 2) in noise; N_TRAIN training cases and one test case."""
    rng = np.random.default_rng(0)
    folder = root / DATASET
    grid = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    for i in range(N_TRAIN + 1):
        seg = np.zeros(SHAPE, np.uint8)
        for label, radius in ((1, 8), (2, 4)):
            centre = [rng.integers(s // 4, 3 * s // 4) for s in SHAPE]
            seg[sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius ** 2] = label
        img = (seg + rng.normal(0, 0.3, SHAPE)).astype(np.float32)
        kind = "Tr" if i < N_TRAIN else "Ts"
        _write(folder / f"images{kind}" / f"toy_{i:03d}_0000.nii.gz", img)
        _write(folder / f"labels{kind}" / f"toy_{i:03d}.nii.gz", seg)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": N_TRAIN,
        "file_ending": ".nii.gz"}))
    return folder


def _env(ws: Path) -> dict:
    return dict(os.environ, pnnunet_raw=str(ws / "raw"), pnnunet_preprocessed=str(ws / "pre"),
                pnnunet_results=str(ws / "res"), OMP_NUM_THREADS="1")


def _cli(ws: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pnnunet.cli.{module}", *args], env=_env(ws), capture_output=True,
                          text=True, check=False)


def _model(ws: Path, configuration: str) -> Path:
    return ws / "res" / DATASET / f"pnnunetTrainerNoMirroring__{PLANS}__{configuration}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("e2e_cascade")
    make_dataset(ws / "raw")
    out = _cli(ws, "plan_and_preprocess", "-d", "321", "-pl", "tiny", "-c", "3d_fullres", "3d_lowres", "-np", "1",
               "--no_pbar")
    assert out.returncode == 0, out.stderr[-3000:]
    plans = json.loads((ws / "pre" / DATASET / f"{PLANS}.json").read_text())
    assert plans["configurations"]["3d_lowres"]["next_stage"] == "3d_cascade_fullres"
    return ws


def test_cascade_training_needs_the_lowres_stage(workspace):
    out = _cli(workspace, "train", "3d_cascade_fullres", "0", *TRAIN_ARGS)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "no 3d_lowres segmentation for 5 of 5 cases" in out.stderr and "pnnunet_train 3d_lowres" in out.stderr
    assert not _model(workspace, "3d_cascade_fullres").exists()  # nothing written


@pytest.fixture(scope="module")
def trained(workspace) -> Path:
    for configuration, fold in (("3d_lowres", "all"), ("3d_cascade_fullres", "0")):
        out = _cli(workspace, "train", configuration, fold, *TRAIN_ARGS)
        assert out.returncode == 0, out.stderr[-3000:]
    return workspace


def test_lowres_validation_writes_the_next_stage_input(trained):
    folder = _model(trained, "3d_lowres") / "predicted_next_stage" / "3d_cascade_fullres"
    fullres = trained / "pre" / DATASET / f"{PLANS}_3d_fullres"
    files = sorted(folder.glob("*.b2nd"))
    assert [f.stem for f in files] == [f"toy_{i:03d}" for i in range(N_TRAIN)]
    for f in files:
        seg = open_array(f, mmap=False)
        assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2}
        # in the fullres preprocessed grid, not the lowres one
        assert seg.shape == preprocessed_case_shape(fullres, f.stem)[1:]


def test_cascade_network_sees_image_plus_one_hot_lowres(trained):
    import paddle

    fold = _model(trained, "3d_cascade_fullres") / "fold_0"
    state = paddle.load(str(fold / "checkpoint_final.pdparams"))
    first = [v for k, v in state["network_weights"].items() if k.endswith("weight") and len(v.shape) == 5][0]
    assert first.shape[1] == 1 + 2  # one image channel + labels 1 and 2
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 1 and set(summary["mean"]) == {"1", "2"}


def _geometry(path: Path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def test_predict_runs_lowres_then_cascade(trained):
    ws = trained
    images = ws / "raw" / DATASET / "imagesTs"
    auto = ws / "auto"
    out = _cli(ws, "predict", "-i", str(images), "-o", str(auto), "-c", "3d_cascade_fullres", "-tr",
               "pnnunetTrainerNoMirroring", "-p", PLANS, "--no_pbar")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "predicting 3d_lowres" in out.stdout + out.stderr
    pred = auto / "toy_005.nii.gz"
    assert _geometry(pred) == _geometry(images / "toy_005_0000.nii.gz")
    assert not (auto / ".3d_lowres").exists()  # the previous stage's temporary folder is removed

    # the same with the lowres stage predicted separately and passed in (upstream v2's way)
    lowres = ws / "lowres"
    out = _cli(ws, "predict", "-i", str(images), "-o", str(lowres), "-c", "3d_lowres", "-tr",
               "pnnunetTrainerNoMirroring", "-p", PLANS, "--no_pbar")
    assert out.returncode == 0, out.stderr[-3000:]
    explicit = ws / "explicit"
    out = _cli(ws, "predict", "-i", str(images), "-o", str(explicit), "-c", "3d_cascade_fullres", "-tr",
               "pnnunetTrainerNoMirroring", "-p", PLANS, "-prev_stage_predictions", str(lowres), "--no_pbar")
    assert out.returncode == 0, out.stderr[-3000:]
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(pred)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(explicit / "toy_005.nii.gz")))
    np.testing.assert_array_equal(a, b)

    # a previous-stage folder without the case is refused before anything is written
    empty = ws / "empty"
    empty.mkdir()
    out = _cli(ws, "predict", "-i", str(images), "-o", str(ws / "never"), "-c", "3d_cascade_fullres", "-tr",
               "pnnunetTrainerNoMirroring", "-p", PLANS, "-prev_stage_predictions", str(empty), "--no_pbar")
    assert out.returncode == 1 and "no 3d_lowres prediction for 1 of 1 cases (toy_005.nii.gz)" in out.stderr
    assert not (ws / "never").exists()


def test_ensemble_with_the_cascade_reuses_the_lowres_member(trained):
    """find_best_config may choose the ensemble 3d_lowres + 3d_cascade_fullres: the lowres member's
    predictions are the cascade's input, lowres is not predicted a second time."""
    ws = trained
    results = ws / "res" / DATASET
    member = {"trainer": "pnnunetTrainerNoMirroring", "plans_identifier": PLANS}
    info = {"dataset_name_or_id": DATASET, "best_model_or_ensemble": {"postprocessing_file": None,
            "selected_model_or_models": [{"configuration": "3d_cascade_fullres", **member},
                                         {"configuration": "3d_lowres", **member}]}}
    (results / "inference_instructions.json").write_text(json.dumps(info))
    try:
        out = _cli(ws, "predict", "-i", str(ws / "raw" / DATASET / "imagesTs"), "-o", str(ws / "ens"), "-npp", "0",
                   "-nps", "0", "--no_pbar")
    finally:
        (results / "inference_instructions.json").unlink()
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ensembled" in out.stdout and "predicting 3d_lowres" not in out.stdout
    assert (ws / "ens" / "toy_005.nii.gz").is_file()
    assert [p.name for p in (ws / "ens").iterdir() if p.name.startswith(".")] == []
