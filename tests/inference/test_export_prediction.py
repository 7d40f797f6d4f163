"""Export back to the original geometry (pnnunet.inference.export_prediction; reference §7.6, A.4).

Round trips: a synthetic case goes through the real preprocessing (transpose → crop → resample,
pnnunet.preprocessing.preprocessor.preprocess_case), its preprocessed seg is turned into one-hot
logits, and the export must give the original seg back (exactly when no resampling happens,
with a high Dice otherwise).
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from pnnunet.errors import PnnunetError
from pnnunet.imageio import SimpleITKIO
from pnnunet.inference.export_prediction import export_prediction, logits_to_segmentation_in_original_geometry
from pnnunet.preprocessing import resampling
from pnnunet.preprocessing.preprocessor import preprocess_case

LABELS = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
REGIONS = {"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2],
           "file_ending": ".nii.gz"}
KW_DATA = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
KW_SEG = {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
KW_PROB = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}


def make_plans(config_spacing, transpose=(0, 1, 2)):
    cfg = {"data_identifier": "x", "batch_size": 2, "patch_size": [8] * len(config_spacing),
           "spacing": list(config_spacing), "normalization_schemes": ["ZScoreNormalization"],
           "use_mask_for_norm": [False], "architecture": {"arch_kwargs": {}},
           "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": KW_DATA,
           "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_seg_kwargs": KW_SEG,
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities_kwargs": KW_PROB}
    return {"transpose_forward": list(transpose), "transpose_backward": [int(i) for i in np.argsort(transpose)],
            "foreground_intensity_properties_per_channel": {}, "image_reader_writer": "SimpleITKIO",
            "configurations": {"cfg": cfg}}


def make_case(shape, seed=7):
    """Image (1, *shape) that is 0 on a border (so cropping happens) and a seg of two nested blobs."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(sum(g ** 2 for g in grids))
    body = np.zeros(shape, dtype=bool)
    body[1:-2, 2:-1, 1:] = True  # non-zero region → a crop on both ends of two axes
    data = np.where(body, 100 + 10 * rng.normal(size=shape), 0).astype(np.float32)[None]
    seg = np.zeros(shape, dtype=np.float32)
    seg[(r < 0.75) & body] = 1
    seg[(r < 0.4) & body] = 2
    return data, seg[None]


def one_hot_logits(seg_pp, n_classes):
    """(1, *S) preprocessed seg (-1 outside the mask = background) → (K, *S) float32 logits."""
    seg = np.where(seg_pp[0] < 0, 0, seg_pp[0])
    return np.stack([(seg == k).astype(np.float32) * 4 - 2 for k in range(n_classes)])


def dice(a, b, label):
    a, b = a == label, b == label
    return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def test_round_trip_exact_without_resampling():
    data, seg = make_case((9, 12, 10))
    plans = make_plans([1.0, 1.0, 1.0], transpose=(2, 0, 1))
    props = {"spacing": [1.0, 1.0, 1.0]}
    _, seg_pp, props_pp = preprocess_case(data, seg, props, plans, "cfg", LABELS)
    assert props_pp["bbox_used_for_cropping"] != [[0, s] for s in props_pp["shape_before_cropping"]]  # cropped
    out, probs = logits_to_segmentation_in_original_geometry(one_hot_logits(seg_pp, 3), plans, "cfg", props_pp,
                                                             LABELS, return_probabilities=True)
    assert out.dtype == np.uint8 and out.shape == seg.shape[1:]
    assert np.array_equal(out, seg[0])
    assert probs.dtype == np.float32 and probs.shape == (3, *seg.shape[1:])
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-6)
    assert np.array_equal(probs.argmax(0), out)
    # outside the crop: background probability 1 (label mode); bbox in transposed order, undone here
    outside = np.ones(props_pp["shape_before_cropping"], dtype=bool)
    outside[tuple(slice(lo, hi) for lo, hi in props_pp["bbox_used_for_cropping"])] = False
    outside = outside.transpose(plans["transpose_backward"])
    assert outside.any()
    assert np.all(probs[0][outside] == 1) and np.all(probs[1:][:, outside] == 0)


@pytest.mark.parametrize("spacing, config_spacing, transpose, min_dice", [
    ((1.3, 0.9, 1.1), (1.0, 1.0, 1.0), (0, 1, 2), 0.97),   # plain 3D resampling
    ((0.8, 4.0, 0.8), (3.0, 1.0, 1.0), (1, 0, 2), 0.88),  # anisotropic: separate-z along axis 0 (transposed)
])
def test_round_trip_with_resampling(spacing, config_spacing, transpose, min_dice, monkeypatch):
    calls = []
    original = resampling.resample_data_or_seg

    def spy(data, new_shape, is_seg=False, axis=None, order=3, do_separate_z=False, order_z=0, dtype_out=None):
        calls.append({"is_seg": is_seg, "separate": do_separate_z, "axis": axis, "dtype": data.dtype})
        return original(data, new_shape, is_seg, axis, order, do_separate_z, order_z, dtype_out)

    monkeypatch.setattr(resampling, "resample_data_or_seg", spy)
    data, seg = make_case((14, 30, 22) if spacing[1] == 4.0 else (16, 18, 15))
    plans = make_plans(config_spacing, transpose)
    _, seg_pp, props_pp = preprocess_case(data, seg, {"spacing": list(spacing)}, plans, "cfg", LABELS)
    assert list(seg_pp.shape[1:]) != props_pp["shape_after_cropping_and_before_resampling"]  # resampled
    calls.clear()
    out = logits_to_segmentation_in_original_geometry(one_hot_logits(seg_pp, 3), plans, "cfg", props_pp, LABELS)
    assert out.shape == seg.shape[1:]
    for label in (1, 2):
        assert dice(out, seg[0], label) > min_dice
    assert len(calls) == 1 and calls[0]["dtype"] == np.float32 and not calls[0]["is_seg"]
    if spacing[1] == 4.0:
        assert calls[0]["separate"] and calls[0]["axis"] == 0
    else:
        assert not calls[0]["separate"]


def test_round_trip_2d_configuration_on_3d_data():
    data, seg = make_case((5, 20, 17))
    plans = make_plans([1.0, 1.0], transpose=(0, 2, 1))  # 2D: axis 0 keeps its spacing
    props = {"spacing": [5.0, 0.7, 0.6]}
    _, seg_pp, props_pp = preprocess_case(data, seg, props, plans, "cfg", LABELS)
    assert seg_pp.shape[1] == props_pp["shape_after_cropping_and_before_resampling"][0]
    out = logits_to_segmentation_in_original_geometry(one_hot_logits(seg_pp, 3), plans, "cfg", props_pp, LABELS)
    assert out.shape == seg.shape[1:]
    for label in (1, 2):
        assert dice(out, seg[0], label) > 0.9


def test_regions_painted_in_order_and_probabilities():
    data, seg = make_case((8, 11, 9))
    plans = make_plans([1.0, 1.0, 1.0])
    _, seg_pp, props_pp = preprocess_case(data, seg, {"spacing": [1.0, 1.0, 1.0]}, plans, "cfg", REGIONS)
    s = seg_pp[0]
    logits = np.stack([np.where(np.isin(s, [1, 2]), 3.0, -3.0), np.where(s == 2, 3.0, -3.0)]).astype(np.float32)
    out, probs = logits_to_segmentation_in_original_geometry(logits, plans, "cfg", props_pp, REGIONS,
                                                             return_probabilities=True)
    assert np.array_equal(out, seg[0])
    assert probs.shape == (2, *seg.shape[1:])
    outside = np.ones(seg.shape[1:], dtype=bool)
    outside[tuple(slice(lo, hi) for lo, hi in props_pp["bbox_used_for_cropping"])] = False
    assert outside.any() and np.all(probs[:, outside] == 0)  # regions: 0 outside the crop


def test_region_threshold_is_sigmoid_above_half():
    # upstream paints where float32 sigmoid(logit) > 0.5: a logit of 1e-9 rounds to exactly 0.5
    plans = make_plans([1.0, 1.0, 1.0])
    props = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": [1, 1, 3],
             "bbox_used_for_cropping": [[0, 1], [0, 1], [0, 3]],
             "shape_after_cropping_and_before_resampling": [1, 1, 3]}
    logits = np.array([[[[1e-9, 1e-6, -1e-6]]], [[[-1.0, -1.0, -1.0]]]], dtype=np.float32)
    out = logits_to_segmentation_in_original_geometry(logits, plans, "cfg", props, REGIONS)
    assert out.tolist() == [[[0, 1, 0]]]


def test_many_labels_give_uint16():
    labels = {"labels": {"background": 0, **{f"l{i}": i for i in range(1, 300)}}, "file_ending": ".nii.gz"}
    plans = make_plans([1.0, 1.0, 1.0])
    props = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": [1, 2, 2],
             "bbox_used_for_cropping": [[0, 1], [0, 2], [0, 2]],
             "shape_after_cropping_and_before_resampling": [1, 2, 2]}
    logits = np.zeros((300, 1, 2, 2), dtype=np.float32)
    logits[299, 0, 1, 1] = 5
    out = logits_to_segmentation_in_original_geometry(logits, plans, "cfg", props, labels)
    assert out.dtype == np.uint16 and out[0, 1, 1] == 299


def test_wrong_channel_count_is_a_clear_error():
    plans = make_plans([1.0, 1.0, 1.0])
    props = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": [1, 2, 2],
             "bbox_used_for_cropping": [[0, 1], [0, 2], [0, 2]],
             "shape_after_cropping_and_before_resampling": [1, 2, 2]}
    with pytest.raises(PnnunetError, match="2 channels but"):
        logits_to_segmentation_in_original_geometry(np.zeros((2, 1, 2, 2), np.float32), plans, "cfg", props, LABELS)


def test_export_writes_file_with_original_geometry(tmp_path):
    data, seg = make_case((10, 21, 16))
    spacing_xyz, origin, direction = (0.75, 0.8, 3.5), (10.0, -4.5, 2.25), (0, 1, 0, -1, 0, 0, 0, 0, 1)
    img = sitk.GetImageFromArray(data[0])
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(tmp_path / "case_0000.nii.gz"))
    rw = SimpleITKIO()
    data_read, props = rw.read_images([tmp_path / "case_0000.nii.gz"])
    assert props["spacing"] == pytest.approx([3.5, 0.8, 0.75])  # array order, z first
    plans = make_plans([3.0, 1.0, 1.0], transpose=(0, 2, 1))  # separate-z on the way back
    _, seg_pp, props_pp = preprocess_case(data_read, seg, props, plans, "cfg", LABELS)
    logits = one_hot_logits(seg_pp, 3)
    out_base = tmp_path / "out" / "case"
    written = export_prediction(logits, props_pp, plans, "cfg", LABELS, out_base, rw, save_probabilities=True)
    assert written == tmp_path / "out" / "case.nii.gz"
    back = sitk.ReadImage(str(written))
    assert back.GetSpacing() == pytest.approx(spacing_xyz)
    assert back.GetOrigin() == pytest.approx(origin)
    assert back.GetDirection() == pytest.approx(direction)
    arr = sitk.GetArrayFromImage(back)
    assert arr.dtype == np.uint8 and arr.shape == seg.shape[1:]
    for label in (1, 2):
        assert dice(arr, seg[0], label) > 0.85
    with np.load(tmp_path / "out" / "case.npz", allow_pickle=False) as z:
        assert z.files == ["probabilities"]
        probs = z["probabilities"]
    assert probs.dtype == np.float32 and probs.shape == (3, *seg.shape[1:])
    assert np.array_equal(probs.argmax(0), arr)
    saved = json.loads((tmp_path / "out" / "case.json").read_text())
    assert saved["bbox_used_for_cropping"] == props_pp["bbox_used_for_cropping"]
    assert saved["sitk_stuff"] == props_pp["sitk_stuff"]
    assert "class_locations" not in saved
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case.json", "case.nii.gz", "case.npz"]


def test_export_without_probabilities_writes_only_the_seg(tmp_path):
    data, seg = make_case((6, 8, 7))
    plans = make_plans([1.0, 1.0, 1.0])
    props = {"spacing": [1.0, 1.0, 1.0], "sitk_stuff": {"spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
                                                        "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}}
    _, seg_pp, props_pp = preprocess_case(data, seg, props, plans, "cfg", LABELS)
    export_prediction(one_hot_logits(seg_pp, 3), props_pp, plans, "cfg", LABELS, str(tmp_path / "c"), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.nii.gz"]
    back, _ = SimpleITKIO().read_seg(tmp_path / "c.nii.gz")
    assert np.array_equal(back[0], seg[0])


def test_export_2d_png_case(tmp_path):
    from pnnunet.imageio import NaturalImage2DIO

    data3, seg3 = make_case((5, 23, 19))
    data, seg = data3[:, 2:3], seg3[:, 2:3]  # (C, 1, X, Y): a 2D image as nnU-Net represents it
    assert set(np.unique(seg)) == {0, 1, 2} and not np.all(data[:, :, :, 0] != 0)  # labels, and a crop
    labels = dict(LABELS, file_ending=".png")
    plans = make_plans([1.0, 1.0])
    _, seg_pp, props_pp = preprocess_case(data, seg, {"spacing": [999.0, 1.0, 1.0]}, plans, "cfg", labels)
    written = export_prediction(one_hot_logits(seg_pp, 3), props_pp, plans, "cfg", labels, tmp_path / "img",
                                NaturalImage2DIO())
    assert written.name == "img.png"
    back, _ = NaturalImage2DIO().read_seg(written)
    assert back.shape == (1, 1, 23, 19) and np.array_equal(back[0], seg[0])


def test_next_stage_segmentation_is_argmax_of_logits_resampled_to_the_next_grid():
    """predicted_next_stage (§5.10): logits resampled (order 1, the stage's spacing as both current and
    target spacing) to the next stage's preprocessed shape, argmax, uint8."""
    from pnnunet.inference.export_prediction import logits_to_next_stage_segmentation

    plans = make_plans((2.0, 1.6, 1.6))
    _, seg = make_case((10, 12, 14))
    logits = one_hot_logits(seg.astype(np.int16), 3)
    same = logits_to_next_stage_segmentation(logits, plans, "cfg", (10, 12, 14), LABELS)
    assert same.dtype == np.uint8
    np.testing.assert_array_equal(same, seg[0])  # same grid: plain argmax
    up = logits_to_next_stage_segmentation(logits, plans, "cfg", (20, 19, 22), LABELS)
    expected = np.argmax(resampling.resample_data_or_seg_to_shape(logits, (20, 19, 22), [2.0, 1.6, 1.6],
                                                                  [2.0, 1.6, 1.6], **KW_PROB), axis=0)
    np.testing.assert_array_equal(up, expected)
    assert dice(up, np.argmax(resampling.resample_data_or_seg(logits, (20, 19, 22), order=1), axis=0), 1) > 0.99
