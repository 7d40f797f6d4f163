"""Case discovery for training and inference (reference §1.1)."""

import json

import pytest

from pnnunet.dataset.cases import get_inference_cases, get_training_cases
from pnnunet.dataset.dataset_json import load_dataset_json
from pnnunet.errors import DatasetError


def _dj(folder):
    return load_dataset_json(folder / "dataset.json")


def test_training_cases_sorted_with_channels_in_order(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=3, n_channels=2)
    (folder / "imagesTr" / ".DS_Store").write_text("x")  # hidden files are ignored
    cases = get_training_cases(folder, _dj(folder))
    assert list(cases) == ["case_000", "case_001", "case_002"]
    assert cases["case_001"]["images"] == [folder / "imagesTr" / "case_001_0000.nii.gz",
                                           folder / "imagesTr" / "case_001_0001.nii.gz"]
    assert cases["case_001"]["label"] == folder / "labelsTr" / "case_001.nii.gz"


def test_case_ids_with_underscores_and_digits(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=1, n_channels=1)
    for src, dst in [("imagesTr/case_000_0000.nii.gz", "imagesTr/la_0001_0000.nii.gz"),
                     ("labelsTr/case_000.nii.gz", "labelsTr/la_0001.nii.gz")]:
        (folder / src).rename(folder / dst)
    assert list(get_training_cases(folder, _dj(folder))) == ["la_0001"]


def test_dataset_key_relative_and_env_paths(tmp_path, synth, monkeypatch):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (folder / "imagesTr" / "case_001_0000.nii.gz").rename(other / "img1.nii.gz")
    monkeypatch.setenv("PN_TEST_DATA", str(other))
    dj = _dj(folder) | {"dataset": {
        "x1": {"images": ["$PN_TEST_DATA/img1.nii.gz"], "label": "labelsTr/case_001.nii.gz"},
        "x0": {"images": ["imagesTr/case_000_0000.nii.gz"], "label": "./labelsTr/case_000.nii.gz"}}}
    cases = get_training_cases(folder, dj)
    assert list(cases) == ["x0", "x1"]
    assert cases["x1"]["images"] == [other / "img1.nii.gz"]
    assert cases["x0"]["label"] == folder / "labelsTr" / "case_000.nii.gz"
    dj["dataset"]["x0"]["images"] = ["imagesTr/nothere_0000.nii.gz"]
    with pytest.raises(DatasetError, match="nothere_0000.nii.gz"):
        get_training_cases(folder, dj)


def test_wrong_file_ending_names_file(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    (folder / "imagesTr" / "case_001_0000.nii.gz").rename(folder / "imagesTr" / "case_001_0000.nii")
    with pytest.raises(DatasetError) as e:
        get_training_cases(folder, _dj(folder))
    assert "case_001_0000.nii" in str(e.value) and "file_ending .nii.gz" in str(e.value)


def test_missing_channel_names_expected_path(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=2)
    (folder / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(DatasetError) as e:
        get_training_cases(folder, _dj(folder))
    assert e.value.path == folder / "imagesTr" / "case_001_0001.nii.gz"
    assert "missing channel 1" in str(e.value)


def test_extra_channel_is_an_error(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=1, n_channels=2)
    dj = _dj(folder) | {"channel_names": {"0": "x"}}
    with pytest.raises(DatasetError, match="case_000_0001.nii.gz.*1 channel"):
        get_training_cases(folder, dj)


def test_missing_label_names_expected_path(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=2, n_channels=1)
    (folder / "labelsTr" / "case_000.nii.gz").unlink()
    with pytest.raises(DatasetError) as e:
        get_training_cases(folder, _dj(folder))
    assert e.value.path == folder / "labelsTr" / "case_000.nii.gz"


def test_several_problems_are_counted(tmp_path, synth):
    folder = synth.make_v2_dataset(tmp_path, n_cases=3, n_channels=1)
    for i in range(3):
        (folder / "labelsTr" / f"case_{i:03d}.nii.gz").unlink()
    with pytest.raises(DatasetError, match="and 2 more"):
        get_training_cases(folder, _dj(folder))


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_imagesTr(tmp_path, synth, state):
    folder = synth.make_v2_dataset(tmp_path, n_cases=1, n_channels=1)
    for p in (folder / "imagesTr").iterdir():
        p.unlink()
    (folder / "imagesTr" / ".gitkeep").write_text("")
    if state == "missing":
        for p in (folder / "imagesTr").iterdir():
            p.unlink()
        (folder / "imagesTr").rmdir()
    with pytest.raises(DatasetError) as e:
        get_training_cases(folder, _dj(folder))
    assert e.value.path == folder / "imagesTr" and "CASE_0000.nii.gz" in e.value.fix


# ---------------------------------------------------------------- inference inputs


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return folder


def test_inference_single_channel_may_omit_suffix(tmp_path):
    f = _touch(tmp_path / "in", "b.nii.gz", "a_0000.nii.gz", "img_0001.nii.gz", ".gitkeep")
    cases = get_inference_cases(f, ".nii.gz", 1)
    assert cases == {"a": [f / "a_0000.nii.gz"], "b": [f / "b.nii.gz"], "img_0001": [f / "img_0001.nii.gz"]}


def test_inference_case_given_twice(tmp_path):
    f = _touch(tmp_path / "in", "a.nii.gz", "a_0000.nii.gz")
    with pytest.raises(DatasetError, match="twice"):
        get_inference_cases(f, ".nii.gz", 1)


def test_inference_multichannel_folder_for_single_channel_model(tmp_path):
    f = _touch(tmp_path / "in", "a_0000.nii.gz", "a_0001.nii.gz")
    with pytest.raises(DatasetError, match="expects 1 channel"):
        get_inference_cases(f, ".nii.gz", 1)


def test_inference_multichannel(tmp_path):
    f = _touch(tmp_path / "in", "a_0001.png", "a_0000.png", "b_0000.png", "b_0001.png")
    assert get_inference_cases(f, ".png", 2) == {"a": [f / "a_0000.png", f / "a_0001.png"],
                                                 "b": [f / "b_0000.png", f / "b_0001.png"]}


def test_inference_missing_channel_names_case(tmp_path):
    f = _touch(tmp_path / "in", "a_0000.png", "a_0001.png", "b_0000.png")
    with pytest.raises(DatasetError) as e:
        get_inference_cases(f, ".png", 2)
    assert e.value.path == f / "b_0001.png" and "case 'b'" in str(e.value)


def test_inference_no_suffix_with_two_channels(tmp_path):
    f = _touch(tmp_path / "in", "a.png")
    with pytest.raises(DatasetError, match="a.png"):
        get_inference_cases(f, ".png", 2)


def test_inference_wrong_ending(tmp_path):
    f = _touch(tmp_path / "in", "a_0000.nii.gz", "b_0000.nii")
    with pytest.raises(DatasetError) as e:
        get_inference_cases(f, ".nii.gz", 1)
    assert e.value.path == f / "b_0000.nii" and ".nii.gz" in str(e.value)


def test_inference_empty_or_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        get_inference_cases(_touch(tmp_path / "in", ".gitkeep"), ".nii.gz", 1)
    with pytest.raises(DatasetError, match="not found"):
        get_inference_cases(tmp_path / "nope", ".nii.gz", 1)


def test_real_isbi_cases(isbi_dir):
    dj = json.loads((isbi_dir / "dataset.json").read_text())
    cases = get_training_cases(isbi_dir, dj)
    assert len(cases) == dj["numTraining"] == 30
    test = get_inference_cases(isbi_dir / "imagesTs", ".png", 1)
    assert all(len(v) == 1 for v in test.values()) and "isbi2012_test_00" in test
