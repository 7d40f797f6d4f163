"""MSD/v1 conversion and import of v2 folders into raw (reference §1.3, DESIGN "Datasets")."""

import json
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from pnnunet.dataset.cases import get_training_cases
from pnnunet.dataset.dataset_json import load_dataset_json
from pnnunet.dataset.integrity import verify_dataset_integrity
from pnnunet.dataset.msd import MARKER, convert_msd_dataset, import_dataset_folder, is_msd_folder
from pnnunet.errors import DatasetError


def _json(p):
    return json.loads(p.read_text())


def test_is_msd_folder(tmp_path, synth):
    assert is_msd_folder(synth.make_msd_folder(tmp_path))
    assert not is_msd_folder(synth.make_v2_dataset(tmp_path))
    assert not is_msd_folder(tmp_path / "nope")


def test_convert_4d_two_channel(tmp_path, synth):
    src = synth.make_msd_folder(tmp_path / "src", n_cases=2, n_channels=2)
    src_before = synth.tree_hashes(src)
    raw = tmp_path / "raw"
    out = convert_msd_dataset(src, raw, num_processes=1)
    assert out == raw / "Dataset007_Twochan"                       # id from Task07, name = rest
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "tc_001_0000.nii.gz", "tc_001_0001.nii.gz", "tc_002_0000.nii.gz", "tc_002_0001.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["tc_900_0000.nii.gz", "tc_900_0001.nii.gz"]
    four_d = sitk.ReadImage(str(src / "imagesTr" / "tc_002.nii.gz"))
    arr4 = sitk.GetArrayFromImage(four_d)                           # (c, z, y, x)
    for c in range(2):
        ch = out / "imagesTr" / f"tc_002_{c:04d}.nii.gz"
        np.testing.assert_array_equal(synth.read_array(ch), arr4[c])
        spacing, origin, direction = synth.read_geometry(ch)
        assert spacing == pytest.approx(synth.SPACING) and origin == pytest.approx(synth.ORIGIN)
        assert direction == pytest.approx(synth.DIRECTION)
    # labels copied unchanged (byte-identical: they are integer files)
    assert (out / "labelsTr" / "tc_001.nii.gz").read_bytes() == (src / "labelsTr" / "tc_001.nii.gz").read_bytes()
    dj = _json(out / "dataset.json")
    assert dj["channel_names"] == {"0": "T2", "1": "ADC"}
    assert dj["labels"] == {"background": 0, "left": 1, "right": 2}
    assert dj["numTraining"] == 2 and dj["file_ending"] == ".nii.gz"
    assert dj["name"] == "Twochan" and dj["description"] == "synthetic" and dj["numTest"] == 1
    assert not {"modality", "training", "test"} & set(dj)
    assert _json(out / MARKER)["source"] == str(src.resolve())
    assert synth.tree_hashes(src) == src_before                    # source untouched
    assert [p.name for p in raw.iterdir()] == ["Dataset007_Twochan"]  # no temporary folder left
    verify_dataset_integrity(out, num_processes=1)


def test_reuse_and_clash(tmp_path, synth):
    raw = tmp_path / "raw"
    src = synth.make_msd_folder(tmp_path / "src")
    out = convert_msd_dataset(src, raw, num_processes=1)
    stamp = synth.tree_hashes(out)
    assert convert_msd_dataset(src, raw, num_processes=1) == out    # same source: reused, nothing rewritten
    assert synth.tree_hashes(out) == stamp
    other = synth.make_msd_folder(tmp_path / "other", name="Task07_Other", seed=1)
    with pytest.raises(DatasetError) as e:
        convert_msd_dataset(other, raw, num_processes=1)
    msg = str(e.value)
    assert "already taken" in msg and "Dataset007_Twochan" in msg and "--id" in msg
    assert convert_msd_dataset(other, raw, dataset_id=8, num_processes=1) == raw / "Dataset008_Other"
    assert convert_msd_dataset(other, raw, num_processes=1) == raw / "Dataset008_Other"  # reused without --id


def test_changed_source_is_reported(tmp_path, synth):
    raw = tmp_path / "raw"
    src = synth.make_msd_folder(tmp_path / "src")
    convert_msd_dataset(src, raw, num_processes=1)
    d = _json(src / "dataset.json") | {"description": "edited"}
    (src / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(DatasetError, match="changed"):
        convert_msd_dataset(src, raw, num_processes=1)


def test_float_labels_are_cast_without_changing_values(tmp_path, synth):
    src = synth.make_msd_folder(tmp_path / "src", n_cases=2, n_channels=1)
    lab = synth.read_array(src / "labelsTr" / "tc_001.nii.gz").astype(np.float32)
    synth.write_nifti(src / "labelsTr" / "tc_001.nii.gz", lab)
    out = convert_msd_dataset(src, tmp_path / "raw", num_processes=1)
    img = sitk.ReadImage(str(out / "labelsTr" / "tc_001.nii.gz"))
    assert img.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), lab)
    assert img.GetSpacing() == pytest.approx(synth.SPACING) and img.GetDirection() == pytest.approx(synth.DIRECTION)


def test_non_integer_float_label_is_an_error(tmp_path, synth):
    src = synth.make_msd_folder(tmp_path / "src", n_cases=1, n_channels=1)
    synth.write_nifti(src / "labelsTr" / "tc_001.nii.gz", np.full(synth.SHAPE, 0.5, np.float32))
    with pytest.raises(DatasetError, match="tc_001.nii.gz.*not integers"):
        convert_msd_dataset(src, tmp_path / "raw", num_processes=1)
    assert not (tmp_path / "raw" / "Dataset007_Twochan").exists()
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "raw").iterdir())


def test_3d_images_without_prefix_and_explicit_id(tmp_path, synth):
    src = synth.make_msd_folder(tmp_path / "src", name="my challenge", n_cases=1, n_channels=1, with_test=False)
    out = convert_msd_dataset(src, tmp_path / "raw", num_processes=1)
    assert out.name == "Dataset500_Twochan"                         # no prefix: id 500, name from dataset.json
    assert (out / "imagesTr" / "tc_001_0000.nii.gz").read_bytes() == (src / "imagesTr" / "tc_001.nii.gz").read_bytes()
    assert list((out / "imagesTs").iterdir()) == []
    assert convert_msd_dataset(src, tmp_path / "raw2", dataset_id=42, num_processes=1).name == "Dataset042_Twochan"


def test_v1_presplit_folder_is_copied(tmp_path, synth):
    """An nnU-Net v1 raw task (images already CASE_0000) keeps its file names."""
    src = synth.make_msd_folder(tmp_path / "src", name="Task123_Old", n_cases=2, n_channels=1, with_test=False)
    for p in sorted((src / "imagesTr").iterdir()):
        p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz")))
    out = convert_msd_dataset(src, tmp_path / "raw", num_processes=1)
    assert out.name == "Dataset123_Old"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["tc_001_0000.nii.gz", "tc_002_0000.nii.gz"]
    verify_dataset_integrity(out, num_processes=1)


def test_not_msd(tmp_path, synth):
    with pytest.raises(DatasetError, match="not an MSD"):
        convert_msd_dataset(synth.make_v2_dataset(tmp_path), tmp_path / "raw")


# ---------------------------------------------------------------- v2 import


def test_import_v2_folder_without_prefix(tmp_path, synth):
    src = synth.make_png_dataset(tmp_path / "src")
    os.chmod(src / "imagesTr", stat.S_IRUSR | stat.S_IXUSR)         # a read-only source gives a writable copy
    try:
        before = synth.tree_hashes(src)
        out = import_dataset_folder(src, tmp_path / "raw")
        assert out.name == "Dataset500_EM_toy"                      # lowest free id >= 500, name from dataset.json
        assert {k: h for k, (h, _) in synth.tree_hashes(out).items() if k != MARKER} == \
            {k: h for k, (h, _) in before.items()}
        assert os.access(out / "imagesTr", os.W_OK)
        assert synth.tree_hashes(src) == before
        assert import_dataset_folder(src, tmp_path / "raw") == out  # reuse
        second = synth.make_png_dataset(tmp_path / "src2", name="other", seed=3)
        assert import_dataset_folder(second, tmp_path / "raw").name == "Dataset501_EM_toy"
        verify_dataset_integrity(out, num_processes=1)
    finally:
        os.chmod(src / "imagesTr", stat.S_IRWXU)


def test_import_with_dataset_prefix_and_clash(tmp_path, synth):
    raw = tmp_path / "raw"
    a = synth.make_v2_dataset(tmp_path / "a", name="Dataset012_Foo")
    assert import_dataset_folder(a, raw) == raw / "Dataset012_Foo"
    b = synth.make_v2_dataset(tmp_path / "b", name="Dataset012_Bar")
    with pytest.raises(DatasetError, match="(?s)already taken.*--id"):
        import_dataset_folder(b, raw)
    assert import_dataset_folder(b, raw, dataset_id=13) == raw / "Dataset013_Bar"
    assert import_dataset_folder(raw / "Dataset012_Foo", raw) == raw / "Dataset012_Foo"  # already in raw


def test_import_rewrites_dataset_paths_outside_the_folder(tmp_path, synth):
    src = synth.make_v2_dataset(tmp_path / "a", name="Dataset020_Ext", n_cases=1, n_channels=1)
    outside = tmp_path / "a" / "shared_images"
    outside.mkdir()
    (src / "imagesTr" / "case_000_0000.nii.gz").rename(outside / "img.nii.gz")
    d = _json(src / "dataset.json") | {"dataset": {"c": {"images": ["../shared_images/img.nii.gz"],
                                                         "label": "labelsTr/case_000.nii.gz"}}}
    (src / "dataset.json").write_text(json.dumps(d))
    out = import_dataset_folder(src, tmp_path / "raw")
    cases = get_training_cases(out, load_dataset_json(out / "dataset.json"))
    assert cases["c"]["images"] == [outside / "img.nii.gz"] and cases["c"]["label"] == out / "labelsTr/case_000.nii.gz"


def test_import_real_isbi(tmp_path, isbi_dir):
    out = import_dataset_folder(isbi_dir, tmp_path / "raw")
    assert out.name == "Dataset500_ISBI2012_EM_2D"
    assert len(list((out / "imagesTr").glob("*.png"))) == 30


@pytest.mark.e2e
def test_convert_real_hippocampus(tmp_path, hippo_dir, synth):
    out = convert_msd_dataset(hippo_dir, tmp_path / "raw", num_processes=2)
    assert out.name == "Dataset004_Hippocampus"
    dj = load_dataset_json(out / "dataset.json")
    # the dataset.json upstream's nnUNetv2_convert_MSD_dataset writes for this folder (checked by running it)
    assert dj == {"name": "Hippocampus", "description": "Left and right hippocampus segmentation",
                  "reference": " Vanderbilt University Medical Center", "licence": "CC-BY-SA 4.0",
                  "relase": "1.0 04/05/2018", "tensorImageSize": "3D",
                  "labels": {"background": 0, "Anterior": 1, "Posterior": 2}, "numTraining": 220, "numTest": 0,
                  "file_ending": ".nii.gz", "channel_names": {"0": "MRI"}}
    cases = get_training_cases(out, dj)
    assert len(cases) == 220 and "hippocampus_003" in cases
    for sub in ("imagesTr", "labelsTr"):
        src_names = sorted(p.name for p in (hippo_dir / sub).glob("*.nii.gz"))
        assert len(src_names) == 220
    assert (out / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes() == \
        (hippo_dir / "imagesTr" / "hippocampus_001.nii.gz").read_bytes()
    for case in ("hippocampus_003", "hippocampus_243"):                # float32 label files in the source
        np.testing.assert_array_equal(synth.read_array(out / "labelsTr" / f"{case}.nii.gz"),
                                      synth.read_array(hippo_dir / "labelsTr" / f"{case}.nii.gz"))
    assert list((out / "imagesTs").iterdir()) == []
    assert convert_msd_dataset(hippo_dir, tmp_path / "raw") == out
