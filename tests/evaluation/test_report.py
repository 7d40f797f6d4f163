"""Evaluation reports (pnnunet.evaluation.report): CSV rows, table, flat zip, folder evaluation.

Reference numbers are counted by hand from the constructed label maps (reference §8.1).
"""

import csv
import json
import math
import zipfile

import numpy as np
import pytest

from pnnunet.errors import DatasetError
from pnnunet.evaluation.report import (
    class_names,
    evaluate_folder,
    format_table,
    summary_rows,
    write_summary_csv,
    zip_predictions,
)
from tests.postprocessing.synthetic import DATASET_JSON, FILE_ENDING, REGION_DATASET_JSON, write_seg

SHAPE = (2, 4, 4)


def _pair(tmp_path):
    """case_000: label 1 ref 8 voxels, pred 4 of them + 2 FP → TP 4, FP 2, FN 4, Dice 8/14, IoU 4/10.
    label 2 absent from both → NaN. case_001: perfect label 1 (4 voxels) and label 2 (2 voxels)."""
    ref0 = np.zeros(SHAPE, dtype=np.uint8)
    ref0[0, 0:2, :] = 1
    pred0 = np.zeros(SHAPE, dtype=np.uint8)
    pred0[0, 0, :] = 1
    pred0[1, 3, 0:2] = 1
    ref1 = np.zeros(SHAPE, dtype=np.uint8)
    ref1[1, 1, :] = 1
    ref1[0, 3, 0:2] = 2
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for name, r, p in (("case_000", ref0, pred0), ("case_001", ref1, ref1)):
        write_seg(ref / f"{name}{FILE_ENDING}", r)
        write_seg(pred / f"{name}{FILE_ENDING}", p)
    return ref, pred


def test_evaluate_folder_writes_json_and_csv_with_hand_numbers(tmp_path):
    ref, pred = _pair(tmp_path)
    out = tmp_path / "eval" / "summary.json"
    s = evaluate_folder(ref, pred, DATASET_JSON, out, num_processes=1)
    case0 = s["metric_per_case"][0]["metrics"]
    assert case0["1"]["Dice"] == pytest.approx(8 / 14) and case0["1"]["IoU"] == pytest.approx(4 / 10)
    assert (case0["1"]["TP"], case0["1"]["FP"], case0["1"]["FN"]) == (4, 2, 4)
    assert math.isnan(case0["2"]["Dice"])
    assert s["mean"]["1"]["Dice"] == pytest.approx((8 / 14 + 1) / 2)
    assert s["mean"]["2"]["Dice"] == pytest.approx(1.0)  # NaN case skipped
    assert json.loads(out.read_text())["foreground_mean"]["Dice"] == pytest.approx(((8 / 14 + 1) / 2 + 1) / 2)
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case", "class", "name", "Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref"]
    assert len(rows) == 2 * 2 + 2 + 1
    first = rows[0]
    assert (first["case"], first["class"], first["name"]) == ("case_000", "1", "alpha")
    assert float(first["Dice"]) == pytest.approx(8 / 14) and first["TP"] == "4"
    assert rows[1]["Dice"] == "nan"
    assert [(r["case"], r["class"]) for r in rows[4:]] == [("mean", "1"), ("mean", "2"), ("foreground_mean", "all")]


def test_default_output_is_the_prediction_folder(tmp_path):
    ref, pred = _pair(tmp_path)
    evaluate_folder(ref, pred, DATASET_JSON, num_processes=1)
    assert (pred / "summary.json").is_file() and (pred / "summary.csv").is_file()


def test_table_names_classes_and_lists_cases(tmp_path):
    ref, pred = _pair(tmp_path)
    s = evaluate_folder(ref, pred, DATASET_JSON, tmp_path / "s.json", num_processes=1)
    t = format_table(s, class_names(DATASET_JSON))
    assert "alpha (1)" in t and "beta (2)" in t and "foreground mean" in t
    assert f"{(8 / 14 + 1) / 2:.4f}" in t
    assert "case_000" not in t
    t = format_table(s, class_names(DATASET_JSON), per_case=True, file_ending=FILE_ENDING)
    case_line = next(line for line in t.splitlines() if line.startswith("case_000"))
    assert f"{8 / 14:.4f}" in case_line and "nan" in case_line


def test_summary_rows_and_csv_on_a_literal_summary(tmp_path):
    summary = {"metric_per_case": [{"prediction_file": "/x/a.nii.gz", "reference_file": "/y/a.nii.gz",
                                    "metrics": {"(1, 2)": {"Dice": 0.5, "IoU": 1 / 3, "FP": 1, "TP": 1, "FN": 1,
                                                           "TN": 5, "n_pred": 2, "n_ref": 2}}}],
               "mean": {"(1, 2)": {"Dice": 0.5, "IoU": 1 / 3, "FP": 1.0, "TP": 1.0, "FN": 1.0, "TN": 5.0,
                                   "n_pred": 2.0, "n_ref": 2.0}},
               "foreground_mean": {"Dice": 0.5, "IoU": 1 / 3, "FP": 1.0, "TP": 1.0, "FN": 1.0, "TN": 5.0,
                                   "n_pred": 2.0, "n_ref": 2.0}}
    names = class_names(REGION_DATASET_JSON)
    assert names == {"(1, 2)": "whole", "2": "core"}
    rows = summary_rows(summary, names, ".nii.gz")
    assert rows[0]["case"] == "a" and rows[0]["name"] == "whole"
    write_summary_csv(summary, tmp_path / "s.csv", names, ".nii.gz")
    assert (tmp_path / "s.csv").read_text().splitlines()[1].startswith("a,\"(1, 2)\",whole,0.5,")


def test_zip_is_flat_and_holds_only_predictions(tmp_path):
    ref, pred = _pair(tmp_path)
    (pred / "summary.json").write_text("{}")
    (pred / "sub").mkdir()
    write_seg(pred / "sub" / f"nested{FILE_ENDING}", np.zeros(SHAPE))
    (pred / f".tmp-1-x{FILE_ENDING}").write_text("partial")
    entries = zip_predictions(pred, FILE_ENDING, tmp_path / "submission.zip")
    with zipfile.ZipFile(tmp_path / "submission.zip") as zf:
        assert zf.namelist() == entries == [f"case_000{FILE_ENDING}", f"case_001{FILE_ENDING}"]
        assert zf.read(entries[0]) == (pred / entries[0]).read_bytes()
    with pytest.raises(DatasetError, match="no predictions"):
        zip_predictions(ref / "..", FILE_ENDING, tmp_path / "empty.zip")
