"""verify_dataset_integrity: every rule names the offending file; all problems come in one error."""

import json
import logging
import shutil

import numpy as np
import pytest
from skimage import io as skio

from pnnunet.dataset.integrity import verify_dataset_integrity
from pnnunet.dataset.msd import convert_msd_dataset
from pnnunet.errors import DatasetProblems


def _problems(folder, num_processes=1):
    with pytest.raises(DatasetProblems) as e:
        verify_dataset_integrity(folder, num_processes=num_processes)
    return e.value.problems


def _set_json(folder, **changes):
    p = folder / "dataset.json"
    p.write_text(json.dumps(json.loads(p.read_text()) | changes))


def test_clean_dataset_passes_and_is_not_modified(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=3, n_channels=2)
    before = synth.tree_hashes(folder)
    verify_dataset_integrity(folder, num_processes=1)
    assert synth.tree_hashes(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]


def test_process_pool_reports_like_serial(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=4, n_channels=1)
    synth.write_nifti(folder / "labelsTr" / "case_002.nii.gz", np.full(synth.SHAPE, 7, np.uint8))
    before = synth.tree_hashes(folder)
    pooled = _problems(folder, num_processes=2)
    assert [str(p) for p in pooled] == [str(p) for p in _problems(folder, num_processes=1)]
    assert synth.tree_hashes(folder) == before


def test_missing_channel(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=2)
    (folder / "imagesTr" / "case_001_0001.nii.gz").unlink()
    (p,) = _problems(folder)
    assert p.path == folder / "imagesTr" / "case_001_0001.nii.gz"


def test_missing_label(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    (folder / "labelsTr" / "case_001.nii.gz").unlink()
    (p,) = _problems(folder)
    assert p.path == folder / "labelsTr" / "case_001.nii.gz"


def test_shape_mismatch_image_label(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    synth.write_nifti(folder / "labelsTr" / "case_001.nii.gz", np.zeros((8, 10, 11), np.uint8))
    (p,) = _problems(folder)
    assert p.path == folder / "labelsTr" / "case_001.nii.gz"
    assert "(8, 10, 11)" in p.problem and "(8, 10, 12)" in p.problem


def test_spacing_mismatch_image_label(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    seg = synth.read_array(folder / "labelsTr" / "case_000.nii.gz")
    synth.write_nifti(folder / "labelsTr" / "case_000.nii.gz", seg, spacing=(0.7, 0.8, 3.0))
    (p,) = _problems(folder)
    assert p.path == folder / "labelsTr" / "case_000.nii.gz" and "spacing" in p.problem


def test_origin_mismatch_only_warns(tmp_path, synth, caplog):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    seg = synth.read_array(folder / "labelsTr" / "case_000.nii.gz")
    synth.write_nifti(folder / "labelsTr" / "case_000.nii.gz", seg, origin=(0.0, 0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="pnnunet.dataset.integrity"):
        verify_dataset_integrity(folder, num_processes=1)
    assert "case_000.nii.gz" in caplog.text and "origin" in caplog.text


def test_label_value_not_in_dataset_json(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    seg = synth.read_array(folder / "labelsTr" / "case_001.nii.gz")
    seg[0, 0, :2] = [5, 9]
    synth.write_nifti(folder / "labelsTr" / "case_001.nii.gz", seg)
    (p,) = _problems(folder)
    assert p.path == folder / "labelsTr" / "case_001.nii.gz"
    assert "[5, 9]" in p.problem and "allowed: [0, 1, 2]" in p.problem


def test_nan_and_inf_in_image(tmp_path, synth):
    # .mha: SimpleITK's NIfTI reader returns NaN/inf voxels as 0, so they cannot be seen in .nii.gz files
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=2, file_ending=".mha")
    img = synth.read_array(folder / "imagesTr" / "case_000_0001.mha")
    img[1, 2, 3] = np.nan
    img[2, 2, 3] = np.inf
    synth.write_nifti(folder / "imagesTr" / "case_000_0001.mha", img)
    (p,) = _problems(folder)
    assert p.path == folder / "imagesTr" / "case_000_0001.mha"
    assert "1 NaN voxel(s) and 1 inf voxel(s)" in p.problem


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_issue_14_nan_and_inf_in_nifti_image(tmp_path, synth, ending):
    """SimpleITK reads NaN/inf in NIfTI as 0; the check counts them on nibabel's raw voxels."""
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1, file_ending=ending)
    f = folder / "imagesTr" / f"case_001_0000{ending}"
    img = synth.read_array(f)
    img[1, 2, 3], img[1, 2, 4], img[2, 2, 3] = np.nan, np.nan, -np.inf
    synth.write_nifti(f, img)
    assert not np.isnan(synth.read_array(f)).any()  # the blind spot this test is about
    (p,) = _problems(folder)
    assert p.path == f and "2 NaN voxel(s) and 1 inf voxel(s)" in p.problem


def test_issue_14_label_without_image_is_named(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=3, n_channels=2)
    (folder / "imagesTr" / "case_001_0000.nii.gz").unlink()
    (folder / "imagesTr" / "case_001_0001.nii.gz").unlink()
    (folder / "labelsTr" / "case_002.nii.gz").unlink()  # and an image without its label
    problems = _problems(folder)
    by_path = {p.path: p.problem for p in problems}
    assert "label file without image" in by_path[folder / "labelsTr" / "case_001.nii.gz"]
    assert "missing label file of case 'case_002'" in by_path[folder / "labelsTr" / "case_002.nii.gz"]


def test_issue_14_truncated_nifti_is_named(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    f = folder / "imagesTr" / "case_000_0000.nii.gz"
    f.write_bytes(f.read_bytes()[:-40])
    (p,) = _problems(folder)
    assert p.path == f and "truncated" in p.problem


def test_num_training_mismatch(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    _set_json(folder, numTraining=3)
    (p,) = _problems(folder)
    assert p.path == folder / "dataset.json" and "numTraining is 3 but 2" in p.problem


def test_labels_must_be_consecutive(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=1, n_channels=1, labels={"background": 0, "a": 1, "b": 2})
    _set_json(folder, labels={"background": 0, "a": 1, "b": 3})
    problems = _problems(folder)
    assert any(p.path == folder / "dataset.json" and "consecutive" in p.problem for p in problems)


def test_unreadable_file(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    (folder / "imagesTr" / "case_000_0000.nii.gz").write_bytes(b"not an image")  # also the reader's example file
    (p,) = _problems(folder)
    assert p.path == folder / "imagesTr" / "case_000_0000.nii.gz" and "cannot be read" in p.problem


def test_extra_channels_in_a_4d_file(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=1, n_channels=1)
    msd = synth.make_msd_folder(tmp_path / "msd", n_cases=1)
    shutil.copyfile(msd / "imagesTr" / "tc_001.nii.gz", folder / "imagesTr" / "case_000_0000.nii.gz")
    (p,) = _problems(folder)
    assert "2 image channel(s)" in p.problem and p.path == folder / "imagesTr" / "case_000_0000.nii.gz"


def test_all_problems_reported_at_once(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=4, n_channels=2)
    (folder / "imagesTr" / "case_000_0001.nii.gz").unlink()                               # missing channel
    synth.write_nifti(folder / "labelsTr" / "case_001.nii.gz", np.full(synth.SHAPE, 4, np.uint8))  # bad value
    synth.write_nifti(folder / "labelsTr" / "case_002.nii.gz", np.zeros((8, 10, 5), np.uint8))     # shape
    (folder / "imagesTr" / "case_003_0000.nii").write_bytes(b"")                          # wrong ending
    problems = _problems(folder)
    named = {p.path.name for p in problems}
    assert {"case_000_0001.nii.gz", "case_001.nii.gz", "case_002.nii.gz", "case_003_0000.nii"} <= named
    assert len(problems) == 4


def test_dataset_json_problems(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=1, n_channels=1)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    (p,) = _problems(folder)
    assert p.path == folder / "dataset.json" and "file_ending" in p.problem


def test_unsupported_reader_is_a_problem(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=1, n_channels=1)
    _set_json(folder, overwrite_image_reader_writer="Tiff3DIO")
    (p,) = _problems(folder)
    assert p.path == folder / "dataset.json" and "Tiff3DIO" in p.problem


def test_empty_dataset(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=1, n_channels=1)
    shutil.rmtree(folder / "imagesTr")
    (folder / "imagesTr").mkdir()
    problems = _problems(folder)
    assert problems[0].path == folder / "imagesTr" and "empty" in problems[0].problem


def test_png_dataset(tmp_path, synth):
    folder = synth.make_png_dataset(tmp_path)
    verify_dataset_integrity(folder, num_processes=1)
    skio.imsave(str(folder / "labelsTr" / "em_01.png"), np.full((16, 20), 3, np.uint8), check_contrast=False)
    (p,) = _problems(folder)
    assert p.path == folder / "labelsTr" / "em_01.png" and "[3]" in p.problem


def test_real_hippocampus_five_cases(tmp_path, hippo_dir, synth):
    """Five real cases (003 has a float32 label file) converted from MSD layout pass the check."""
    ids = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007"]
    src = tmp_path / "Task04_Hippocampus"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (src / sub).mkdir(parents=True)
    for i in ids:
        for sub in ("imagesTr", "labelsTr"):
            shutil.copyfile(hippo_dir / sub / f"{i}.nii.gz", src / sub / f"{i}.nii.gz")
    dj = json.loads((hippo_dir / "dataset.json").read_text())
    dj["training"] = [t for t in dj["training"] if any(i in t["image"] for i in ids)]
    dj["numTraining"] = len(ids)
    (src / "dataset.json").write_text(json.dumps(dj))
    folder = convert_msd_dataset(src, tmp_path / "raw", num_processes=1)
    before = synth.tree_hashes(folder)
    verify_dataset_integrity(folder, num_processes=1)
    assert synth.tree_hashes(folder) == before
    # the float32 label file was cast without changing values
    np.testing.assert_array_equal(synth.read_array(folder / "labelsTr" / "hippocampus_003.nii.gz"),
                                  synth.read_array(hippo_dir / "labelsTr" / "hippocampus_003.nii.gz"))
