"""Upstream's remaining commands: pnnunet_determine_postprocessing, pnnunet_accumulate_crossval_results,
pnnunet_evaluate_simple, pnnunet_plot_overlay_pngs, pnnunet_convert_old_nnUNet_dataset (issue 12)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pnnunet.cli import accumulate_crossval_results as accumulate_cli
from pnnunet.cli import convert_old_nnUNet_dataset as convert_old_cli
from pnnunet.cli import determine_postprocessing as determine_cli
from pnnunet.cli import evaluate_simple as evaluate_simple_cli
from pnnunet.cli import plot_overlay_pngs as overlay_cli
from tests.conftest import BUNDLED_SAMPLE
from tests.postprocessing.synthetic import DATASET_JSON, FILE_ENDING, plans, read_seg, write_json, write_seg

UPSTREAM_PRE = Path(__file__).resolve().parents[1] / "data" / "upstream_preprocessed_b2nd"
SHAPE = (4, 8, 8)


@pytest.fixture
def roots(tmp_path, monkeypatch):
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"pnnunet_{name}", str(tmp_path / name))
    return tmp_path


def _blob(extra: bool) -> np.ndarray:
    s = np.zeros(SHAPE, dtype=np.uint8)
    s[1:3, 1:5, 1:5] = 1
    s[1:3, 5:7, 1:5] = 2
    if extra:
        s[3, 7, 7] = 1  # a disconnected false positive of label 1
    return s


def test_determine_postprocessing_removes_a_stray_component(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for i in range(2):
        write_seg(ref / f"c{i}{FILE_ENDING}", _blob(False))
        write_seg(pred / f"c{i}{FILE_ENDING}", _blob(True))
    write_json(pred / "dataset.json", DATASET_JSON)
    write_json(pred / "plans.json", plans())
    before = {p.name: p.read_bytes() for p in pred.iterdir()}
    assert determine_cli.main(["-i", str(pred), "-ref", str(ref), "-np", "1"]) == 0
    pp = json.loads((pred / "postprocessing.json").read_text())
    assert pp["postprocessing_fns"] and pp["input_folder"]["foreground_mean"]["Dice"] < 1.0
    assert pp["postprocessed"]["foreground_mean"]["Dice"] == pytest.approx(1.0)
    np.testing.assert_array_equal(read_seg(pred / "postprocessed" / f"c0{FILE_ENDING}"), _blob(False))
    assert all((pred / n).read_bytes() == b for n, b in before.items())  # the predictions are untouched
    assert "foreground mean Dice" in capsys.readouterr().out
    assert determine_cli.main(["-i", str(pred), "-ref", str(ref), "-np", "1", "--remove_postprocessed"]) == 0
    assert not (pred / "postprocessed").exists() and (pred / "postprocessing.json").is_file()
    # no references for the predictions: a one-paragraph error
    assert determine_cli.main(["-i", str(pred), "-ref", str(tmp_path / "nope"), "-np", "1"]) == 1


def test_accumulate_crossval_results(roots, capsys):
    name = "Dataset004_Hippocampus"
    pre = roots / "preprocessed" / name
    shutil.copytree(UPSTREAM_PRE, pre)
    model = roots / "results" / name / "pnnunetTrainer__nnUNetPlans__3d_fullres"
    cases = sorted(p.name for p in (pre / "gt_segmentations").iterdir())
    for fold, names in ((0, cases[:2]), (1, cases[2:])):
        val = model / f"fold_{fold}" / "validation"
        val.mkdir(parents=True)
        for n in names:
            shutil.copyfile(pre / "gt_segmentations" / n, val / n)
    shutil.copyfile(pre / "dataset.json", model / "dataset.json")
    shutil.copyfile(pre / "nnUNetPlans.json", model / "plans.json")
    # wrong one voxel of the first case: its Dice drops below 1
    first = model / "fold_0" / "validation" / cases[0]
    img = sitk.ReadImage(str(first))
    arr = sitk.GetArrayFromImage(img)
    z, y, x = np.argwhere(arr == 1)[0]
    arr[z, y, x] = 2
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(first))

    assert accumulate_cli.main(["4", "-c", "3d_fullres", "-f", "0", "1", "-p", "nnUNetPlans", "-np", "1"]) == 0
    merged = model / "crossval_results_folds_0_1"
    summary = json.loads((merged / "summary.json").read_text())
    assert sorted(Path(c["prediction_file"]).name for c in summary["metric_per_case"]) == cases
    assert 0.99 < summary["foreground_mean"]["Dice"] < 1.0
    assert "5 cases" in capsys.readouterr().out
    # -o must be empty: nothing in it is overwritten
    busy = roots / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert accumulate_cli.main(["4", "-c", "3d_fullres", "-f", "0", "1", "-p", "nnUNetPlans", "-o", str(busy)]) == 1
    assert (busy / "keep.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1


def test_evaluate_simple_with_ignore_label(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    r = _blob(False)
    r[0] = 3  # ignore label on slice 0
    p = _blob(False)
    p[0, :2, :2] = 1  # false positives, but on ignored voxels
    p[2, 1:5, 1:5] = 0  # half of label 1 missed
    write_seg(ref / f"c0{FILE_ENDING}", r)
    write_seg(pred / f"c0{FILE_ENDING}", p)
    assert evaluate_simple_cli.main([str(ref), str(pred), "-l", "1", "2", "-il", "3", "-np", "1"]) == 0
    s = json.loads((pred / "summary.json").read_text())
    m1 = s["metric_per_case"][0]["metrics"]["1"]
    assert (m1["TP"], m1["FP"], m1["FN"]) == (16, 0, 16)  # the ignored false positives are not counted
    assert s["mean"]["2"]["Dice"] == 1.0
    assert m1["TP"] + m1["FP"] + m1["FN"] + m1["TN"] == r.size - 64  # slice 0 (8x8) excluded
    assert "foreground mean" in capsys.readouterr().out
    assert evaluate_simple_cli.main([str(tmp_path / "empty_does_not_exist"), str(pred), "-l", "1"]) == 1


def test_plot_overlay_pngs_raw_and_preprocessed(roots, capsys):
    raw = roots / "raw" / "Dataset004_Hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    cases = ["hippocampus_001", "hippocampus_003"]
    for c in cases:
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTr" / f"{c}.nii.gz", raw / "imagesTr" / f"{c}_0000.nii.gz")
        shutil.copyfile(BUNDLED_SAMPLE / "labelsTr" / f"{c}.nii.gz", raw / "labelsTr" / f"{c}.nii.gz")
    write_json(raw / "dataset.json", {**DATASET_JSON, "numTraining": 2})
    assert overlay_cli.main(["-d", "4", "-o", str(roots / "png_raw"), "--use_raw", "-np", "1"]) == 0
    from skimage import io as skio

    for c in cases:
        png = skio.imread(roots / "png_raw" / f"{c}.png")
        assert png.ndim == 3 and png.shape[2] in (3, 4)  # RGB(A), written by matplotlib
        assert np.any(png[..., 0] != png[..., 1])  # coloured labels over the grey image
    shutil.copytree(UPSTREAM_PRE, roots / "preprocessed" / "Dataset004_Hippocampus")
    assert overlay_cli.main(["-d", "4", "-o", str(roots / "png_pre"), "-p", "nnUNetPlans", "-np", "1"]) == 0
    assert len(list((roots / "png_pre").glob("*.png"))) == 5
    assert "wrote 5 overlays" in capsys.readouterr().out
    # a channel that does not exist: clear error
    assert overlay_cli.main(["-d", "4", "-o", str(roots / "x"), "--use_raw", "-channel_idx", "3", "-np", "1"]) == 1


def test_convert_old_nnunet_dataset(roots, capsys):
    """An nnU-Net v1 task (images CASE_0000, v1 dataset.json) into the requested DatasetXXX_Name."""
    src = roots / "Task04_Hippocampus"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    cases = ["hippocampus_001", "hippocampus_003"]
    for c in cases:
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTr" / f"{c}.nii.gz", src / "imagesTr" / f"{c}_0000.nii.gz")
        shutil.copyfile(BUNDLED_SAMPLE / "labelsTr" / f"{c}.nii.gz", src / "labelsTr" / f"{c}.nii.gz")
    (src / "imagesTs").mkdir()
    (src / "labelsTs").mkdir()
    shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / "hippocampus_045.nii.gz", src / "imagesTs" / "hippocampus_045_0000.nii.gz")
    shutil.copyfile(BUNDLED_SAMPLE / "labelsTs" / "hippocampus_045.nii.gz", src / "labelsTs" / "hippocampus_045.nii.gz")
    v1 = json.loads((BUNDLED_SAMPLE / "dataset.json").read_text())
    v1["training"] = [t for t in v1["training"] if any(c in t["image"] for c in cases)]
    v1["numTraining"] = 2
    (src / "dataset.json").write_text(json.dumps(v1))
    assert convert_old_cli.main([str(src), "Dataset104_HippoV1", "-np", "1"]) == 0
    out = roots / "raw" / "Dataset104_HippoV1"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "MRI"} and dj["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert dj["file_ending"] == ".nii.gz" and "training" not in dj
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["hippocampus_045_0000.nii.gz"]
    assert [p.name for p in (out / "labelsTs").iterdir()] == ["hippocampus_045.nii.gz"]  # test labels come along
    assert not (out / "labelsVal").exists()  # only what the source has
    assert "dataset ready" in capsys.readouterr().out
    assert convert_old_cli.main([str(src), "Hippo"]) == 1  # not DatasetXXX_Name
    assert "DatasetXXX_Name" in capsys.readouterr().err
