"""resolve_dataset: every -d form of the DESIGN "Datasets" contract."""

import pytest

from pnnunet.dataset.resolve import available_datasets, resolve_dataset
from pnnunet.errors import PnnunetError


@pytest.fixture
def raw(tmp_path):
    raw = tmp_path / "raw"
    for name in ("Dataset004_Hippocampus", "Dataset027_ACDC"):
        (raw / name).mkdir(parents=True)
    (raw / "Task99_NotADatasetFolder").mkdir()
    (raw / ".tmp-Dataset005_X-123").mkdir()
    return raw


@pytest.mark.parametrize("spec", ["4", "004", "Dataset004", "Dataset4", "Dataset004_Hippocampus", "Hippocampus",
                                  "hippocampus", " 4 "])
def test_name_and_id_forms(raw, spec):
    assert resolve_dataset(spec, raw) == "Dataset004_Hippocampus"


def test_available_ignores_other_folders(raw, tmp_path):
    pre = tmp_path / "pre"
    (pre / "Dataset100_OnlyPreprocessed").mkdir(parents=True)
    assert available_datasets(raw, pre) == ["Dataset004_Hippocampus", "Dataset027_ACDC", "Dataset100_OnlyPreprocessed"]
    assert resolve_dataset("100", raw, pre) == "Dataset100_OnlyPreprocessed"


def test_none_uses_the_only_dataset(tmp_path):
    raw = tmp_path / "raw"
    (raw / "Dataset001_Only").mkdir(parents=True)
    assert resolve_dataset(None, raw) == "Dataset001_Only"
    pre = tmp_path / "pre"
    (pre / "Dataset001_Only").mkdir(parents=True)
    assert resolve_dataset(None, raw, pre) == "Dataset001_Only"


def test_none_with_several_lists_them(raw):
    with pytest.raises(PnnunetError) as e:
        resolve_dataset(None, raw)
    assert "Dataset004_Hippocampus" in str(e.value) and "Dataset027_ACDC" in str(e.value)


def test_none_with_nothing(tmp_path):
    with pytest.raises(PnnunetError, match="available: none"):
        resolve_dataset(None, tmp_path / "raw")


@pytest.mark.parametrize("spec, suggestion", [("Hipocampus", "Dataset004_Hippocampus"),
                                              ("Dataset004_Hipocampus", "Dataset004_Hippocampus"),
                                              ("ACD", "Dataset027_ACDC")])
def test_unknown_lists_and_suggests(raw, spec, suggestion):
    with pytest.raises(PnnunetError) as e:
        resolve_dataset(spec, raw)
    msg = str(e.value)
    assert f"Did you mean {suggestion}" in msg and "Available: Dataset004_Hippocampus, Dataset027_ACDC" in msg


def test_unknown_id(raw):
    with pytest.raises(PnnunetError, match="'5' not found"):
        resolve_dataset("5", raw)


def test_ambiguous(raw):
    (raw / "Dataset104_Hippocampus").mkdir()
    with pytest.raises(PnnunetError, match="ambiguous"):
        resolve_dataset("Hippocampus", raw)
    assert resolve_dataset("Dataset104_Hippocampus", raw) == "Dataset104_Hippocampus"


def test_folder_inside_raw_or_preprocessed(raw, tmp_path):
    assert resolve_dataset(str(raw / "Dataset027_ACDC"), raw) == "Dataset027_ACDC"
    pre = tmp_path / "pre" / "Dataset100_Pre"
    pre.mkdir(parents=True)
    (pre / "dataset.json").write_text("{}")
    assert resolve_dataset(str(pre), raw, pre.parent) == "Dataset100_Pre"  # not copied into raw
    assert not (raw / "Dataset100_Pre").exists()


def test_msd_folder_is_converted(tmp_path, synth, raw):
    src = synth.make_msd_folder(tmp_path / "downloads")
    assert resolve_dataset(str(src), raw, num_processes=1) == "Dataset007_Twochan"
    assert (raw / "Dataset007_Twochan" / "imagesTr" / "tc_001_0001.nii.gz").is_file()
    assert resolve_dataset(str(src), raw) == "Dataset007_Twochan"            # reused
    assert resolve_dataset("7", raw) == "Dataset007_Twochan"
    other = synth.make_msd_folder(tmp_path / "dl2", name="Task04_Other")
    with pytest.raises(PnnunetError, match="already taken"):
        resolve_dataset(str(other), raw)
    assert resolve_dataset(str(other), raw, dataset_id=504) == "Dataset504_Other"


def test_relative_folder_path(tmp_path, synth, raw, monkeypatch):
    synth.make_png_dataset(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_dataset("./EM_toy", raw) == "Dataset500_EM_toy"


def test_v2_folder_outside_raw_is_imported(tmp_path, synth, raw):
    src = synth.make_v2_dataset(tmp_path / "elsewhere", name="MyData", n_cases=1, n_channels=1)
    assert resolve_dataset(str(src), raw) == "Dataset500_MyData"
    assert (raw / "Dataset500_MyData" / "dataset.json").is_file()


def test_folder_without_dataset_json(tmp_path, raw):
    (tmp_path / "x" / "imagesTr").mkdir(parents=True)
    with pytest.raises(PnnunetError, match="no dataset.json"):
        resolve_dataset(str(tmp_path / "x"), raw)
