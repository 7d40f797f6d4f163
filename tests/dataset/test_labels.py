"""LabelInfo (reference §1.4, Appendix E; values worked out by hand from those rules)."""

import pytest

from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import DatasetError


def test_label_mode_hippocampus():
    info = LabelInfo.from_dataset_json({"labels": {"background": 0, "Anterior": 1, "Posterior": 2}})
    assert info.all_labels == [0, 1, 2]
    assert info.foreground_labels == [1, 2]
    assert info.foreground_regions == [1, 2]
    assert info.ignore_label is None and not info.has_ignore_label
    assert not info.has_regions and info.regions_class_order is None
    assert info.num_segmentation_heads == 3          # softmax over all labels incl. background
    assert info.names == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert info.num_labels_for_planning == 3


def test_unsorted_labels_are_sorted():
    info = LabelInfo.from_dataset_json({"labels": {"b": 2, "background": 0, "a": 1}})
    assert info.all_labels == [0, 1, 2]


def test_region_mode_brats():
    # The BraTS region example of the upstream docs: regions in dataset.json order, lists → tuples.
    d = {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
         "regions_class_order": [1, 2, 3]}
    info = LabelInfo.from_dataset_json(d)
    assert info.has_regions
    assert info.all_labels == [0, 1, 2, 3]
    assert info.foreground_labels == [1, 2, 3]
    assert info.foreground_regions == [(1, 2, 3), (2, 3), 3]
    assert info.num_segmentation_heads == 3          # one sigmoid per region
    assert info.regions_class_order == [1, 2, 3]
    assert info.names == {0: "background", 3: "enhancing tumor"}
    assert info.num_labels_for_planning == 4         # len(labels) (Appendix G.3)


def test_region_mode_needs_regions_class_order():
    d = {"labels": {"background": 0, "wt": [1, 2], "tc": 2}}
    with pytest.raises(DatasetError, match="regions_class_order"):
        LabelInfo.from_dataset_json(d)
    with pytest.raises(DatasetError, match="regions_class_order"):
        LabelInfo.from_dataset_json(d | {"regions_class_order": [1]})


def test_ignore_label():
    info = LabelInfo.from_dataset_json({"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}})
    assert info.ignore_label == 3 and info.has_ignore_label
    assert info.all_labels == [0, 1, 2]
    assert info.num_segmentation_heads == 3          # ignore is not predicted
    assert info.expected_values == [0, 1, 2, 3]
    assert info.num_labels_for_planning == 4         # ignore counted for planning (Appendix G.3)


@pytest.mark.parametrize("ignore", [2, 5, [3]])
def test_ignore_must_be_max_plus_one(ignore):
    with pytest.raises(DatasetError, match="ignore"):
        LabelInfo.from_dataset_json({"labels": {"background": 0, "a": 1, "b": 2, "ignore": ignore}})


@pytest.mark.parametrize("labels", [{"a": 1}, {"background": 1}, {"background": [0]}, {"background": 0, "a": "x"}])
def test_background_and_types(labels):
    with pytest.raises(DatasetError):
        LabelInfo.from_dataset_json({"labels": labels})


def test_bad_region_datasets_name_dataset_json(tmp_path):
    """Regions without regions_class_order, ignore not max + 1, a region naming a label that does not exist:
    each a DatasetError naming the dataset.json file (issue 12)."""
    import json

    from pnnunet.dataset.dataset_json import load_dataset_json

    base = {"channel_names": {"0": "MRI"}, "numTraining": 1, "file_ending": ".nii.gz"}
    bad = {
        "no_order": ({"background": 0, "hippocampus": [1, 2], "posterior": 2}, None, "regions_class_order"),
        "ignore_not_max_plus_1": ({"background": 0, "a": 1, "b": 2, "ignore": 5}, None, r"largest label \+ 1"),
        "region_ignore_not_max_plus_1": ({"background": 0, "h": [1, 2], "p": 2, "ignore": 2}, [1, 2],
                                         r"largest label \+ 1"),
        "unknown_label_in_region": ({"background": 0, "h": [1, 2, 7], "p": 2}, [1, 2], r"names label\(s\) \[7\]"),
        "order_paints_unknown": ({"background": 0, "h": [1, 2], "p": 2}, [1, 9], r"paints \[9\]"),
    }
    for name, (labels, order, match) in bad.items():
        path = tmp_path / name / "dataset.json"
        path.parent.mkdir()
        d = {**base, "labels": labels, **({"regions_class_order": order} if order is not None else {})}
        path.write_text(json.dumps(d))
        with pytest.raises(DatasetError, match=match) as err:
            load_dataset_json(path)
        assert str(err.value).startswith(str(path)), name
        assert "fix:" in str(err.value)
    ok = {**base, "labels": {"background": 0, "hippocampus": [1, 2], "posterior": 2}, "regions_class_order": [1, 2]}
    info = LabelInfo.from_dataset_json(ok)
    assert info.foreground_regions == [(1, 2), 2] and info.num_segmentation_heads == 2
