"""End to end: ``pnnunet_predict`` on the bundled sample's imagesTs with tiny models trained in the fixture
(reference §7, §8.2–8.4, DESIGN contract "pnnunet_predict without -c follows find_best_config")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import BUNDLED_SAMPLE
from tests.inference.test_predictor import DATASET, PLANS, make_trained_workspace

pytestmark = pytest.mark.e2e
pytest.importorskip("paddle")

CASES = ("hippocampus_045", "hippocampus_049")
PP = {"postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
      "postprocessing_kwargs": [{"labels_or_regions": [1, 2]}]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e_predict")
    make_trained_workspace(root, trained=(("3d_fullres", (0,)), ("2d", (0,))))
    images = root / "imagesTs"
    images.mkdir()
    for case in CASES:  # challenge-style names, without _0000
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / f"{case}.nii.gz", images / f"{case}.nii.gz")
    return root


def _env(ws: Path) -> dict:
    return dict(os.environ, pnnunet_raw=str(ws / "raw"), pnnunet_preprocessed=str(ws / "pre"),
                pnnunet_results=str(ws / "res"))


def _predict(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pnnunet.cli.predict", "-i", str(ws / "imagesTs"), *args,
                           "--no_pbar"], env=_env(ws), capture_output=True, text=True, check=False)


def _seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_without_c_uses_the_only_trained_model(workspace):
    out = _predict(workspace, "-o", str(workspace / "never"))
    assert out.returncode == 1
    assert "several trained models" in out.stderr and "Traceback" not in out.stderr
    assert not (workspace / "never").exists()
    model_2d = workspace / "res" / DATASET / f"pnnunetTrainer__{PLANS}__2d"
    hidden = model_2d.with_name("hidden_2d")
    model_2d.rename(hidden)
    try:
        out = _predict(workspace, "-o", str(workspace / "pred_only"), "-npp", "0", "-nps", "0")
    finally:
        hidden.rename(model_2d)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"using the only trained model, pnnunetTrainer__{PLANS}__3d_fullres" in out.stdout
    assert sorted(p.name for p in (workspace / "pred_only").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]


def test_predict_with_c_and_bad_input(workspace):
    out = _predict(workspace, "-o", str(workspace / "pred_3d"), "-c", "3d_fullres", "-p", PLANS,
                   "--save_probabilities", "-npp", "1", "-nps", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "predicted 2 of 2 cases" in out.stdout
    for case in CASES:
        pred = sitk.ReadImage(str(workspace / "pred_3d" / f"{case}.nii.gz"))
        img = sitk.ReadImage(str(BUNDLED_SAMPLE / "imagesTs" / f"{case}.nii.gz"))
        assert (pred.GetSize(), pred.GetSpacing(), pred.GetOrigin(), pred.GetDirection()) == \
               (img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    # another configuration into the same folder: refused, nothing mixed
    out = _predict(workspace, "-o", str(workspace / "pred_3d"), "-c", "2d", "-p", PLANS, "--continue")
    assert out.returncode == 1 and "other settings" in out.stderr and "Traceback" not in out.stderr
    # a configuration that was not trained (no cascade for this dataset) and a missing input folder:
    # one-paragraph errors
    out = _predict(workspace, "-o", str(workspace / "x"), "-c", "3d_cascade_fullres", "-p", PLANS)
    assert out.returncode == 1 and "3d_cascade_fullres" in out.stderr and "Traceback" not in out.stderr
    assert not (workspace / "x").exists()
    out = subprocess.run([sys.executable, "-m", "pnnunet.cli.predict", "-i", str(workspace / "nope"), "-o",
                          str(workspace / "x"), "-c", "3d_fullres", "-p", PLANS], env=_env(workspace),
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "input folder not found" in out.stderr and "Traceback" not in out.stderr


def test_follows_inference_instructions_ensemble_with_postprocessing(workspace):
    """An ensemble chosen by find_best_config: members predicted with probabilities, averaged, postprocessed.
    Checked against the same steps run one by one (predict -c each, ensemble_folders, postprocessing)."""
    from pnnunet.inference.ensemble import ensemble_folders
    from pnnunet.postprocessing.apply import apply_postprocessing_to_folder

    results = workspace / "res" / DATASET
    pp_file = results / "postprocessing.json"
    pp_file.write_text(json.dumps(PP))
    info = {"folds": [0], "dataset_name_or_id": DATASET, "best_model_or_ensemble": {
        "postprocessing_file": str(pp_file), "some_plans_file": "unused",
        "selected_model_or_models": [
            {"configuration": "3d_fullres", "trainer": "pnnunetTrainer", "plans_identifier": PLANS},
            {"configuration": "2d", "trainer": "pnnunetTrainer", "plans_identifier": PLANS}]}}
    (results / "inference_instructions.json").write_text(json.dumps(info))
    try:
        out = _predict(workspace, "-o", str(workspace / "pred_best"), "-npp", "0", "-nps", "0")
    finally:
        (results / "inference_instructions.json").unlink()
    assert out.returncode == 0, out.stderr[-3000:]
    assert "following" in out.stdout and "ensembled 3d_fullres + 2d, postprocessed" in out.stdout
    best = workspace / "pred_best"
    assert sorted(p.name for p in best.iterdir() if p.name.startswith(".")) == []  # temporaries removed
    assert json.loads((best / "predict_args.json").read_text())["configuration"] == "3d_fullres + 2d"

    manual = workspace / "manual"
    for config in ("3d_fullres", "2d"):
        done = _predict(workspace, "-o", str(manual / config), "-c", config, "-p", PLANS, "--save_probabilities",
                        "-npp", "0", "-nps", "0")
        assert done.returncode == 0, done.stderr[-3000:]
    ensemble_folders([manual / "3d_fullres", manual / "2d"], manual / "ens", num_processes=1)
    apply_postprocessing_to_folder(manual / "ens", manual / "pp", PP, num_processes=1)
    for case in CASES:
        np.testing.assert_array_equal(_seg(best / f"{case}.nii.gz"), _seg(manual / "pp" / f"{case}.nii.gz"))


def test_parts_in_concurrent_processes_equal_one_run(workspace):
    """-num_parts 2: two processes at once into one folder give exactly the files and voxels of one run."""
    images = workspace / "imagesTs4"
    images.mkdir()
    cases = sorted(p.name for p in (BUNDLED_SAMPLE / "imagesTs").glob("*.nii.gz"))
    assert len(cases) == 4
    for name in cases:
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / name, images / name)
    common = ["-i", str(images), "-c", "3d_fullres", "-p", PLANS, "-npp", "0", "-nps", "0", "--no_pbar"]
    one = subprocess.run([sys.executable, "-m", "pnnunet.cli.predict", *common, "-o", str(workspace / "one")],
                         env=_env(workspace), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    parts = [subprocess.Popen([sys.executable, "-m", "pnnunet.cli.predict", *common, "-o", str(workspace / "parts"),
                               "-num_parts", "2", "-part_id", str(k)], env=_env(workspace),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in parts]
    assert [p.returncode for p in parts] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "predicted 2 of 2 cases" in outputs[0][0] and "predicted 2 of 2 cases" in outputs[1][0]
    files = sorted(p.name for p in (workspace / "one").iterdir())
    assert files == sorted(p.name for p in (workspace / "parts").iterdir())
    assert [f for f in files if f.endswith(".nii.gz")] == cases
    for name in cases:
        assert np.array_equal(_seg(workspace / "one" / name), _seg(workspace / "parts" / name)), name
    bad = _predict(workspace, "-o", str(workspace / "bad_part"), "-c", "3d_fullres", "-p", PLANS, "-num_parts", "2",
                   "-part_id", "2")
    assert bad.returncode == 1 and "part_id must be in 0 .. num_parts-1" in bad.stderr
    assert not (workspace / "bad_part").exists()
