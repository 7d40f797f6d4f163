"""Per-case metrics and summary.json (pnnunet.metrics; reference §8.1, Appendix C).

Reference numbers: upstream nnU-Net v2's ``compute_metrics_on_folder`` on the small synthetic label
maps in data/ (see data/README.md), and upstream's fold-0 summary of the 220-case Hippocampus run.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pnnunet.errors import DatasetError
from pnnunet.metrics import (compute_metrics, compute_metrics_on_folder, compute_tp_fp_fn_tn,
                                        key_to_label_or_region, label_or_region_to_key, metrics_from_counts,
                                        summarize_cases)
from pnnunet.imageio import SimpleITKIO
from tests.conftest import UPSTREAM_HIPPO, require

DATA = Path(__file__).resolve().parent / "evaluation" / "data"
RUNS = json.loads((DATA / "upstream_runs.json").read_text())["runs"]


def _classes(entries):
    return [tuple(e) if isinstance(e, list) else e for e in entries]


def _assert_same_number(a, b, where):
    if isinstance(b, float) and math.isnan(b):
        assert isinstance(a, float) and math.isnan(a), f"{where}: {a} != NaN"
    else:
        assert a == pytest.approx(b, rel=1e-12, abs=0), f"{where}: {a} != {b}"
        assert isinstance(a, int) == isinstance(b, int), f"{where}: type {type(a)} vs {type(b)}"


def _assert_same_summary(ours, theirs):
    assert sorted(ours) == sorted(theirs) == ["foreground_mean", "mean", "metric_per_case"]
    for m, v in theirs["foreground_mean"].items():
        _assert_same_number(ours["foreground_mean"][m], v, f"foreground_mean {m}")
    assert list(ours["mean"]) == list(theirs["mean"])
    for k in theirs["mean"]:
        assert sorted(ours["mean"][k]) == sorted(theirs["mean"][k])
        for m, v in theirs["mean"][k].items():
            _assert_same_number(ours["mean"][k][m], v, f"mean {k} {m}")
    assert len(ours["metric_per_case"]) == len(theirs["metric_per_case"])
    for o, t in zip(ours["metric_per_case"], theirs["metric_per_case"]):
        assert Path(o["reference_file"]).name == Path(t["reference_file"]).name
        assert Path(o["prediction_file"]).name == Path(t["prediction_file"]).name
        assert sorted(o["metrics"]) == sorted(t["metrics"])
        for k in t["metrics"]:
            for m, v in t["metrics"][k].items():
                _assert_same_number(o["metrics"][k][m], v, f"{t['prediction_file']} {k} {m}")


# ---------------------------------------------------------------------------------------------
# constructed arrays
REF = np.array([[0, 1, 1, 2],
                [0, 1, 2, 2],
                [3, 3, 0, 0]])
PRED = np.array([[1, 1, 0, 2],
                 [0, 1, 1, 2],
                 [1, 2, 0, 0]])


def test_counts_by_hand():
    # label 1: ref at (0,1) (0,2) (1,1); pred at (0,0) (0,1) (1,1) (1,2) (2,0)
    assert compute_tp_fp_fn_tn(REF, PRED, 1) == (2, 3, 1, 6)
    # label 2: ref (0,3) (1,2) (1,3); pred (0,3) (1,3) (2,1)
    assert compute_tp_fp_fn_tn(REF, PRED, 2) == (2, 1, 1, 8)


def test_ignore_mask_removes_voxels_from_all_counts():
    ignore = REF == 3  # (2,0) and (2,1): an FP of label 1 and an FP of label 2 disappear
    assert compute_tp_fp_fn_tn(REF, PRED, 1, ignore) == (2, 2, 1, 5)
    assert compute_tp_fp_fn_tn(REF, PRED, 2, ignore) == (2, 0, 1, 7)


def test_any_ignore_mask_is_applied_to_reference_and_prediction():
    ignore = np.zeros(REF.shape, dtype=bool)
    ignore[0, 1] = True  # a TP of label 1
    ignore[0, 2] = True  # an FN of label 1
    assert compute_tp_fp_fn_tn(REF, PRED, 1, ignore) == (1, 3, 0, 6)


def test_region_is_the_union_of_its_labels():
    # (1, 2): ref at 6 voxels, pred at 8 voxels, overlap 5
    assert compute_tp_fp_fn_tn(REF, PRED, (1, 2)) == (5, 3, 1, 3)
    assert compute_tp_fp_fn_tn(REF, PRED, (2,)) == compute_tp_fp_fn_tn(REF, PRED, 2)


def test_nan_rule_and_zero_dice():
    m = metrics_from_counts(*compute_tp_fp_fn_tn(REF, PRED, 7))  # absent from both
    assert math.isnan(m["Dice"]) and math.isnan(m["IoU"])
    assert (m["TP"], m["FP"], m["FN"], m["TN"], m["n_pred"], m["n_ref"]) == (0, 0, 0, 12, 0, 0)
    only_pred = metrics_from_counts(0, 4, 0, 8)
    assert only_pred["Dice"] == 0 and only_pred["IoU"] == 0
    m1 = metrics_from_counts(2, 3, 1, 6)
    assert m1["Dice"] == pytest.approx(4 / 8) and m1["IoU"] == pytest.approx(2 / 6)
    assert (m1["n_pred"], m1["n_ref"]) == (5, 3)
    assert list(m1) == ["Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref"]


def test_keys_round_trip():
    for c, key in [(1, "1"), ((1, 2), "(1, 2)"), ((3,), "(3,)"), ([2, 3], "(2, 3)")]:
        assert label_or_region_to_key(c) == key
        assert key_to_label_or_region(key) == (tuple(c) if isinstance(c, list) else c)


def test_summary_nanmean_and_all_nan_without_warning():
    cases = [{"reference_file": "a", "prediction_file": "a",
              "metrics": {"1": metrics_from_counts(2, 2, 0, 4), "2": metrics_from_counts(0, 0, 0, 8)}},
             {"reference_file": "b", "prediction_file": "b",
              "metrics": {"1": metrics_from_counts(0, 0, 0, 8), "2": metrics_from_counts(0, 0, 0, 8)}}]
    s = summarize_cases(cases, [1, 2])  # warnings are errors in this suite: an all-NaN mean must not warn
    assert s["mean"]["1"]["Dice"] == pytest.approx(2 / 3)  # case b's NaN is skipped
    assert s["mean"]["1"]["TP"] == 1.0
    assert math.isnan(s["mean"]["2"]["Dice"])
    assert math.isnan(s["foreground_mean"]["Dice"])  # a NaN class makes the foreground mean NaN (upstream)
    assert s["foreground_mean"]["TN"] == pytest.approx((6 + 8) / 2)


# ---------------------------------------------------------------------------------------------
# upstream's 220-case Hippocampus fold-0 summary
def test_hippocampus_summary_aggregation_matches_upstream():
    ref = json.loads(require(UPSTREAM_HIPPO / "summary.json").read_text())
    cases = ref["metric_per_case"]
    assert len(cases) == 44
    for case in cases:
        for m in case["metrics"].values():
            assert m["Dice"] == pytest.approx(2 * m["TP"] / (2 * m["TP"] + m["FP"] + m["FN"]), rel=1e-12)
            assert m["IoU"] == pytest.approx(m["TP"] / (m["TP"] + m["FP"] + m["FN"]), rel=1e-12)
            assert (m["n_pred"], m["n_ref"]) == (m["TP"] + m["FP"], m["TP"] + m["FN"])
    ours = summarize_cases(cases, [1, 2])
    _assert_same_summary(ours, ref)


# ---------------------------------------------------------------------------------------------
# folders, against upstream's compute_metrics_on_folder
@pytest.mark.upstream
@pytest.mark.parametrize("run", sorted(RUNS))
def test_folder_summary_matches_upstream(run, tmp_path):
    entry = RUNS[run]
    out = tmp_path / "summary.json"
    ours = compute_metrics_on_folder(DATA / "ref", DATA / "pred", out, SimpleITKIO(), ".nii.gz",
                                     _classes(entry["labels_or_regions"]), entry["ignore_label"], num_processes=1)
    theirs = json.loads((DATA / entry["summary"]).read_text())
    _assert_same_summary(ours, theirs)
    written = json.loads(out.read_text())
    _assert_same_summary(written, theirs)
    assert list(json.loads(out.read_text())) == ["foreground_mean", "mean", "metric_per_case"]  # sort_keys
    assert written["metric_per_case"][0]["reference_file"] == str(DATA / "ref" / "case_a.nii.gz")


def test_compute_metrics_single_case():
    r = compute_metrics(DATA / "ref" / "case_b.nii.gz", DATA / "pred" / "case_b.nii.gz", SimpleITKIO(), [1, 2])
    assert sorted(r) == ["metrics", "prediction_file", "reference_file"]
    assert math.isnan(r["metrics"]["2"]["Dice"])
    assert 0 < r["metrics"]["1"]["Dice"] < 1


def test_missing_predictions_are_named_unless_chill(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in ("case_a.nii.gz", "case_c.nii.gz"):
        (pred / name).write_bytes((DATA / "pred" / name).read_bytes())
    (pred / ".tmp-123-case_b.nii.gz").write_bytes(b"half written")  # hidden temporary file: skipped
    with pytest.raises(DatasetError, match="case_b.nii.gz, case_d.nii.gz"):
        compute_metrics_on_folder(DATA / "ref", pred, None, SimpleITKIO(), ".nii.gz", [1, 2], num_processes=1)
    s = compute_metrics_on_folder(DATA / "ref", pred, None, SimpleITKIO(), ".nii.gz", [1, 2], num_processes=1,
                                  chill=True)
    assert [Path(c["prediction_file"]).name for c in s["metric_per_case"]] == ["case_a.nii.gz", "case_c.nii.gz"]


def test_prediction_without_reference_and_empty_folder(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    with pytest.raises(DatasetError, match="no predictions"):
        compute_metrics_on_folder(DATA / "ref", pred, None, SimpleITKIO(), ".nii.gz", [1], num_processes=1)
    (pred / "case_z.nii.gz").write_bytes((DATA / "pred" / "case_a.nii.gz").read_bytes())
    with pytest.raises(DatasetError, match="case_z.nii.gz"):
        compute_metrics_on_folder(DATA / "ref", pred, None, SimpleITKIO(), ".nii.gz", [1], num_processes=1)


def test_two_processes_give_the_same_summary():
    one = compute_metrics_on_folder(DATA / "ref", DATA / "pred", None, SimpleITKIO(), ".nii.gz", [1, 2], 3, 1)
    two = compute_metrics_on_folder(DATA / "ref", DATA / "pred", None, SimpleITKIO(), ".nii.gz", [1, 2], 3, 2)
    _assert_same_summary(two, json.loads(json.dumps(one)))
