"""ResEnc M/L/XL planners against upstream's ``nnUNetPlannerResEnc{M,L,XL}`` (models_and_scale §3).

Expected plans in tests/planning/expected_resenc/ and network numbers in tests/data/upstream_resenc/,
both made by benchmarks/upstream/make_resenc_fixtures.py with upstream nnU-Net 2.8.1 from the same
fingerprints and dataset.json files fed to pnnunet here.
"""

import json
from pathlib import Path

import pytest

from pnnunet.defaults import DEFAULT_PLANS
from pnnunet.planning.compare import plan_differences
from pnnunet.planning.planner import PLANNER_ALIASES, PLANNER_PRESETS, plan_experiment
from pnnunet.planning.topology import resenc_conv_feature_map_size
from pnnunet.plans import resolve_configuration
from tests.conftest import REPO, UPSTREAM_HIPPO, require

HERE = Path(__file__).parent
EXPECTED = HERE / "expected_resenc"
SAMPLE_UPSTREAM = REPO / "tests" / "data" / "upstream_preprocessed_b2nd"  # upstream's fingerprint of the sample
HIPPO_DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                      "numTraining": 220, "file_ending": ".nii.gz"}
PLANNERS = {"nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM", "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL",
            "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL"}
COUNTS_FILE = REPO / "tests" / "data" / "upstream_resenc" / "param_counts.json"


def _inputs(scenario: str) -> tuple[dict, dict]:
    """(fingerprint, dataset.json) upstream was given for a scenario."""
    if scenario == "hippocampus_220":
        fp = json.loads((require(UPSTREAM_HIPPO) / "dataset_fingerprint.json").read_text())
        return fp, HIPPO_DATASET_JSON
    folder = SAMPLE_UPSTREAM if scenario == "hippocampus_sample" else HERE / "expected" / scenario
    return (json.loads((folder / "dataset_fingerprint.json").read_text()),
            json.loads((folder / "dataset.json").read_text()))


def _cases():
    return [pytest.param(d.name, f.stem, id=f"{d.name}-{f.stem}")
            for d in sorted(p for p in EXPECTED.iterdir() if p.is_dir()) for f in sorted(d.glob("*.json"))]


def _assert_equal_plans(scenario: str, plans_name: str):
    fingerprint, dataset_json = _inputs(scenario)
    upstream = json.loads((EXPECTED / scenario / f"{plans_name}.json").read_text())
    settings = PLANNER_PRESETS[PLANNERS[plans_name]]
    ours = plan_experiment(fingerprint, dataset_json, upstream["dataset_name"], upstream["image_reader_writer"],
                           settings)
    assert plan_differences(ours, upstream) == []
    assert ours["plans_name"] == upstream["plans_name"] == plans_name
    assert ours["experiment_planner_used"] == upstream["experiment_planner_used"]
    for name, cfg in upstream["configurations"].items():
        if "data_identifier" in cfg:  # 2d / 3d_fullres share the default plans' data (ours: pnnunetPlans_*)
            assert ours["configurations"][name]["data_identifier"] == \
                cfg["data_identifier"].replace("nnUNetPlans_", f"{DEFAULT_PLANS}_")
        if "architecture" in cfg:
            assert ours["configurations"][name]["architecture"]["network_class_name"].endswith(".ResidualEncoderUNet")
    return ours


@pytest.mark.upstream
@pytest.mark.parametrize("scenario, plans_name", _cases())
def test_resenc_plans_equal_upstream(scenario, plans_name):
    """Synthetic CT / MR / 2D scenarios, Hippocampus-220 and the bundled sample, M, L and XL."""
    _assert_equal_plans(scenario, plans_name)


def test_bundled_sample_resenc_m_plans_equal_upstream():
    """Runs without ../shared: upstream's fingerprint of the bundled sample is in tests/data."""
    ours = _assert_equal_plans("hippocampus_sample", "nnUNetResEncUNetMPlans")
    full = ours["configurations"]["3d_fullres"]
    assert full["architecture"]["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6]
    assert full["architecture"]["arch_kwargs"]["n_conv_per_stage_decoder"] == [1, 1, 1]


def test_fixtures_cover_ct_scenarios_and_all_sizes():
    names = {p.name for p in EXPECTED.iterdir() if p.is_dir()}
    assert {"ct_abdomen_lowres", "kits_like", "hippocampus_220", "hippocampus_sample", "isbi_2d"} <= names
    for scenario in ("ct_abdomen_lowres", "kits_like"):
        assert sorted(f.stem for f in (EXPECTED / scenario).glob("*.json")) == sorted(PLANNERS)


def test_presets_and_aliases():
    for size, vram in (("M", 8), ("L", 24), ("XL", 40)):
        s = PLANNER_PRESETS[PLANNER_ALIASES[f"ResEnc{size}"]]
        assert s is PLANNER_PRESETS[f"nnUNetPlannerResEnc{size}"]
        assert (s.plans_name, s.gpu_memory_target_gb, s.max_dataset_covered) == \
            (f"nnUNetResEncUNet{size}Plans", vram, 1.0)


def _counts():
    if not COUNTS_FILE.is_file():
        return []
    return json.loads(COUNTS_FILE.read_text())["counts"]


@pytest.mark.parametrize("case", _counts(), ids=lambda c: f"{c['scenario']}-{c['plans']}-{c['configuration']}")
def test_vram_estimate_equals_upstream(case):
    """resenc_conv_feature_map_size == upstream's ResidualEncoderUNet.compute_conv_feature_map_size."""
    plans = json.loads((EXPECTED / case["scenario"] / f"{case['plans']}.json").read_text())
    cfg = resolve_configuration(plans, case["configuration"])
    kw = cfg["architecture"]["arch_kwargs"]
    est = resenc_conv_feature_map_size(cfg["patch_size"], kw["features_per_stage"], kw["strides"],
                                       kw["n_blocks_per_stage"], kw["n_conv_per_stage_decoder"], case["num_classes"])
    assert est == case["conv_feature_map_size"]
