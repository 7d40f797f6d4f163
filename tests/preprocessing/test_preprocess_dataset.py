"""Dataset-level preprocessing: output layout, resume, stale-folder rebuild, gt copy, process pool."""

import copy
import json
import os
import time

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk

from pnnunet.errors import PnnunetError
from pnnunet.imageio import SimpleITKIO
from pnnunet.preprocessing.preprocessor import preprocess_case_files
from pnnunet.preprocessing.run import MARKER_NAME, preprocess_dataset
from pnnunet.preprocessing.storage import SHARED_POINTER, list_cases, load_preprocessed_case

RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
}
PLANS = {
    "transpose_forward": [0, 1, 2],
    "foreground_intensity_properties_per_channel": {"0": {"mean": 1.0, "std": 2.0, "percentile_00_5": 0.0,
                                                          "percentile_99_5": 10.0}},
    "configurations": {
        "3d_fullres": {"data_identifier": "P_3d_fullres", "spacing": [2.0, 1.0, 1.0], "patch_size": [8, 8, 8],
                       "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False], **RESAMPLING},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        "2d": {"data_identifier": "P_2d", "spacing": [1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
               "use_mask_for_norm": [False], **RESAMPLING},
    },
}
DATASET_JSON = {"labels": {"background": 0, "a": 1}, "channel_names": {"0": "MR"}, "file_ending": ".nii.gz",
                "numTraining": 3}


@pytest.fixture()
def raw(tmp_path):
    rs = np.random.RandomState(0)
    cases = {}
    for i in range(3):
        img = np.zeros((10, 12, 11), np.float32)
        img[1:9, 2:11, 1:10] = rs.uniform(1, 100, (8, 9, 9))
        lab = np.zeros((10, 12, 11), np.uint8)
        lab[3 + i:6, 4:8, 3:7] = 1
        files = {"images": [tmp_path / "raw" / "imagesTr" / f"c{i}_0000.nii.gz"],
                 "label": tmp_path / "raw" / "labelsTr" / f"c{i}.nii.gz"}
        for arr, path in ((img, files["images"][0]), (lab, files["label"])):
            path.parent.mkdir(parents=True, exist_ok=True)
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((1.0, 1.0, 1.5))
            sitk.WriteImage(im, str(path))
        cases[f"c{i}"] = files
    return tmp_path, cases


def _run(tmp_path, cases, plans=PLANS, configs=("3d_fullres",), **kw):
    return preprocess_dataset(tmp_path / "raw", tmp_path / "pre", plans, list(configs), DATASET_JSON, SimpleITKIO(),
                              progress=False, cases=cases, **kw)


def test_layout_resume_and_gt_copy(raw):
    tmp_path, cases = raw
    s = _run(tmp_path, cases, configs=("3d_fullres", "3d_cascade_fullres"), num_processes=0)
    info = s["data_identifiers"]["P_3d_fullres"]
    assert list(s["data_identifiers"]) == ["P_3d_fullres"]          # the cascade shares the data
    assert info["configurations"] == ["3d_fullres", "3d_cascade_fullres"]
    assert (info["cases_done"], info["cases_skipped"], info["rebuilt"]) == (3, 0, True)
    assert s["gt_segmentations_copied"] == 3
    assert sorted(p.name for p in (tmp_path / "pre" / "gt_segmentations").iterdir()) == \
        ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    folder = tmp_path / "pre" / "P_3d_fullres"
    assert (folder / MARKER_NAME).is_file()
    d, sg, p = load_preprocessed_case(folder, "c1")
    ed, eseg, ep = preprocess_case_files(cases["c1"]["images"], cases["c1"]["label"], PLANS, "3d_fullres",
                                         DATASET_JSON, SimpleITKIO())
    assert np.array_equal(d, ed) and np.array_equal(sg, eseg)
    assert np.array_equal(p["class_locations"][1], ep["class_locations"][1])

    s2 = _run(tmp_path, cases, num_processes=0)
    info2 = s2["data_identifiers"]["P_3d_fullres"]
    assert (info2["cases_done"], info2["cases_skipped"], info2["rebuilt"]) == (0, 3, False)
    assert s2["gt_segmentations_copied"] == 0

    future = time.time() + 5                                          # a raw file changed after preprocessing
    os.utime(cases["c2"]["images"][0], (future, future))
    assert _run(tmp_path, cases, num_processes=0)["data_identifiers"]["P_3d_fullres"]["cases_done"] == 1


def test_changed_plans_or_clean_rebuild(raw):
    tmp_path, cases = raw
    _run(tmp_path, cases, num_processes=0)
    stray = tmp_path / "pre" / "P_3d_fullres" / "old_case.npy"
    stray.write_bytes(b"x")
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["3d_fullres"]["spacing"] = [1.0, 1.0, 1.0]
    info = _run(tmp_path, cases, plans=plans, num_processes=0)["data_identifiers"]["P_3d_fullres"]
    assert info["rebuilt"] and info["cases_done"] == 3 and not stray.exists()
    plans["configurations"]["3d_fullres"]["batch_size"] = 99                  # not a preprocessing setting
    assert not _run(tmp_path, cases, plans=plans, num_processes=0)["data_identifiers"]["P_3d_fullres"]["rebuilt"]
    info = _run(tmp_path, cases, plans=plans, num_processes=0, clean=True)["data_identifiers"]["P_3d_fullres"]
    assert info["rebuilt"] and info["cases_done"] == 3


def test_conflicting_shared_identifier_is_an_error(raw):
    tmp_path, cases = raw
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["2d"]["data_identifier"] = "P_3d_fullres"
    with pytest.raises(PnnunetError, match="share the data identifier"):
        _run(tmp_path, cases, plans=plans, configs=("3d_fullres", "2d"), num_processes=0)


def test_process_pool_gives_the_same_files(raw):
    tmp_path, cases = raw
    _run(tmp_path, cases, configs=("2d",), num_processes=0)
    serial = {c: load_preprocessed_case(tmp_path / "pre" / "P_2d", c, mmap=False) for c in cases}
    s = _run(tmp_path, cases, configs=("2d",), num_processes=2, clean=True)
    assert s["data_identifiers"]["P_2d"]["cases_done"] == 3
    for c in cases:
        d, sg, p = load_preprocessed_case(tmp_path / "pre" / "P_2d", c)
        assert np.array_equal(d, serial[c][0]) and np.array_equal(sg, serial[c][1])
        assert p["bbox_used_for_cropping"] == serial[c][2]["bbox_used_for_cropping"]


def test_cases_discovered_from_raw_folder(raw):
    tmp_path, cases = raw
    s = _run(tmp_path, None, num_processes=0)
    assert s["data_identifiers"]["P_3d_fullres"]["cases_done"] == 3
    assert sorted(p.name for p in (tmp_path / "pre" / "P_3d_fullres").glob("*.json")) == \
        ["c0.json", "c1.json", "c2.json", MARKER_NAME]


def _raise_dataset_error(path):
    from pnnunet.errors import DatasetError
    raise DatasetError(path, "cannot be read", "fix it")


def test_worker_errors_survive_pickling():
    import pickle

    from pnnunet.parallel import call_picklable
    with pytest.raises(PnnunetError, match="broken.nii.gz: cannot be read") as info:
        call_picklable(_raise_dataset_error, ("broken.nii.gz",))
    pickle.loads(pickle.dumps(info.value))  # what the pool has to do with it


def test_identical_configurations_share_one_copy(raw):
    tmp_path, cases = raw
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["2d"]["spacing"] = [2.0, 1.0, 1.0]           # same preprocessing as 3d_fullres
    plans["configurations"]["2d"]["patch_size"] = [8, 8]
    s = _run(tmp_path, cases, plans=plans, configs=("3d_fullres", "2d"), num_processes=0)
    assert s["data_identifiers"]["P_3d_fullres"]["shared_with"] == "P_2d"   # the 2D folder holds the cases
    two_d, three_d = tmp_path / "pre" / "P_2d", tmp_path / "pre" / "P_3d_fullres"
    assert sorted(p.name for p in three_d.iterdir()) == [SHARED_POINTER, MARKER_NAME]
    assert blosc2.open(str(two_d / "c1.b2nd")).chunks[1] == 1                # chunked slice by slice
    assert list_cases(three_d) == ["c0", "c1", "c2"]
    expected = preprocess_case_files(cases["c1"]["images"], cases["c1"]["label"], plans, "3d_fullres", DATASET_JSON,
                                     SimpleITKIO())[0]
    assert np.array_equal(load_preprocessed_case(three_d, "c1")[0][...], expected)
    again = _run(tmp_path, cases, plans=plans, configs=("3d_fullres", "2d"), num_processes=0)["data_identifiers"]
    assert not again["P_2d"]["rebuilt"] and not again["P_3d_fullres"]["rebuilt"]

    own = _run(tmp_path, cases, plans=plans, configs=("3d_fullres",), num_processes=0)["data_identifiers"]
    assert own["P_3d_fullres"]["cases_done"] == 3 and not (three_d / SHARED_POINTER).exists()  # alone: own copy
    assert (three_d / "c1.b2nd").is_file()

    plans["configurations"]["2d"]["spacing"] = [1.0, 1.0, 1.0]           # differs again: no sharing
    s = _run(tmp_path, cases, plans=plans, configs=("3d_fullres", "2d"), num_processes=0, storage="npy")
    assert "shared_with" not in s["data_identifiers"]["P_3d_fullres"] and (two_d / "c1.npy").is_file()


def test_share_can_be_switched_off(raw):
    tmp_path, cases = raw
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["2d"]["spacing"] = [2.0, 1.0, 1.0]
    s = _run(tmp_path, cases, plans=plans, configs=("3d_fullres", "2d"), num_processes=0, share=False)
    assert s["data_identifiers"]["P_2d"]["cases_done"] == 3


def test_2d_shares_only_when_every_case_has_the_3d_axis0_spacing(raw):
    tmp_path, cases = raw
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["3d_fullres"]["spacing"] = [1.5, 1.0, 1.0]  # the cases' own spacing (1.5, 1, 1)
    assert plans["configurations"]["2d"]["spacing"] == [1.0, 1.0]       # 2d keeps each case's axis 0
    fp = tmp_path / "pre" / "dataset_fingerprint.json"
    fp.parent.mkdir(parents=True)
    fp.write_text(json.dumps({"spacings": [[1.5, 1.0, 1.0]] * 3}))
    s = _run(tmp_path, cases, plans=plans, configs=("2d", "3d_fullres"), num_processes=0)
    assert s["data_identifiers"]["P_3d_fullres"]["shared_with"] == "P_2d"
    expected = preprocess_case_files(cases["c0"]["images"], cases["c0"]["label"], plans, "3d_fullres",
                                     DATASET_JSON, SimpleITKIO())[0]
    assert np.array_equal(load_preprocessed_case(tmp_path / "pre" / "P_3d_fullres", "c0")[0][...], expected)

    fp.write_text(json.dumps({"spacings": [[1.5, 1.0, 1.0]] * 2 + [[3.0, 1.0, 1.0]]}))  # one case differs
    s = _run(tmp_path, cases, plans=plans, configs=("2d", "3d_fullres"), num_processes=0)
    assert "shared_with" not in s["data_identifiers"]["P_3d_fullres"]
    assert s["data_identifiers"]["P_3d_fullres"]["cases_done"] == 3
