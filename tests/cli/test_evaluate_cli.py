"""Evaluation-stage commands end to end: pnnunet_evaluate, pnnunet_ensemble, pnnunet_apply_postprocessing,
pnnunet_find_best_config (exit codes, files, printed tables, clear errors)."""

import csv
import json
import zipfile

import numpy as np
import pytest

from pnnunet.cli import apply_postprocessing as apply_cli
from pnnunet.cli import ensemble as ensemble_cli
from pnnunet.cli import evaluate as evaluate_cli
from pnnunet.cli import find_best_config as find_best_cli
from tests.postprocessing.synthetic import (
    DATASET_JSON,
    FILE_ENDING,
    plans,
    read_seg,
    write_json,
    write_probabilities,
    write_seg,
)

SHAPE = (3, 6, 6)


def _seg(shift=0):
    s = np.zeros(SHAPE, dtype=np.uint8)
    s[1, 1:4, 1 + shift:4 + shift] = 1
    s[1, 4:5, 1:4] = 2
    return s


@pytest.fixture
def folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for i in range(2):
        write_seg(ref / f"case_{i:03d}{FILE_ENDING}", _seg())
        write_seg(pred / f"case_{i:03d}{FILE_ENDING}", _seg(shift=i))
    write_json(tmp_path / "dataset.json", DATASET_JSON)
    return ref, pred, tmp_path / "dataset.json"


@pytest.fixture
def roots(tmp_path, monkeypatch):
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"pnnunet_{name}", str(tmp_path / name))
    return tmp_path


def test_evaluate_end_to_end(folders, tmp_path, capsys):
    ref, pred, dj = folders
    out = tmp_path / "out" / "summary.json"
    rc = evaluate_cli.main(["-ref", str(ref), "-pred", str(pred), "-djfile", str(dj), "-o", str(out), "-np", "1",
                            "--zip", str(tmp_path / "sub.zip"), "--per_case"])
    assert rc == 0
    printed = capsys.readouterr().out
    # case_001: label 1 shifted by one voxel: TP 6, FP 3, FN 3 → Dice 12/18
    s = json.loads(out.read_text())
    assert s["metric_per_case"][1]["metrics"]["1"]["Dice"] == pytest.approx(12 / 18)
    assert s["mean"]["1"]["Dice"] == pytest.approx((1 + 12 / 18) / 2)
    assert "alpha (1)" in printed and "beta (2)" in printed and "foreground mean" in printed
    assert f"{(1 + 12 / 18) / 2:.4f}" in printed and "case_001" in printed
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["class"]) for r in rows][:2] == [("case_000", "1"), ("case_000", "2")]
    with zipfile.ZipFile(tmp_path / "sub.zip") as zf:
        assert zf.namelist() == [f"case_000{FILE_ENDING}", f"case_001{FILE_ENDING}"]


def test_evaluate_with_dataset_id_and_chill(folders, roots, capsys):
    ref, pred, _ = folders
    write_json(roots / "preprocessed" / "Dataset900_Toy" / "dataset.json", DATASET_JSON)
    write_seg(ref / f"case_009{FILE_ENDING}", _seg())
    assert evaluate_cli.main(["-ref", str(ref), "-pred", str(pred), "-d", "900", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "case_009" in err and "--chill" in err and "Traceback" not in err
    assert evaluate_cli.main(["-ref", str(ref), "-pred", str(pred), "-d", "900", "-np", "1", "--chill"]) == 0
    assert (pred / "summary.json").is_file() and (pred / "summary.csv").is_file()


def test_apply_postprocessing_cli(folders, tmp_path, capsys):
    _, pred, dj = folders
    blob = _seg()
    blob[2, 5, 5] = 1  # an isolated voxel: removed by "keep the largest component" of labels 1 and 2
    write_seg(pred / f"case_000{FILE_ENDING}", blob)
    pp = tmp_path / "postprocessing.json"
    write_json(pp, {"postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
                    "postprocessing_kwargs": [{"labels_or_regions": [1, 2]}]})
    out = tmp_path / "pp"
    rc = apply_cli.main(["-i", str(pred), "-o", str(out), "-pp_json", str(pp), "-np", "1", "-dataset_json", str(dj)])
    assert rc == 0
    np.testing.assert_array_equal(read_seg(out / f"case_000{FILE_ENDING}"), _seg())
    before = (pred / f"case_000{FILE_ENDING}").read_bytes()
    assert apply_cli.main(["-i", str(pred), "-o", str(pred), "-pp_json", str(pp), "-dataset_json", str(dj)]) == 1
    assert "is the input folder" in capsys.readouterr().err
    assert (pred / f"case_000{FILE_ENDING}").read_bytes() == before
    # without dataset.json the file ending is unknown: a clear error, exit 1
    assert apply_cli.main(["-i", str(pred), "-o", str(tmp_path / "x"), "-pp_json", str(pp)]) == 1
    assert "-dataset_json" in capsys.readouterr().err


def test_ensemble_cli(tmp_path, capsys):
    rng = np.random.default_rng(5)
    folders = []
    for m in range(2):
        f = tmp_path / f"m{m}"
        for c in ("a", "b"):
            p = rng.random((3, *SHAPE)).astype(np.float32)
            write_probabilities(f, c, p / p.sum(0))
        write_json(f / "dataset.json", DATASET_JSON)
        write_json(f / "plans.json", plans())
        folders.append(f)
    assert ensemble_cli.main(["-i", *map(str, folders), "-o", str(tmp_path / "ens"), "-np", "1", "--save_npz"]) == 0
    assert "ensembled 2 cases from 2 folders" in capsys.readouterr().out
    assert (tmp_path / "ens" / "a.npz").is_file()
    (folders[1] / "b.npz").unlink()
    assert ensemble_cli.main(["-i", *map(str, folders), "-o", str(tmp_path / "ens2"), "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "m1 lacks 1 case(s): b" in err and "Traceback" not in err


def test_find_best_config_cli(roots, capsys):
    ds = "Dataset900_Toy"
    pre, res = roots / "preprocessed" / ds, roots / "results" / ds
    write_json(pre / "dataset.json", DATASET_JSON)
    write_json(pre / "pnnunetPlans.json", plans(("3d_fullres",)))
    model = res / "pnnunetTrainer__pnnunetPlans__3d_fullres"
    write_json(model / "dataset.json", DATASET_JSON)
    write_json(model / "plans.json", plans(("3d_fullres",)))
    for fold, shift in ((0, 0), (1, 1)):
        write_seg(pre / "gt_segmentations" / f"c{fold}{FILE_ENDING}", _seg())
        write_seg(model / f"fold_{fold}" / "validation" / f"c{fold}{FILE_ENDING}", _seg(shift))
    rc = find_best_cli.main(["-d", "900", "-f", "0", "1", "-np", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "* 3d_fullres" in out and "alpha (1)" in out
    assert "pnnunet_predict -d Dataset900_Toy" in out and "-c 3d_fullres" in out
    assert f"instructions: {res / 'inference_instructions.txt'}" in out
    for name in ("inference_instructions.json", "inference_instructions.txt", "postprocessing.json"):
        assert (res / name).is_file()
    # a fold that was not trained: exit 1 with the fix
    assert find_best_cli.main(["-d", "900", "-f", "0", "1", "2", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "fold 2" in err and "pnnunet_train 3d_fullres 2" in err and "Traceback" not in err
