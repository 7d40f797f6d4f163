"""Postprocessing selection (pnnunet.postprocessing.determine; reference §8.4, Appendix A.5, G.9).

Each scenario is a constructed cross-validation folder whose expected decision and Dice values are
worked out by hand in the comments (Dice = 2TP / (2TP + FP + FN)).
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.postprocessing.apply import apply_postprocessing_to_folder, load_postprocessing, steps_from_json
from pnnunet.postprocessing.components import PP_FN_NAME
from pnnunet.postprocessing.determine import (
    accept_all_foreground,
    accept_one_class,
    describe_postprocessing,
    determine_postprocessing,
)
from tests.postprocessing.scenarios import UPSTREAM_SCENARIOS
from tests.postprocessing.synthetic import (
    DATASET_JSON,
    FILE_ENDING,
    REGION_DATASET_JSON,
    plans,
    read_seg,
    write_json,
    write_seg,
)

SHAPE = (6, 10, 10)


def _blank():
    return np.zeros(SHAPE, dtype=np.uint8)


def _write_cv(tmp_path, pairs, dataset_json=DATASET_JSON):
    pred_dir, ref_dir = tmp_path / "cv", tmp_path / "gt"
    for i, (ref, pred) in enumerate(pairs):
        write_seg(ref_dir / f"case_{i:03d}{FILE_ENDING}", ref)
        write_seg(pred_dir / f"case_{i:03d}{FILE_ENDING}", pred)
    write_json(pred_dir / "dataset.json", dataset_json)
    write_json(pred_dir / "plans.json", plans())
    return pred_dir, ref_dir


def _fg_touching():
    """label 1 block (27 voxels) with label 2 (18 voxels) touching it: one foreground object."""
    s = _blank()
    s[1:4, 1:4, 1:4] = 1
    s[1:4, 4:6, 1:4] = 2
    return s


def test_step_a_accepted_when_it_helps(tmp_path):
    # prediction = truth + a 4-voxel label-1 blob far away. Label 1 Dice 54/58, label 2 Dice 1.
    # A removes the blob: both classes 1.0 → accepted. B then changes nothing → both rejected.
    pairs = []
    for _ in range(4):
        ref = _fg_touching()
        pred = ref.copy()
        pred[5, 8:10, 8:10] = 1
        pairs.append((ref, pred))
    pred_dir, ref_dir = _write_cv(tmp_path, pairs)
    pp = determine_postprocessing(pred_dir, ref_dir, num_processes=1)
    assert pp["postprocessing_fns"] == [PP_FN_NAME]
    assert pp["postprocessing_kwargs"] == [{"labels_or_regions": [1, 2]}]
    assert pp["input_folder"]["mean"]["1"]["Dice"] == pytest.approx(54 / 58)
    assert pp["input_folder"]["mean"]["2"]["Dice"] == pytest.approx(1.0)
    assert pp["input_folder"]["foreground_mean"]["Dice"] == pytest.approx((54 / 58 + 1) / 2)
    assert pp["postprocessed"]["foreground_mean"]["Dice"] == pytest.approx(1.0)
    # files: postprocessing.json in the prediction folder, postprocessed predictions + summary beside
    assert json.loads((pred_dir / "postprocessing.json").read_text()) == pp
    assert sorted(pp) == ["input_folder", "postprocessed", "postprocessing_fns", "postprocessing_kwargs"]
    out = pred_dir / "postprocessed"
    for i, (ref, _) in enumerate(pairs):
        np.testing.assert_array_equal(read_seg(out / f"case_{i:03d}{FILE_ENDING}"), ref)
    assert json.loads((out / "summary.json").read_text())["foreground_mean"]["Dice"] == pytest.approx(1.0)
    assert not list(tmp_path.rglob("*.pkl"))
    assert "alpha + beta" in describe_postprocessing(pp, {1: "alpha", 2: "beta"})


def test_step_a_rejected_when_one_class_gets_worse(tmp_path):
    # label 1: 27-voxel block + a 20-voxel label-1 blob (Dice 54/74) in every case. Label 2 touches label 1
    # in cases 0-2 but is a separate 8-voxel object in case 3.
    # A would give label 1 → 1.0 and label 2 → 0.75 (case 3 loses its label 2): foreground mean
    # 0.875 > (54/74 + 1)/2 = 0.8649, but label 2 decreases → rejected.
    # B, label 1 alone: the 20-voxel blob goes, label 1 → 1.0 → accepted; label 2: nothing to remove.
    pairs = []
    for i in range(4):
        ref = _blank()
        ref[1:4, 1:4, 1:4] = 1
        if i < 3:
            ref[1:4, 4:6, 1:4] = 2
        else:
            ref[1:3, 8:10, 8:10] = 2
        pred = ref.copy()
        pred[5, 0:4, 5:10] = 1
        pairs.append((ref, pred))
    pred_dir, ref_dir = _write_cv(tmp_path, pairs)
    pp = determine_postprocessing(pred_dir, ref_dir, num_processes=1)
    assert pp["postprocessing_fns"] == [PP_FN_NAME]
    assert pp["postprocessing_kwargs"] == [{"labels_or_regions": 1}]
    assert pp["input_folder"]["foreground_mean"]["Dice"] == pytest.approx((54 / 74 + 1) / 2)
    assert pp["postprocessed"]["mean"]["1"]["Dice"] == pytest.approx(1.0)
    assert pp["postprocessed"]["mean"]["2"]["Dice"] == pytest.approx(1.0)
    # the rejected candidate really had the better foreground mean: check the rule on those numbers
    base = {"foreground_mean": {"Dice": (54 / 74 + 1) / 2}, "mean": {"1": {"Dice": 54 / 74}, "2": {"Dice": 1.0}}}
    cand = {"foreground_mean": {"Dice": 0.875}, "mean": {"1": {"Dice": 1.0}, "2": {"Dice": 0.75}}}
    assert not accept_all_foreground(base, cand)


def test_step_b_per_class(tmp_path):
    # label 1 (27 voxels) and label 2 (18 voxels) are separate objects; the prediction adds a 4-voxel
    # label-2 blob. A keeps only label 1's object → label 2 falls to 0 → rejected.
    # B: label 1 unchanged → rejected; label 2: blob removed, Dice 36/40 → 1.0 → accepted.
    pairs = []
    for _ in range(3):
        ref = _blank()
        ref[1:4, 1:4, 1:4] = 1
        ref[1:3, 6:9, 6:9] = 2
        pred = ref.copy()
        pred[5, 0:2, 8:10] = 2
        pairs.append((ref, pred))
    pred_dir, ref_dir = _write_cv(tmp_path, pairs)
    pp = determine_postprocessing(pred_dir, ref_dir, num_processes=1, output_folder=tmp_path / "pp_out")
    assert pp["postprocessing_kwargs"] == [{"labels_or_regions": 2}]
    assert pp["input_folder"]["mean"]["2"]["Dice"] == pytest.approx(36 / 40)
    assert pp["postprocessed"]["foreground_mean"]["Dice"] == pytest.approx(1.0)
    assert (tmp_path / "pp_out" / "summary.json").is_file()


def test_nothing_accepted_when_nothing_improves(tmp_path):
    pairs = [(_fg_touching(), _fg_touching()) for _ in range(2)]
    pred_dir, ref_dir = _write_cv(tmp_path, pairs)
    pp = determine_postprocessing(pred_dir, ref_dir, num_processes=1)
    assert pp["postprocessing_fns"] == [] and pp["postprocessing_kwargs"] == []
    assert "no postprocessing" in describe_postprocessing(pp)


def test_region_mode_uses_labels_in_step_a_and_regions_in_step_b(tmp_path):
    # regions whole = (1, 2), core = 2. A 4-voxel label-1 blob lowers "whole"; A (on labels [1, 2]) removes it.
    pairs = []
    for _ in range(2):
        ref = _fg_touching()
        pred = ref.copy()
        pred[5, 8:10, 8:10] = 1
        pairs.append((ref, pred))
    pred_dir, ref_dir = _write_cv(tmp_path, pairs, REGION_DATASET_JSON)
    pp = determine_postprocessing(pred_dir, ref_dir, num_processes=1)
    assert pp["postprocessing_kwargs"] == [{"labels_or_regions": [1, 2]}]
    assert sorted(pp["input_folder"]["mean"]) == ["(1, 2)", "2"]
    assert pp["input_folder"]["mean"]["(1, 2)"]["Dice"] == pytest.approx(90 / 94)
    assert pp["postprocessed"]["mean"]["(1, 2)"]["Dice"] == pytest.approx(1.0)


def test_single_class_dataset_has_no_step_b(tmp_path):
    dj = {**DATASET_JSON, "labels": {"background": 0, "alpha": 1}}
    ref = _blank()
    ref[1:4, 1:4, 1:4] = 1
    pred = ref.copy()
    pred[5, 8:10, 8:10] = 1  # one class: step A alone (kwargs [1]), no per-class step
    pred_dir, ref_dir = _write_cv(tmp_path, [(ref, pred)], dj)
    pp = determine_postprocessing(pred_dir, ref_dir, num_processes=1)
    assert pp["postprocessing_kwargs"] == [{"labels_or_regions": [1]}]


def test_rules_on_nan_and_ties():
    nan = float("nan")
    base = {"foreground_mean": {"Dice": 0.5}, "mean": {"1": {"Dice": 0.5}, "2": {"Dice": nan}}}
    same = {"foreground_mean": {"Dice": 0.5}, "mean": {"1": {"Dice": 0.5}, "2": {"Dice": nan}}}
    better = {"foreground_mean": {"Dice": 0.6}, "mean": {"1": {"Dice": 0.6}, "2": {"Dice": nan}}}
    assert not accept_all_foreground(base, same)           # strict improvement needed
    assert accept_all_foreground(base, better)             # NaN class neither better nor worse (as upstream)
    assert not accept_one_class(base, same, "1")
    assert accept_one_class(base, better, "1")
    assert not accept_one_class(base, better, "2")
    assert math.isnan(better["mean"]["2"]["Dice"])


def test_stale_summary_json_is_recomputed(tmp_path):
    ref = _fg_touching()
    pred = ref.copy()
    pred[5, 8:10, 8:10] = 1
    pred_dir, ref_dir = _write_cv(tmp_path, [(ref, pred)])
    write_json(pred_dir / "summary.json", {"metric_per_case": [{"prediction_file": "other.nii.gz"}],
                                           "mean": {"1": {}, "2": {}}, "foreground_mean": {}})
    pp = determine_postprocessing(pred_dir, ref_dir, num_processes=1)
    assert pp["input_folder"]["mean"]["1"]["Dice"] == pytest.approx(54 / 58)


def test_apply_round_trip_and_upstream_style_json(tmp_path):
    pairs = []
    for _ in range(2):
        ref = _fg_touching()
        pred = ref.copy()
        pred[5, 8:10, 8:10] = 1
        pairs.append((ref, pred))
    pred_dir, ref_dir = _write_cv(tmp_path, pairs)
    determine_postprocessing(pred_dir, ref_dir, num_processes=1)
    out = tmp_path / "applied"
    written = apply_postprocessing_to_folder(pred_dir, out, pred_dir / "postprocessing.json", num_processes=2)
    assert [p.name for p in written] == [f"case_{i:03d}{FILE_ENDING}" for i in range(2)]
    for p in written:
        np.testing.assert_array_equal(read_seg(p), read_seg(pred_dir / "postprocessed" / p.name))
    assert (out / "dataset.json").is_file() and (out / "plans.json").is_file()
    # upstream writes region kwargs as lists and adds nothing else; background_label is accepted too
    steps = steps_from_json({"postprocessing_fns": [PP_FN_NAME, PP_FN_NAME],
                             "postprocessing_kwargs": [{"labels_or_regions": [1, 2]},
                                                       {"labels_or_regions": 1, "background_label": 0}]})
    assert [s(pairs[0][1]).sum() for s in steps] == [pairs[0][0].sum()] * 2


def test_apply_errors(tmp_path):
    ref = _fg_touching()
    pred_dir, _ = _write_cv(tmp_path, [(ref, ref)])
    pp_file = tmp_path / "pp.json"
    write_json(pp_file, {"postprocessing_fns": [], "postprocessing_kwargs": []})
    with pytest.raises(PnnunetError, match="is the input folder"):
        apply_postprocessing_to_folder(pred_dir, pred_dir / ".." / "cv", pp_file)
    with pytest.raises(DatasetError, match="unknown postprocessing"):
        steps_from_json({"postprocessing_fns": ["fill_holes"], "postprocessing_kwargs": [{}]})
    with pytest.raises(DatasetError, match="cannot be read"):
        load_postprocessing(tmp_path / "postprocessing.pkl")
    (tmp_path / "empty_gt").mkdir()
    with pytest.raises(DatasetError, match="no reference"):
        determine_postprocessing(pred_dir, tmp_path / "empty_gt")
    # no steps: files are copied unchanged
    written = apply_postprocessing_to_folder(pred_dir, tmp_path / "copy", pp_file, num_processes=1)
    assert written[0].read_bytes() == (pred_dir / written[0].name).read_bytes()


def _assert_same(ours, theirs, where="pp"):
    if isinstance(theirs, dict):
        assert sorted(ours) == sorted(theirs), where
        for k in theirs:
            _assert_same(ours[k], theirs[k], f"{where}.{k}")
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float) and math.isnan(theirs):
        assert math.isnan(ours), where
    elif isinstance(theirs, str):
        assert ours == theirs, where
    else:
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12), where


UPSTREAM = json.loads((Path(__file__).parent / "data" / "upstream_determine_postprocessing.json").read_text())


@pytest.mark.upstream
@pytest.mark.parametrize("name", sorted(UPSTREAM_SCENARIOS))
def test_matches_upstream_nnunet(tmp_path, name):
    """Same accepted steps and same before/after metrics as upstream's postprocessing.json (data/README.md)."""
    generator, seed, mode = UPSTREAM_SCENARIOS[name]
    pred_dir, ref_dir = _write_cv(tmp_path, generator(seed), DATASET_JSON if mode == "labels" else REGION_DATASET_JSON)
    _assert_same(determine_postprocessing(pred_dir, ref_dir, num_processes=1), UPSTREAM["scenarios"][name])


def test_apply_to_png_folder_uses_8_connectivity(tmp_path):
    from pnnunet.imageio import NaturalImage2DIO

    seg = np.zeros((1, 6, 6), dtype=np.uint8)
    seg[0, 0, 0] = seg[0, 1, 1] = seg[0, 2, 2] = 1   # diagonal chain: one object of 3 pixels
    seg[0, 5, 4:6] = 1                                 # 2 pixels: removed
    rw = NaturalImage2DIO()
    rw.write_seg(seg, tmp_path / "in" / "img.png", {"spacing": [999.0, 1.0, 1.0]})
    write_json(tmp_path / "pp.json", {"postprocessing_fns": [PP_FN_NAME],
                                      "postprocessing_kwargs": [{"labels_or_regions": [1]}]})
    apply_postprocessing_to_folder(tmp_path / "in", tmp_path / "out", tmp_path / "pp.json", file_ending=".png",
                                   num_processes=1)
    out = rw.read_seg(tmp_path / "out" / "img.png")[0][0]
    expected = seg.copy()
    expected[0, 5, 4:6] = 0
    np.testing.assert_array_equal(out, expected)
