"""One-case preprocessing: order of steps, properties, configuration inheritance (reference §3.8, §4)."""

import numpy as np
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.preprocessing.preprocessor import preprocess_case, resolve_configuration

RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
}


def _plans(transpose=(0, 1, 2)):
    return {
        "transpose_forward": list(transpose),
        "foreground_intensity_properties_per_channel": {"0": {"mean": 1.0, "std": 2.0, "percentile_00_5": 0.0,
                                                              "percentile_99_5": 10.0}},
        "configurations": {
            "3d_fullres": {"data_identifier": "p_3d_fullres", "spacing": [2.0, 1.0, 1.0], "batch_size": 2,
                           "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                           **RESAMPLING},
            "2d": {"data_identifier": "p_2d", "spacing": [1.0, 1.0], "normalization_schemes": ["CTNormalization"],
                   "use_mask_for_norm": [False], **RESAMPLING},
            "3d_bs4": {"inherits_from": "3d_fullres", "batch_size": 4},
            "3d_deep": {"inherits_from": "3d_bs4", "spacing": [1.0, 1.0, 1.0]},
            "loop_a": {"inherits_from": "loop_b"}, "loop_b": {"inherits_from": "loop_a"},
        },
    }


DATASET_JSON = {"labels": {"background": 0, "x": 1, "y": 2}, "channel_names": {"0": "MR"}}


def _case():
    rs = np.random.RandomState(0)
    data = np.zeros((1, 8, 10, 12), np.float32)
    data[0, 1:7, 2:9, 3:11] = rs.uniform(1, 5, (6, 7, 8))
    seg = np.zeros((1, 8, 10, 12), np.float32)
    seg[0, 3:5, 4:6, 5:8] = 1
    seg[0, 5, 6:8, 5:9] = 2
    return data, seg, {"spacing": [1.0, 1.0, 1.0], "sitk_stuff": {"origin": [0, 0, 0]}}


def test_inheritance_is_resolved_recursively():
    plans = _plans()
    cfg = resolve_configuration(plans, "3d_deep")
    assert cfg["batch_size"] == 4 and cfg["spacing"] == [1.0, 1.0, 1.0]
    assert cfg["normalization_schemes"] == ["ZScoreNormalization"]
    assert plans["configurations"]["3d_fullres"]["batch_size"] == 2  # parent untouched
    with pytest.raises(PnnunetError, match="cycle"):
        resolve_configuration(plans, "loop_a")
    with pytest.raises(PnnunetError, match="not in the plans"):
        resolve_configuration(plans, "3d_lowres")


def test_transpose_crop_resample_and_properties():
    data, seg, props = _case()
    inputs = (data.copy(), seg.copy(), dict(props))
    out, oseg, oprops = preprocess_case(data, seg, props, _plans((2, 0, 1)), "3d_fullres", DATASET_JSON)
    assert np.array_equal(data, inputs[0]) and np.array_equal(seg, inputs[1]) and props == inputs[2]
    # reader axes (8, 10, 12) -> transposed (12, 8, 10); crop [3, 11) x [1, 7) x [2, 9) -> (8, 6, 7)
    assert oprops["shape_before_cropping"] == [12, 8, 10]
    assert oprops["bbox_used_for_cropping"] == [[3, 11], [1, 7], [2, 9]]
    assert oprops["shape_after_cropping_and_before_resampling"] == [8, 6, 7]
    assert oprops["spacing"] == [1.0, 1.0, 1.0] and oprops["sitk_stuff"] == props["sitk_stuff"]
    # target (2, 1, 1) from (1, 1, 1): axis 0 halved
    assert out.shape == (1, 4, 6, 7) and out.dtype == np.float32
    assert oseg.shape == (1, 4, 6, 7) and oseg.dtype == np.int8
    assert set(oprops["class_locations"]) == {1, 2}
    for label, rows in oprops["class_locations"].items():
        assert np.all(oseg[tuple(rows.T)] == label)


def test_2d_configuration_keeps_axis_0_and_uses_its_scheme():
    data, seg, props = _case()
    props["spacing"] = [3.0, 0.5, 0.5]
    out, oseg, oprops = preprocess_case(data, seg, props, _plans(), "2d", DATASET_JSON)
    # cropped (6, 7, 8) at (3, .5, .5) -> (3, 1, 1): axis 0 unchanged, in-plane halved
    assert out.shape == (1, 6, 4, 4)
    assert out.max() <= (5.0 - 1.0) / 2.0 + 1e-6  # CT: clip to [0, 10], (x - 1) / 2


def test_inference_without_seg_returns_mask_and_no_locations():
    data, _, props = _case()
    out, oseg, oprops = preprocess_case(data, None, props, _plans(), "3d_fullres", DATASET_JSON)
    assert "class_locations" not in oprops
    assert oseg.dtype == np.int8 and set(np.unique(oseg)) <= {-1, 0}


def test_large_labels_give_int16_seg():
    data, seg, props = _case()
    seg[seg == 2] = 200
    dj = {"labels": {"background": 0, "x": 1, "y": 200}}
    _, oseg, oprops = preprocess_case(data, seg, props, _plans(), "3d_deep", dj)  # no resampling
    assert oseg.dtype == np.int16 and 200 in oseg
    assert list(oprops["class_locations"]) == [1, 200]


def test_seg_shape_mismatch_is_a_user_error():
    data, seg, props = _case()
    with pytest.raises(PnnunetError, match="shape"):
        preprocess_case(data, seg[:, :-1], props, _plans(), "3d_fullres", DATASET_JSON)
