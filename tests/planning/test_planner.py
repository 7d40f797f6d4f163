"""The planner against upstream nnU-Net v2 plans (same inputs → same plan, to the integer)."""

import json
import logging

import numpy as np
import pytest

from pnnunet.planning.compare import plan_differences
from pnnunet.planning.planner import (PlannerSettings, fullres_target_spacing, plan_configuration, plan_experiment,
                                      transpose_from_spacing)
from pnnunet.errors import DatasetError
from pnnunet.plans import ConfigurationPlan, merge_with_existing, resolve_configuration
from tests.conftest import UPSTREAM_HIPPO, require

HIPPO_DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                      "numTraining": 220, "file_ending": ".nii.gz"}


@pytest.mark.parametrize("n_training, bs3d, bs2d", [(260, 9, 366), (220, 8, 309)])
def test_hippocampus_batch_size_scales_with_cases(n_training, bs3d, bs2d):
    # §3.11: 260 cases → bs 9 / 366 (reference docs); 220 cases → 8 / 309 (upstream_runs.md).
    norm = (["ZScoreNormalization"], [False])
    n_vox = 36 * 50 * 35 * n_training
    full = plan_configuration((1.0, 1.0, 1.0), np.array([36.0, 50.0, 35.0]), "x", n_vox, 3, norm)
    assert full["patch_size"] == [40, 56, 40] and full["batch_size"] == bs3d
    two_d = plan_configuration((1.0, 1.0), np.array([50.0, 35.0]), "x", n_vox, 3, norm)
    assert two_d["patch_size"] == [56, 40] and two_d["batch_size"] == bs2d


def test_hippocampus_220_plans_equal_upstream():
    ref = require(UPSTREAM_HIPPO)
    fingerprint = json.loads((ref / "dataset_fingerprint.json").read_text())
    upstream = json.loads((ref / "nnUNetPlans.json").read_text())
    ours = plan_experiment(fingerprint, HIPPO_DATASET_JSON, "Dataset004_Hippocampus", "SimpleITKIO")
    assert plan_differences(ours, upstream) == []
    assert list(ours["configurations"]) == ["2d", "3d_fullres"]  # lowres dropped, as upstream
    assert ours["configurations"]["3d_fullres"]["batch_size"] == 8


def test_plan_differences_detects_a_change():
    ref = require(UPSTREAM_HIPPO)
    upstream = json.loads((ref / "nnUNetPlans.json").read_text())
    changed = json.loads(json.dumps(upstream))
    changed["configurations"]["3d_fullres"]["batch_size"] = 9
    changed["configurations"]["2d"]["architecture"]["arch_kwargs"]["strides"][1] = [2, 1]
    diffs = plan_differences(changed, upstream)
    assert len(diffs) == 2 and any("batch_size" in d for d in diffs)


def test_anisotropic_target_spacing_uses_10th_percentile():  # §3.1 step 5
    spacings = np.array([[5.0, 0.8, 0.8]] * 5 + [[3.0, 0.8, 0.8]] * 5 + [[4.0, 0.8, 0.8]] * 10)
    shapes = np.array([[30, 300, 300]] * 20)
    t = fullres_target_spacing(spacings, shapes)
    assert t[0] == pytest.approx(np.percentile(spacings[:, 0], 10)) and t[0] == 3.0
    # 10th percentile below the in-plane spacing → clamp to max(others) + 1e-5
    spacings2 = np.array([[0.5, 0.8, 0.8]] * 3 + [[4.0, 0.8, 0.8]] * 17)
    t2 = fullres_target_spacing(spacings2, shapes)
    assert t2[0] == pytest.approx(0.8 + 1e-5, abs=1e-12)


def test_transpose_puts_coarsest_axis_first():
    assert transpose_from_spacing([0.7, 0.7, 5.0]) == ([2, 0, 1], [1, 2, 0])
    assert transpose_from_spacing([1.0, 1.0, 1.0]) == ([0, 1, 2], [0, 1, 2])


def test_configuration_inheritance_and_cycles():
    plans = {"configurations": {"3d_fullres": {"batch_size": 2, "patch_size": [8, 8, 8]},
                                "big": {"inherits_from": "3d_fullres", "batch_size": 40},
                                "a": {"inherits_from": "b"}, "b": {"inherits_from": "a"}}}
    assert resolve_configuration(plans, "big") == {"batch_size": 40, "patch_size": [8, 8, 8]}
    with pytest.raises(DatasetError, match="cycle"):
        resolve_configuration(plans, "a")
    with pytest.raises(DatasetError, match="did you mean '3d_fullres'"):
        resolve_configuration(plans, "3d_fulres")


def test_merge_keeps_user_configurations():
    new = {"configurations": {"2d": {"batch_size": 1}}}
    old = {"configurations": {"2d": {"batch_size": 99}, "2d_bs40": {"inherits_from": "2d", "batch_size": 40}}}
    merged = merge_with_existing(new, old)
    assert merged["configurations"]["2d"]["batch_size"] == 1
    assert merged["configurations"]["2d_bs40"]["batch_size"] == 40


def test_upstream_plans_load_as_typed_configuration():
    ref = require(UPSTREAM_HIPPO)
    upstream = json.loads((ref / "nnUNetPlans.json").read_text())
    c = ConfigurationPlan.from_plans(upstream, "3d_fullres")
    assert c.patch_size == (40, 56, 40) and c.batch_size == 8 and not c.is_2d and c.batch_dice is False


def test_overwrite_target_spacing_changes_2d_too():  # §3.1.6 / App. G.15
    fp = {"spacings": [[1.0, 1.0, 1.0]] * 10, "shapes_after_crop": [[100, 120, 110]] * 10,
          "median_relative_size_after_cropping": 1.0, "foreground_intensity_properties_per_channel": {}}
    dj = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 10}
    plans = plan_experiment(fp, dj, "D", "SimpleITKIO", PlannerSettings(overwrite_target_spacing=(3.0, 0.5, 2.0)))
    assert plans["transpose_forward"] == [0, 1, 2]  # coarsest first, the rest ascending
    assert plans["configurations"]["2d"]["spacing"] == [0.5, 2.0]


EXPECTED = __import__("pathlib").Path(__file__).parent / "expected"
SCENARIOS = sorted(p.name for p in EXPECTED.iterdir() if (p / "upstream_plans.json").is_file())


@pytest.mark.upstream
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_synthetic_scenarios_equal_upstream(scenario):
    """CT, anisotropy (10th percentile, clamp, transposition), lowres + cascade, multi-channel mixed
    normalization, ignore label, batch-size rules and the real 2D ISBI PNG dataset (fixtures made by
    benchmarks/upstream/make_planning_fixtures.py with upstream nnU-Net 2.8.1)."""
    d = EXPECTED / scenario
    fingerprint = json.loads((d / "dataset_fingerprint.json").read_text())
    dataset_json = json.loads((d / "dataset.json").read_text())
    upstream = json.loads((d / "upstream_plans.json").read_text())
    ours = plan_experiment(fingerprint, dataset_json, upstream["dataset_name"], upstream["image_reader_writer"])
    assert plan_differences(ours, upstream) == []


def test_scenarios_cover_the_rules():
    assert len(SCENARIOS) >= 13
    names = set(SCENARIOS)
    assert {"ct_abdomen_lowres", "prostate_aniso", "isbi_2d", "multichannel_mixed_norm"} <= names


def _cube_fingerprint(side: int) -> dict:
    intensities = {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0, "percentile_00_5": 0.0,
                   "percentile_99_5": 1.0, "std": 1.0}
    return {"foreground_intensity_properties_per_channel": {"0": intensities},
            "median_relative_size_after_cropping": 1.0, "shapes_after_crop": [[side] * 3] * 3,
            "spacings": [[1.0, 1.0, 1.0]] * 3}


@pytest.mark.parametrize("side, expected", [
    # 128³ patch on a 220³ median covers < 25 %: the lowres search runs, but its median image stays
    # more than half as large as fullres's, so upstream drops it
    (220, "its median image (8160805 voxels) would be more than half as large as 3d_fullres's (10648000 voxels)"),
    # 128³ on 150³ covers 62 %: no lowres search at all
    (150, "the 3d_fullres patch already covers 62 % of the median image"),
])
def test_dropped_lowres_message_names_the_right_reason(side, expected, caplog):  # §3.7
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 10,
                    "file_ending": ".nii.gz"}
    with caplog.at_level(logging.INFO, logger="pnnunet.planning.planner"):
        plans = plan_experiment(_cube_fingerprint(side), dataset_json, "Dataset001_X", "SimpleITKIO")
    assert "3d_lowres" not in plans["configurations"]
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [128, 128, 128]
    dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no 3d_lowres")]
    assert len(dropped) == 1 and expected in dropped[0], dropped
    assert "less than half" not in caplog.text
