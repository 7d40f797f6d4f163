"""dataset.json reading and validation (reference §1.2, §1.3)."""

import json

import pytest

from pnnunet.dataset.dataset_json import is_msd_dataset_json, load_dataset_json
from pnnunet.errors import DatasetError

V2 = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "PZ": 1, "TZ": 2},
      "numTraining": 32, "file_ending": ".nii.gz", "name": "Prostate"}  # reference §1.2 example


def _write(tmp_path, d, text=None):
    p = tmp_path / "dataset.json"
    p.write_text(text if text is not None else json.dumps(d))
    return p


def test_valid_v2_loads_unchanged(tmp_path):
    assert load_dataset_json(_write(tmp_path, V2)) == V2


def test_modality_is_accepted_as_channel_names(tmp_path):
    d = {k: v for k, v in V2.items() if k != "channel_names"} | {"modality": {"0": "CT"}}
    out = load_dataset_json(_write(tmp_path, d))
    assert out["channel_names"] == {"0": "CT"}
    assert out["modality"] == {"0": "CT"}


def test_missing_keys_are_all_named_with_file_and_fix(tmp_path):
    d = {"labels": V2["labels"], "name": "x"}
    p = _write(tmp_path, d)
    with pytest.raises(DatasetError) as e:
        load_dataset_json(p)
    msg = str(e.value)
    assert str(p) in msg
    for key in ("channel_names", "numTraining", "file_ending"):
        assert key in msg
    assert "fix:" in msg and "'labels'" not in msg.split("(required")[0]


def test_msd_json_missing_keys_suggests_conversion(tmp_path):
    d = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"}, "numTraining": 1, "training": []}
    with pytest.raises(DatasetError, match="MSD/v1"):
        load_dataset_json(_write(tmp_path, d))


def test_unparseable_json_reports_position(tmp_path):
    p = _write(tmp_path, None, text='{\n  "labels": {"background": 0,}\n}')
    with pytest.raises(DatasetError) as e:
        load_dataset_json(p)
    assert "line 2" in str(e.value) and "column" in str(e.value) and str(p) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset_json(tmp_path / "dataset.json")


@pytest.mark.parametrize("labels, match", [
    ({"0": "background", "1": "a"}, "names to integers"),       # v1 orientation
    ({"background": 0, "a": "1"}, "must be integers"),
    ({"background": 0, "a": 1.5}, "must be integers"),
    ({"background": 1, "a": 0}, "background must be"),
    ({"a": 1}, "background"),
    ({"background": [0, 1], "a": 1}, "background must be"),
    ({"background": 0, "a": 1, "ignore": 5}, "largest label"),   # ignore must be max+1 (§1.4)
])
def test_bad_labels(tmp_path, labels, match):
    with pytest.raises(DatasetError, match=match):
        load_dataset_json(_write(tmp_path, V2 | {"labels": labels}))


@pytest.mark.parametrize("key, value", [("numTraining", "32"), ("numTraining", -1), ("file_ending", "nii.gz"),
                                        ("channel_names", {"1": "T2"}), ("channel_names", {})])
def test_bad_scalar_fields(tmp_path, key, value):
    with pytest.raises(DatasetError, match=key):
        load_dataset_json(_write(tmp_path, V2 | {key: value}))


def test_regions_are_accepted(tmp_path):
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
    d = load_dataset_json(_write(tmp_path, V2 | {"labels": labels, "regions_class_order": [1, 2, 3]}))
    assert d["labels"] == labels


def test_is_msd_dataset_json():
    msd = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior"}, "numTraining": 1,
           "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}], "test": []}
    assert is_msd_dataset_json(msd)
    assert not is_msd_dataset_json(V2)
    assert not is_msd_dataset_json({k: v for k, v in msd.items() if k != "training"})
    assert not is_msd_dataset_json(msd | {"labels": {"background": 0}})


def test_real_hippocampus_json_is_msd(hippo_dir):
    assert is_msd_dataset_json(json.loads((hippo_dir / "dataset.json").read_text()))
