"""Model selection over configurations and pair ensembles (pnnunet.evaluation.find_best; reference §8.2).

Synthetic cross-validation results, made here, with hand-computed Dice:
ground truth per case = label 1 block (27 voxels) touching a label 2 block (18 voxels).
- model ``2d``: misses the label-1 slice z=1 (9 voxels, background 0.6 vs label 1 0.4):
  label 1 Dice 36/45 = 0.8, label 2 1.0 → mean 0.9.
- model ``3d_fullres``: misses 3 label-2 voxels (0.6 vs 0.4) and adds a far 4-voxel label-1 blob
  (0.6): label 1 54/58, label 2 30/33 → mean 0.9205 (the better single model).
- their ensemble: wherever one model errs the other is confident (0.9), so the mean is right
  everywhere → Dice 1.0.
Postprocessing of ``3d_fullres`` alone: removing the blob gives label 1 = 1.0 (step A accepted).
"""

import json
import logging
import math

import numpy as np
import pytest

from pnnunet.errors import DatasetError
from pnnunet.evaluation.accumulate import accumulate_cv_results
from pnnunet.evaluation.find_best import (
    Candidate,
    TrainedModel,
    best_candidate,
    find_best_configuration,
    prediction_commands,
)
from pnnunet.training.validation import validation_settings
from tests.postprocessing.synthetic import (
    DATASET_JSON,
    FILE_ENDING,
    one_hot_probabilities,
    plans,
    write_json,
    write_probabilities,
    write_seg,
)

DATASET = "Dataset900_Toy"
SHAPE = (6, 10, 10)
FOLDS = {0: ["toy_000", "toy_001"], 1: ["toy_002", "toy_003"]}
M2D = "pnnunetTrainer__pnnunetPlans__2d"
M3D = "pnnunetTrainer__pnnunetPlans__3d_fullres"
ENSEMBLE = f"ensemble___{M2D}___{M3D}___0_1"
DICE_2D = (36 / 45 + 1.0) / 2
DICE_3D = (54 / 58 + 30 / 33) / 2


def _truth():
    s = np.zeros(SHAPE, dtype=np.uint8)
    s[1:4, 1:4, 1:4] = 1
    s[1:4, 4:6, 1:4] = 2
    return s


def _probs_2d(gt):
    p = one_hot_probabilities(gt, 3)
    p[:, 1, 1:4, 1:4] = np.array([0.6, 0.4, 0.0], dtype=np.float32)[:, None, None]
    return p


def _probs_3d(gt):
    p = one_hot_probabilities(gt, 3)
    p[:, 1, 4, 1:4] = np.array([0.6, 0.0, 0.4], dtype=np.float32)[:, None]
    p[:, 5, 8:10, 8:10] = np.array([0.2, 0.6, 0.2], dtype=np.float32)[:, None, None]
    return p


@pytest.fixture
def workspace(tmp_path):
    results, pre = tmp_path / "results", tmp_path / "preprocessed"
    write_json(pre / DATASET / "dataset.json", DATASET_JSON)
    write_json(pre / DATASET / "pnnunetPlans.json", plans(("2d", "3d_fullres", "3d_lowres")))
    gt = _truth()
    for cases in FOLDS.values():
        for c in cases:
            write_seg(pre / DATASET / "gt_segmentations" / f"{c}{FILE_ENDING}", gt)
    for model, make in ((M2D, _probs_2d), (M3D, _probs_3d)):
        d = results / DATASET / model
        write_json(d / "dataset.json", DATASET_JSON)
        write_json(d / "plans.json", plans(("2d", "3d_fullres", "3d_lowres")))
        for fold, cases in FOLDS.items():
            for c in cases:
                write_probabilities(d / f"fold_{fold}" / "validation", c, make(gt))
    return results, pre


def _run(workspace, **kw):
    results, pre = workspace
    kw.setdefault("folds", (0, 1))
    kw.setdefault("num_processes", 1)
    return find_best_configuration(DATASET, results, pre, **kw)


def test_picks_the_ensemble_and_writes_instructions(workspace):
    results, _ = workspace
    r = _run(workspace)
    assert [c.name for c in r.candidates] == [M2D, M3D, ENSEMBLE]
    assert r.information["all_results"][M2D] == pytest.approx(DICE_2D)
    assert r.information["all_results"][M3D] == pytest.approx(DICE_3D)
    assert r.information["all_results"][ENSEMBLE] == pytest.approx(1.0)
    assert r.best.name == ENSEMBLE
    out = results / DATASET
    info = json.loads((out / "inference_instructions.json").read_text())
    assert info["folds"] == [0, 1] and info["dataset_name_or_id"] == DATASET and info["ensembling_allowed"] is True
    assert info["considered_models"] == [{"plans": "pnnunetPlans", "configuration": c, "trainer": "pnnunetTrainer"}
                                         for c in ("2d", "3d_fullres")]
    best = info["best_model_or_ensemble"]
    assert best["selected_model_or_models"] == [
        {"configuration": "2d", "trainer": "pnnunetTrainer", "plans_identifier": "pnnunetPlans"},
        {"configuration": "3d_fullres", "trainer": "pnnunetTrainer", "plans_identifier": "pnnunetPlans"}]
    assert best["result_on_crossval_pre_pp"] == pytest.approx(1.0)
    assert best["result_on_crossval_post_pp"] == pytest.approx(1.0)
    assert best["postprocessing_file"] == str(out / "postprocessing.json")
    assert best["some_plans_file"] == str(out / "ensembles" / ENSEMBLE / "plans.json")
    pp = json.loads((out / "postprocessing.json").read_text())
    assert pp["postprocessing_fns"] == []  # nothing to improve on a perfect ensemble
    txt = (out / "inference_instructions.txt").read_text()
    assert (f"pnnunet_predict -d {DATASET} -i INPUT_FOLDER -o OUTPUT_FOLDER_MODEL_1 -f 0 1 -tr pnnunetTrainer "
            "-c 2d -p pnnunetPlans --save_probabilities") in txt
    assert "-o OUTPUT_FOLDER_MODEL_2 -f 0 1 -tr pnnunetTrainer -c 3d_fullres -p pnnunetPlans --save_probabilities" in txt
    assert "pnnunet_ensemble -i OUTPUT_FOLDER_MODEL_1 OUTPUT_FOLDER_MODEL_2 -o OUTPUT_FOLDER -np 1" in txt
    assert f"pnnunet_apply_postprocessing -i OUTPUT_FOLDER -o OUTPUT_FOLDER_PP -pp_json {out / 'postprocessing.json'}" \
           in txt
    for m in (M2D, M3D):
        assert (out / m / "crossval_results_folds_0_1" / "summary.json").is_file()
    assert (out / "ensembles" / ENSEMBLE / "summary.json").is_file()
    table = r.table()
    assert "alpha (1)" in table and "beta (2)" in table
    assert "* ensemble 2d + 3d_fullres" in table and "  3d_fullres " in table
    assert "models: pnnunetTrainer__pnnunetPlans__<configuration>" in table
    assert f"{DICE_3D:.4f}" in table


def test_single_model_with_postprocessing_when_ensembling_disabled(workspace):
    results, _ = workspace
    r = _run(workspace, allow_ensembling=False)
    assert [c.name for c in r.candidates] == [M2D, M3D]
    assert r.best.name == M3D
    assert r.postprocessing["postprocessing_kwargs"] == [{"labels_or_regions": [1, 2]}]
    assert r.postprocessing["postprocessed"]["foreground_mean"]["Dice"] == pytest.approx((1 + 30 / 33) / 2)
    info = json.loads((results / DATASET / "inference_instructions.json").read_text())
    assert info["best_model_or_ensemble"]["selected_model_or_models"] == [
        {"configuration": "3d_fullres", "trainer": "pnnunetTrainer", "plans_identifier": "pnnunetPlans"}]
    txt = (results / DATASET / "inference_instructions.txt").read_text()
    assert "-o OUTPUT_FOLDER -f 0 1 -tr pnnunetTrainer -c 3d_fullres -p pnnunetPlans\n" in txt
    assert "-c 2d" not in txt and "pnnunet_ensemble" not in txt and "--save_probabilities" not in txt
    assert not (results / DATASET / "ensembles").exists()
    # the winner's postprocessing.json is the one at the dataset level
    assert json.loads((results / DATASET / "postprocessing.json").read_text()) == r.postprocessing


def test_models_without_npz_are_left_out_of_ensembles(workspace):
    results, _ = workspace
    for f in (results / DATASET / M2D).rglob("*.npz"):
        f.unlink()
    r = _run(workspace)
    assert [c.name for c in r.candidates] == [M2D, M3D]
    assert r.best.name == M3D
    assert any(M2D in n and "--npz" in n for n in r.notes)
    assert json.loads((results / DATASET / "inference_instructions.json").read_text())["notes"] == r.notes


def test_configuration_selection_and_errors(workspace):
    # 3d_lowres is planned but not trained: an error when asked for explicitly ...
    with pytest.raises(DatasetError, match="3d_lowres was not trained"):
        _run(workspace, configurations=["2d", "3d_lowres"])
    # ... a configuration missing from the plans is skipped with a note
    r = _run(workspace, configurations=["3d_fullres", "3d_cascade_fullres"])
    assert [c.name for c in r.candidates] == [M3D]
    assert any("3d_cascade_fullres" in n for n in r.notes)
    with pytest.raises(DatasetError, match="fold 2 of model"):
        _run(workspace, folds=(0, 1, 2))
    with pytest.raises(DatasetError, match="no trained models"):
        _run(workspace, trainer="otherTrainer")


def test_duplicate_case_across_folds_is_an_error(workspace):
    results, pre = workspace
    model = results / DATASET / M2D
    write_probabilities(model / "fold_1" / "validation", "toy_000", _probs_2d(_truth()))
    with pytest.raises(DatasetError, match="toy_000"):
        accumulate_cv_results(model, (0, 1), None, pre / DATASET / "gt_segmentations", num_processes=1)


def test_accumulate_drops_stale_cases(workspace):
    results, pre = workspace
    model = results / DATASET / M2D
    stale = model / "crossval_results_folds_0" / f"old_case{FILE_ENDING}"
    write_seg(stale, _truth())
    summary = accumulate_cv_results(model, (0,), None, pre / DATASET / "gt_segmentations", num_processes=1)
    assert not stale.exists()
    assert len(summary["metric_per_case"]) == 2
    assert summary["mean"]["1"]["Dice"] == pytest.approx(0.8)


def test_cascade_prediction_command_predicts_previous_stage_first(tmp_path):
    p = plans(("3d_lowres",))
    p["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    p["configurations"]["3d_fullres"] = {"data_identifier": "x"}
    model = TrainedModel("pnnunetTrainer", "pnnunetPlans", "3d_cascade_fullres")
    write_json(tmp_path / "plans.json", p)
    cmds = prediction_commands("Dataset001_X", model, tmp_path, (0, 1), "OUT", False)
    assert cmds == [("pnnunet_predict -d Dataset001_X -i INPUT_FOLDER -o OUT_PREV_STAGE -f 0 1 -tr pnnunetTrainer "
                     "-c 3d_lowres -p pnnunetPlans"),
                    ("pnnunet_predict -d Dataset001_X -i INPUT_FOLDER -o OUT -f 0 1 -tr pnnunetTrainer "
                     "-c 3d_cascade_fullres -p pnnunetPlans -prev_stage_predictions OUT_PREV_STAGE")]


def test_best_candidate_ties_keep_the_first_and_nan_never_wins():
    def cand(name, dice):
        return Candidate(name, None, (), {"foreground_mean": {"Dice": dice}, "mean": {}})
    assert best_candidate([cand("a", 0.8), cand("b", 0.8), cand("c", 0.7)]).name == "a"
    assert best_candidate([cand("a", math.nan), cand("b", 0.1)]).name == "b"
    assert best_candidate([cand("a", 0.5), cand("ens", math.nan)]).name == "a"


def test_validation_without_mirroring_is_flagged(workspace, caplog):
    from_settings = validation_settings("checkpoint_final.pdparams", None, disable_tta=True, step_size=0.5)
    results, _ = workspace
    write_json(results / DATASET / M2D / "fold_1" / "validation" / "validation_settings.json", from_settings)
    write_json(results / DATASET / M3D / "fold_0" / "validation" / "validation_settings.json",
               validation_settings("checkpoint_final.pdparams", [0, 1, 2], disable_tta=False, step_size=0.5))
    with caplog.at_level(logging.WARNING, logger="pnnunet.evaluation.find_best"):
        r = _run(workspace)
    assert len(r.warnings) == 1, r.warnings
    assert r.warnings[0].startswith(f"{M2D}: fold(s) 1 validated with no test-time mirroring (--val_disable_tta")
    assert "not comparable" in r.warnings[0]
    assert r.information["warnings"] == r.warnings
    assert [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING] == \
           [f"warning: {r.warnings[0]}"]


def test_standard_validation_gives_no_warning(workspace):
    results, _ = workspace
    for fold in FOLDS:
        write_json(results / DATASET / M3D / f"fold_{fold}" / "validation" / "validation_settings.json",
                   validation_settings("checkpoint_final.pdparams", [0, 1, 2], disable_tta=False, step_size=0.5))
    assert _run(workspace).warnings == []
