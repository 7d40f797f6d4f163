"""End to end with nnU-Net v2's label features on the bundled sample (tiny plans, one short fold): a region
dataset (``{"hippocampus": [1, 2], "posterior": 2}`` with ``regions_class_order``) and an ignore-label dataset
(some label slices set to the ignore value): plan, train, validate, find_best_config, predict, evaluate
(reference §1.4, §5.6, §7.6, §8.1–8.4; issue 12)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.sparse_annotation import sparsify
from pnnunet.cli.evaluate import main as evaluate
from pnnunet.cli.find_best_config import main as find_best_config
from pnnunet.cli.plan_and_preprocess import main as plan_and_preprocess
from pnnunet.cli.predict import main as predict
from pnnunet.cli.train import main as train
from tests.e2e_workspace import run_main, sample_dataset

pytestmark = pytest.mark.e2e
pytest.importorskip("paddle")

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007"]
TEST_CASES = ["hippocampus_045"]
PLANS = "pnnunetTinyPlans"
DATASETS = {
    "regions": ("Dataset911_HippoRegions", {"background": 0, "hippocampus": [1, 2], "posterior": 2}, [1, 2]),
    "ignore": ("Dataset912_HippoIgnore", {"background": 0, "Anterior": 1, "Posterior": 2, "ignore": 3}, None),
}


def _sparse_label(ignore: int):
    def write(src: Path, dst: Path) -> None:
        img = sitk.ReadImage(str(src))
        out = sitk.GetImageFromArray(sparsify(sitk.GetArrayFromImage(img), ignore))
        out.CopyInformation(img)
        sitk.WriteImage(out, str(dst))
    return write


def _make_raw(ws: Path, kind: str) -> str:
    name, labels, order = DATASETS[kind]
    sample_dataset(ws, name, labels, CASES, TEST_CASES,
                   write_label=_sparse_label(labels["ignore"]) if kind == "ignore" else shutil.copyfile,
                   **({"regions_class_order": order} if order is not None else {}))
    return name


def _seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module", params=sorted(DATASETS))
def run(request, tmp_path_factory) -> tuple[str, Path, str]:
    """The whole chain for one dataset; returns (kind, workspace, dataset name)."""
    kind = request.param
    ws = tmp_path_factory.mktemp(f"e2e_{kind}")
    t0 = time.perf_counter()
    name = _make_raw(ws, kind)
    did = name[7:10]
    # regions: a second configuration, so that find_best_config also ensembles region probabilities
    configs = ["3d_fullres", "2d"] if kind == "regions" else ["3d_fullres"]
    assert run_main(ws, plan_and_preprocess, "-d", did, "-pl", "tiny", "-c", *configs, "-np", "1", "--no_pbar") == 0
    for config in configs:
        assert run_main(ws, train, config, "0", "-d", did, "-p", PLANS, "--epochs", "1", "--iterations_per_epoch",
                     "2", "--val_iterations_per_epoch", "1", "--num_workers", "0", "-device", "cpu", "--no_pbar",
                     "--npz") == 0
    assert run_main(ws, find_best_config, "-d", did, "-c", *configs, "-p", PLANS, "-f", "0", "-np", "1") == 0
    assert run_main(ws, predict, "-i", str(ws / "raw" / name / "imagesTs"), "-o", str(ws / "pred"), "-d", did,
                 "-c", "3d_fullres", "-p", PLANS, "-f", "0", "--save_probabilities", "--disable_tta", "-npp", "0",
                 "-nps", "0", "-device", "cpu", "--no_pbar") == 0
    assert run_main(ws, evaluate, "-ref", str(ws / "raw" / name / "labelsTs"), "-pred", str(ws / "pred"), "-d", did,
                 "-np", "1") == 0
    print(f"{kind}: whole chain in {time.perf_counter() - t0:.1f} s")
    return kind, ws, name


def test_chain_outputs_label_maps_with_the_right_values(run):
    kind, ws, name = run
    model = ws / "res" / name / f"pnnunetTrainer__{PLANS}__3d_fullres"
    validation = model / "fold_0" / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    keys = {"regions": {"(1, 2)", "2"}, "ignore": {"1", "2"}}[kind]
    assert set(summary["mean"]) == keys  # evaluated on regions (unions) / on labels
    val_cases = [Path(c["prediction_file"]).name for c in summary["metric_per_case"]]
    assert val_cases
    for f in val_cases:
        assert set(np.unique(_seg(validation / f))) <= {0, 1, 2}  # never the ignore label, only painted labels
    # validation probabilities: one channel per region (no background) / per label (with background)
    probs = np.load(validation / f"{Path(val_cases[0]).name[:-7]}.npz")["probabilities"]
    assert probs.shape[0] == {"regions": 2, "ignore": 3}[kind]
    info = json.loads((ws / "res" / name / "inference_instructions.json").read_text())
    assert info["best_model_or_ensemble"]["selected_model_or_models"][0]["configuration"] in ("3d_fullres", "2d")
    if kind == "regions":  # the pair ensemble of the region models: averaged sigmoids, painted, evaluated on regions
        ensemble = ws / "res" / name / "ensembles" / f"ensemble___pnnunetTrainer__{PLANS}__3d_fullres___" \
                                                   f"pnnunetTrainer__{PLANS}__2d___0"
        ens_summary = json.loads((ensemble / "summary.json").read_text())
        assert set(ens_summary["mean"]) == keys
        for f in val_cases:
            assert set(np.unique(_seg(ensemble / f))) <= {0, 1, 2}
    for case in TEST_CASES:
        seg = _seg(ws / "pred" / f"{case}.nii.gz")
        ref = _seg(ws / "raw" / name / "labelsTs" / f"{case}.nii.gz")
        assert seg.shape == ref.shape and seg.dtype == np.uint8
        assert set(np.unique(seg)) <= {0, 1, 2}
        p = np.load(ws / "pred" / f"{case}.npz")["probabilities"]
        assert p.shape == (probs.shape[0], *seg.shape)
        if kind == "regions":  # painting regions_class_order [1, 2] for sigmoid > 0.5 in order
            expected = np.zeros(seg.shape, np.uint8)
            expected[p[0] > 0.5] = 1
            expected[p[1] > 0.5] = 2
        else:
            expected = np.argmax(p, axis=0)
        assert (seg == expected).mean() > 0.999  # float32 probabilities vs the exporter's own rounding
    evaluated = json.loads((ws / "pred" / "summary.json").read_text())
    assert set(evaluated["mean"]) == keys and len(evaluated["metric_per_case"]) == len(TEST_CASES)


@pytest.mark.parametrize("run", ["ignore"], indirect=True)  # the ignore-label dataset only
def test_ignore_voxels_are_excluded_from_the_validation_metrics(run):
    kind, ws, name = run
    assert kind == "ignore"
    validation = ws / "res" / name / f"pnnunetTrainer__{PLANS}__3d_fullres" / "fold_0" / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    gt = ws / "pre" / name / "gt_segmentations"
    for entry in summary["metric_per_case"]:
        ref = _seg(gt / Path(entry["reference_file"]).name)
        annotated = int(np.count_nonzero(ref != 3))
        m = entry["metrics"]["1"]
        assert m["TP"] + m["FP"] + m["FN"] + m["TN"] == annotated < ref.size
