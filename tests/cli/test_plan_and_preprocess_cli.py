"""pnnunet_plan_and_preprocess through its main(): real sample end to end, errors, resume."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from pnnunet.cli.plan_and_preprocess import main, main_fingerprint, main_plan, main_preprocess
from pnnunet.preprocessing.storage import load_preprocessed_case, open_array
from tests.conftest import BUNDLED_SAMPLE


def _tree_hash(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def roots(tmp_path, monkeypatch):
    for k in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"pnnunet_{k}", str(tmp_path / k))
    return tmp_path


@pytest.mark.e2e
def test_bundled_sample_end_to_end(roots, capsys):
    before = _tree_hash(BUNDLED_SAMPLE)
    assert main(["-d", str(BUNDLED_SAMPLE), "-c", "3d_fullres", "-np", "1", "--verify_dataset_integrity",
                 "--no_pbar"]) == 0
    pre = roots / "preprocessed" / "Dataset004_Hippocampus_sample"
    plans = json.loads((pre / "pnnunetPlans.json").read_text())
    assert list(plans["configurations"]) == ["2d", "3d_fullres"]
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [40, 56, 40]
    folder = pre / "pnnunetPlans_3d_fullres"
    data = open_array(folder / "hippocampus_001.b2nd", mmap=False)
    assert data.dtype == np.float32 and data.ndim == 4
    assert len(list((pre / "gt_segmentations").glob("*.nii.gz"))) == 20
    assert "3d_fullres" in capsys.readouterr().out
    mtime = (folder / "hippocampus_001.b2nd").stat().st_mtime_ns
    assert main(["-d", "4", "-c", "3d_fullres", "-np", "1", "--no_pbar"]) == 0  # rerun: nothing redone
    assert (folder / "hippocampus_001.b2nd").stat().st_mtime_ns == mtime
    assert _tree_hash(BUNDLED_SAMPLE) == before  # the source folder is never modified
    # isotropic 1 mm: 2d preprocesses exactly like 3d_fullres, so the two share the 2d folder's cases
    capsys.readouterr()
    assert main(["-d", "4", "-c", "2d", "3d_fullres", "-np", "1", "--no_pbar"]) == 0
    assert "pnnunetPlans_3d_fullres: same preprocessing as pnnunetPlans_2d" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["cases_shared_with.json", "preprocessing_config.json"]
    assert np.array_equal(load_preprocessed_case(folder, "hippocampus_001")[0][...], data)


def test_unknown_dataset_is_exit_code_1(roots, capsys):
    assert main(["-d", "Dataset999_Nothing", "--no_pbar"]) == 1
    err = capsys.readouterr().err
    assert "pnnunet: error:" in err and "Traceback" not in err


def test_broken_label_is_reported_with_file(roots, tmp_path, capsys):
    src = tmp_path / "Task05_Broken"
    shutil.copytree(BUNDLED_SAMPLE, src)
    import SimpleITK as sitk

    lab = src / "labelsTr" / "hippocampus_001.nii.gz"
    img = sitk.ReadImage(str(lab))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 7  # a label value dataset.json does not declare
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(lab))
    assert main(["-d", str(src), "--verify_dataset_integrity", "--no_pp", "-np", "1", "--no_pbar"]) == 1
    err = capsys.readouterr().err
    assert "hippocampus_001.nii.gz" in err and "7" in err


def test_overwrite_target_spacing_needs_three_values(roots, capsys):
    assert main(["-d", str(BUNDLED_SAMPLE), "--no_pp", "-overwrite_target_spacing", "1", "1", "-np", "1",
                 "--no_pbar"]) == 1
    assert "exactly 3 values" in capsys.readouterr().err


def test_each_command_describes_itself(capsys):
    descriptions = {}
    for name, entry in [("plan_and_preprocess", main), ("extract_fingerprint", main_fingerprint),
                        ("plan_experiment", main_plan), ("preprocess", main_preprocess)]:
        with pytest.raises(SystemExit) as exit_info:
            entry(["-h"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: pnnunet_{name}" in out
        descriptions[name] = out.split("\n\n")[1]  # the paragraph after the usage lines
    assert "Fingerprint, plan and preprocess" in descriptions["plan_and_preprocess"]
    for name in ("extract_fingerprint", "plan_experiment", "preprocess"):
        assert "Fingerprint, plan and preprocess" not in descriptions[name]
    assert len(set(descriptions.values())) == 4
    assert descriptions["plan_experiment"].startswith("Plan the configurations")
    assert descriptions["preprocess"].startswith("Preprocess the training cases")
    assert descriptions["extract_fingerprint"].startswith("Extract the dataset fingerprint")
