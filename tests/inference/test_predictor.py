"""Predictor on a tiny model trained in the module fixture (pnnunet/inference/{predictor,model_folder}.py).

Reference: nnunet_behaviour.md §7.1–7.6. The model is trained for one short epoch on the bundled
Hippocampus sample (tiny plans), folds 0 and 1 of 3d_fullres and fold 0 of 2d; the inputs are the
sample's ``imagesTs`` (single channel, named without ``_0000``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import BUNDLED_SAMPLE

paddle = pytest.importorskip("paddle")

from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.inference.model_folder import find_trained_folds, load_model_folder, trained_model_dirs
from pnnunet.inference.predictor import PREDICT_ARGS_FILE, Predictor

DATASET = "Dataset004_Hippocampus_sample"
PLANS = "pnnunetTinyPlans"
TEST_IMAGES = BUNDLED_SAMPLE / "imagesTs"


def make_trained_workspace(root: Path, trained=(("3d_fullres", (0, 1)), ("2d", (0,)))) -> Path:
    """Plan + preprocess the bundled sample (tiny plans) and train each (configuration, folds) for one
    short epoch. Returns the dataset's results folder ``root/res/Dataset004_Hippocampus_sample``."""
    env = dict(os.environ, pnnunet_raw=str(root / "raw"), pnnunet_preprocessed=str(root / "pre"),
               pnnunet_results=str(root / "res"), OMP_NUM_THREADS="1")
    configs = [c for c, _ in trained]
    subprocess.run([sys.executable, "-m", "pnnunet.cli.plan_and_preprocess", "-d", str(BUNDLED_SAMPLE), "-pl",
                    "tiny", "-c", *configs, "-np", "1", "--no_pbar"], env=env, check=True, capture_output=True)
    from pnnunet.fileio import load_json
    from pnnunet.training.config import make_train_config
    from pnnunet.training.trainer import Trainer, TrainingJob

    pre = root / "pre" / DATASET
    plans, dataset_json = load_json(pre / f"{PLANS}.json"), load_json(pre / "dataset.json")
    cfg = make_train_config("pnnunetTrainer", num_epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1,
                            num_workers=0)
    for configuration, folds in trained:
        model_dir = root / "res" / DATASET / f"pnnunetTrainer__{PLANS}__{configuration}"
        for fold in folds:
            job = TrainingJob(pre, model_dir, plans, configuration, fold, dataset_json, "pnnunetTrainer", cfg, "cpu",
                              progress_bar=False)
            Trainer(job).fit()
    return root / "res" / DATASET


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_trained_workspace(tmp_path_factory.mktemp("predictor"))


@pytest.fixture(scope="module")
def model3d(results):
    return load_model_folder(results / f"pnnunetTrainer__{PLANS}__3d_fullres")


def _inputs(folder: Path, names: dict[str, str]) -> Path:
    """Copy test images into ``folder`` under new names ({source case: new file name})."""
    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in names.items():
        shutil.copyfile(TEST_IMAGES / f"{src}.nii.gz", folder / dst)
    return folder


def _geometry(path: Path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def _preprocessed(predictor: Predictor, image: Path):
    from pnnunet.inference.case_tasks import preprocess_for_inference

    m = predictor.model
    return preprocess_for_inference([image], m.plans, m.configuration, m.dataset_json, predictor.reader_writer())


@pytest.fixture(scope="module")
def predicted3d(model3d, tmp_path_factory):
    """Two folds, TTA on, background pre/export processes; one input named with _0000, one without."""
    tmp = tmp_path_factory.mktemp("pred3d")
    inputs = _inputs(tmp / "in", {"hippocampus_045": "caseA_0000.nii.gz", "hippocampus_048": "caseB.nii.gz"})
    out = tmp / "out"
    predictor = Predictor(model3d, device="cpu", progress=False, precision="fp32")
    summary = predictor.predict_folder(inputs, out, save_probabilities=True, num_preprocessing_workers=1,
                                       num_export_workers=1)
    return inputs, out, summary


# ---- model folder -------------------------------------------------------------------------------
def test_model_folder_finds_trained_folds_and_mirror_axes(results, model3d):
    assert model3d.fold_names == [0, 1]
    assert model3d.configuration == "3d_fullres" and model3d.trainer_name == "pnnunetTrainer"
    assert all(f.mirror_axes == (0, 1, 2) for f in model3d.folds)  # the trainer's 3D axes (reference §5.3)
    assert all(v.dtype == np.float32 for v in model3d.folds[0].weights.values())
    assert [d.name.rsplit("__", 1)[1] for d in trained_model_dirs(results)] == ["2d", "3d_fullres"]
    assert find_trained_folds(results / f"pnnunetTrainer__{PLANS}__3d_fullres", "checkpoint_best.pdparams") == [0, 1]


def test_model_folder_errors(results, tmp_path):
    src = results / f"pnnunetTrainer__{PLANS}__3d_fullres"
    empty = tmp_path / DATASET / f"pnnunetTrainer__{PLANS}__3d_fullres"
    empty.mkdir(parents=True)
    for f in ("plans.json", "dataset.json"):
        shutil.copyfile(src / f, empty / f)
    with pytest.raises(PnnunetError, match="no fold has checkpoint_final"):
        load_model_folder(empty)
    with pytest.raises(PnnunetError, match="fold 3 has no checkpoint_final"):
        load_model_folder(src, folds=[3])
    # a 3d_fullres checkpoint placed in the 2d model folder
    wrong = tmp_path / DATASET / f"pnnunetTrainer__{PLANS}__2d"
    shutil.copytree(results / f"pnnunetTrainer__{PLANS}__2d", wrong)
    shutil.copyfile(src / "fold_0" / "checkpoint_final.pdparams", wrong / "fold_0" / "checkpoint_final.pdparams")
    with pytest.raises(PnnunetError, match="trained for configuration '3d_fullres'"):
        load_model_folder(wrong)


def test_cascade_needs_previous_stage_predictions(model3d, tmp_path):
    plans = json.loads(json.dumps(model3d.plans))
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    cascade = dataclasses.replace(model3d, plans=plans, configuration="3d_cascade_fullres")
    assert cascade.num_image_channels == 1 and cascade.num_input_channels == 1 + 2  # + one-hot labels 1, 2
    predictor = Predictor(cascade, device="cpu", progress=False)
    with pytest.raises(PnnunetError, match="-prev_stage_predictions"):
        predictor.predict_folder(TEST_IMAGES, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PnnunetError, match=r"no 3d_lowres prediction for 4 of 4 cases"):
        predictor.predict_folder(TEST_IMAGES, tmp_path / "out", previous_stage_predictions=tmp_path / "empty")
    assert not (tmp_path / "out").exists()


# ---- predict_folder ------------------------------------------------------------------------------
def test_outputs_exist_with_the_input_geometry(predicted3d, model3d):
    inputs, out, summary = predicted3d
    assert summary.num_predicted == 2 and summary.num_skipped == 0 and summary.backend == "static"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["caseA.nii.gz", "caseB.nii.gz"]
    for case, image in (("caseA", "caseA_0000.nii.gz"), ("caseB", "caseB.nii.gz")):
        assert _geometry(out / f"{case}.nii.gz") == _geometry(inputs / image)
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        assert set(np.unique(seg)) <= {0, 1, 2}
        with np.load(out / f"{case}.npz") as z:
            p = z["probabilities"]
        assert p.shape == (3, *seg.shape) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(0), 1, atol=1e-5)
        np.testing.assert_array_equal(np.argmax(p, 0), seg)
    args = json.loads((out / PREDICT_ARGS_FILE).read_text())
    assert args["model"] == f"{DATASET}/pnnunetTrainer__{PLANS}__3d_fullres"
    assert (args["folds"], args["use_tta"], args["step_size"], args["checkpoint"]) == ([0, 1], True, 0.5,
                                                                                      "checkpoint_final")
    assert json.loads((out / "plans.json").read_text()) == model3d.plans
    assert json.loads((out / "dataset.json").read_text()) == model3d.dataset_json


def test_continue_prediction_skips_done_cases(predicted3d, model3d):
    inputs, out, _ = predicted3d
    mtime = (out / "caseA.nii.gz").stat().st_mtime_ns
    (out / "caseB.npz").unlink()  # incomplete: probabilities missing
    predictor = Predictor(model3d, device="cpu", progress=False)
    summary = predictor.predict_folder(inputs, out, save_probabilities=True, continue_prediction=True,
                                       num_preprocessing_workers=0, num_export_workers=0)
    assert (summary.num_predicted, summary.num_skipped) == (1, 1)
    assert (out / "caseA.nii.gz").stat().st_mtime_ns == mtime
    assert (out / "caseB.npz").is_file()


def test_mixing_guard(predicted3d, model3d, results):
    inputs, out, _ = predicted3d
    one_fold = load_model_folder(model3d.model_dir, folds=[0])
    with pytest.raises(PnnunetError, match=r"folds: \[0, 1\] there, \[0\] now"):
        Predictor(one_fold, device="cpu", progress=False).predict_folder(inputs, out, continue_prediction=True)
    with pytest.raises(PnnunetError, match="use_tta"):
        Predictor(model3d, device="cpu", use_tta=False, progress=False).predict_folder(inputs, out)
    model2d = load_model_folder(results / f"pnnunetTrainer__{PLANS}__2d")
    with pytest.raises(PnnunetError, match="configuration: '3d_fullres' there, '2d' now"):
        Predictor(model2d, device="cpu", progress=False).predict_folder(inputs, out)


def test_fold_ensemble_is_the_mean_of_fold_logits(model3d):
    both = Predictor(model3d, device="cpu", use_tta=False, progress=False)
    data, _ = _preprocessed(both, TEST_IMAGES / "hippocampus_049.nii.gz")
    per_fold = [Predictor(load_model_folder(model3d.model_dir, folds=[f]), device="cpu", use_tta=False)
                .predict_logits(data) for f in (0, 1)]
    mean = both.predict_logits(data)
    assert mean.dtype == np.float16 and mean.shape == (3, *data.shape[1:])  # upstream's accumulators
    assert np.array_equal(mean, (per_fold[0] + per_fold[1]) / np.float16(2))  # summed in float16 too
    assert np.abs(per_fold[0] - per_fold[1]).max() > 1e-2  # the folds really differ


def test_static_graph_equals_eager_and_tta_changes_logits(model3d, tmp_path):
    fold0 = load_model_folder(model3d.model_dir, folds=[0])
    kw = {"device": "cpu", "progress": False, "precision": "fp32", "accumulation_dtype": "float32"}
    static = Predictor(fold0, use_tta=False, **kw)
    eager = Predictor(fold0, use_tta=False, use_static_graph=False, **kw)
    data, _ = _preprocessed(static, TEST_IMAGES / "hippocampus_050.nii.gz")
    logits_static, logits_eager = static.predict_logits(data), eager.predict_logits(data)
    assert static.current_backend == "static" and eager.current_backend == "eager"
    assert np.abs(logits_static - logits_eager).max() < 1e-3
    assert np.mean(np.argmax(logits_static, 0) != np.argmax(logits_eager, 0)) < 1e-4
    with_tta = Predictor(fold0, use_tta=True, **kw).predict_logits(data)
    assert np.abs(with_tta - logits_static).max() > 1e-3


def test_bf16_convolutions_stay_close_to_fp32(model3d):
    from pnnunet.runtime.onednn.primitives import bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16 convolutions")
    fold0 = load_model_folder(model3d.model_dir, folds=[0])
    fp32 = Predictor(fold0, device="cpu", use_tta=False, progress=False, precision="fp32", accumulation_dtype="float32")
    bf16 = Predictor(fold0, device="cpu", use_tta=False, progress=False, precision="bf16", accumulation_dtype="float32")
    assert Predictor(fold0, device="cpu", progress=False).precision == "bf16"  # auto on this CPU
    data, _ = _preprocessed(fp32, TEST_IMAGES / "hippocampus_050.nii.gz")
    a, b = fp32.predict_logits(data), bf16.predict_logits(data)
    assert bf16.current_backend == "bf16" and fp32.current_backend == "static"
    scale = np.abs(a).max()
    assert 0 < np.abs(a - b).max() < 0.05 * scale  # bfloat16 inputs/weights: ~3 significant digits
    assert np.mean(np.argmax(a, 0) != np.argmax(b, 0)) < 0.01


def test_disable_tta_and_2d_configuration(results, tmp_path):
    inputs = _inputs(tmp_path / "in", {"hippocampus_050": "hippocampus_050.nii.gz"})
    model2d = load_model_folder(results / f"pnnunetTrainer__{PLANS}__2d")
    assert model2d.folds[0].mirror_axes == (0, 1)
    summary = Predictor(model2d, device="cpu", use_tta=False, progress=False).predict_folder(
        inputs, tmp_path / "out", num_preprocessing_workers=0, num_export_workers=0)
    assert summary.num_predicted == 1
    assert _geometry(tmp_path / "out" / "hippocampus_050.nii.gz") == _geometry(inputs / "hippocampus_050.nii.gz")
    assert json.loads((tmp_path / "out" / PREDICT_ARGS_FILE).read_text())["use_tta"] is False


# ---- input checks -------------------------------------------------------------------------------
def _two_channel(model):
    dj = dict(model.dataset_json, channel_names={"0": "T1", "1": "T2"})
    return dataclasses.replace(model, dataset_json=dj)


def test_missing_channel_names_the_case(model3d, tmp_path):
    inputs = _inputs(tmp_path / "in", {"hippocampus_045": "caseA_0000.nii.gz", "hippocampus_048": "caseB_0000.nii.gz"})
    shutil.copyfile(TEST_IMAGES / "hippocampus_045.nii.gz", inputs / "caseA_0001.nii.gz")
    with pytest.raises(DatasetError, match="missing channel 1 of case 'caseB'"):
        Predictor(_two_channel(model3d), device="cpu").predict_folder(inputs, tmp_path / "out")


def test_channels_of_different_geometry_name_the_case(model3d, tmp_path):
    inputs = _inputs(tmp_path / "in", {"hippocampus_045": "caseA_0000.nii.gz", "hippocampus_048": "caseA_0001.nii.gz"})
    with pytest.raises(PnnunetError, match="case 'caseA'.*different shapes"):
        Predictor(_two_channel(model3d), device="cpu", progress=False).predict_folder(
            inputs, tmp_path / "out", num_preprocessing_workers=0, num_export_workers=0)


def test_wrong_file_ending_is_refused(model3d, tmp_path):
    inputs = _inputs(tmp_path / "in", {"hippocampus_045": "caseA_0000.nii.gz"})
    (inputs / "caseB_0000.nrrd").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"caseB_0000.nrrd: does not end with the dataset's file_ending"):
        Predictor(model3d, device="cpu").predict_folder(inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_large_logits_are_exported_in_this_process(predicted3d, model3d, tmp_path, monkeypatch):
    """Above MAX_HANDOFF_BYTES the export worker is bypassed (no pickled copies of huge logits)."""
    import pnnunet.inference.predictor as predictor_module

    inputs, out, _ = predicted3d
    in_process = []
    real_export = predictor_module.export_case
    monkeypatch.setattr(predictor_module, "MAX_HANDOFF_BYTES", 0)
    monkeypatch.setattr(predictor_module, "export_case", lambda *job: in_process.append(job[-3].name) or
                        real_export(*job))
    predictor = Predictor(model3d, device="cpu", progress=False, precision="fp32")
    predictor.predict_folder(inputs, tmp_path / "out", num_preprocessing_workers=0, num_export_workers=1)
    assert sorted(in_process) == ["caseA", "caseB"]
    # same labels as the worker-exported fp32 run (caseB there may be rewritten by the --continue test)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "caseA.nii.gz"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(out / "caseA.nii.gz"))))


def test_bad_accumulation_dtype_is_a_clear_error(model3d):
    with pytest.raises(PnnunetError, match="float16 or float32"):
        Predictor(model3d, device="cpu", progress=False, accumulation_dtype="float64")
