"""The bundled pretrained model (pnnunet/pretrained, ``pnnunet_predict -m pretrained:hippocampus``).

The mechanics are tested on a stand-in built here from the bundled plans (the real network, freshly
initialised): float16 storage and its float32 restore, the size limit, loading through ``-m``. The last
test needs the real weights (``benchmarks/bundle_pretrained_model.py`` puts them in) and is skipped
until they are there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import BUNDLED_SAMPLE

paddle = pytest.importorskip("paddle")

from pnnunet import pretrained
from pnnunet.cli.predict import main as predict_main
from pnnunet.errors import PnnunetError
from pnnunet.evaluation.report import evaluate_folder
from pnnunet.fileio import load_json
from pnnunet.inference.model_folder import load_model_folder
from pnnunet.plans import resolve_configuration
from pnnunet.runtime.architectures import build_network
from pnnunet.runtime.checkpoints import (inference_checkpoint, load_checkpoint, save_checkpoint,
                                         weights_as_float32)

NAME = "hippocampus"
BUNDLED = pretrained.model_dir(NAME)
CASE = "hippocampus_045"  # held out of the demo's training and in fold 0's validation split of the real model
MAX_BYTES = 12e6


def training_checkpoint(model_dir: Path) -> dict:
    """A checkpoint as pnnunet_train writes it (optimizer state included), of the plans in ``model_dir``,
    with freshly initialised float32 weights."""
    plans, dataset_json = load_json(model_dir / "plans.json"), load_json(model_dir / "dataset.json")
    paddle.seed(0)
    network = build_network(resolve_configuration(plans, "3d_fullres"), 1, len(dataset_json["labels"]))
    weights = {k: v.numpy() for k, v in network.state_dict().items()}
    velocity = {f"{k}|_velocity_0": np.zeros_like(w) for k, w in weights.items()}
    return {"network_weights": weights, "optimizer_state": velocity,
            "logging": {"loss": [1.0]}, "current_epoch": 20, "precision": "float32", "trainer_name":
            "pnnunetTrainer_20epochs", "inference_allowed_mirroring_axes": (0, 1, 2), "train_config": {},
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json}}


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> dict:
    """The bundled model folder twice under tmp: the float32 training checkpoint and its float16 bundle."""
    root = tmp_path_factory.mktemp("pretrained")
    out = {}
    ckpt = training_checkpoint(BUNDLED)
    for kind, payload in (("fp32", ckpt), ("fp16", inference_checkpoint(ckpt, "stand-in"))):
        model_dir = root / kind / pretrained.MODELS[NAME]
        (model_dir / "fold_0").mkdir(parents=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copyfile(BUNDLED / name, model_dir / name)
        save_checkpoint(model_dir / "fold_0" / "checkpoint_final.pdparams", payload)
        out[kind] = model_dir
    out["weights"] = ckpt["network_weights"]
    return out


def test_float16_storage_round_trip(standin):
    stored = load_checkpoint(standin["fp16"] / "fold_0" / "checkpoint_final.pdparams")
    assert stored["weights_dtype"] == "float16" and stored["inference_only"]
    assert "optimizer_state" not in stored and "logging" not in stored
    assert {np.asarray(v).dtype for v in stored["network_weights"].values()} == {np.dtype(np.float16)}
    restored = weights_as_float32(stored["network_weights"])
    assert restored.keys() == standin["weights"].keys()
    for k, w in standin["weights"].items():
        assert restored[k].dtype == np.float32
        np.testing.assert_allclose(restored[k], w, rtol=2 ** -10, atol=6e-8, err_msg=k)  # float16: 11-bit mantissa
    model = load_model_folder(standin["fp16"])
    assert all(w.dtype == np.float32 for w in model.folds[0].weights.values())
    assert model.folds[0].mirror_axes == (0, 1, 2) and model.trainer_name == "pnnunetTrainer_20epochs"


def test_float16_model_as_pretrained_weights_for_fine_tuning(standin):
    from pnnunet.training.pretrained import load_pretrained_weights

    weights = load_pretrained_weights(standin["fp16"] / "fold_0" / "checkpoint_final.pdparams").weights
    assert weights and not any("seg_layers" in k for k in weights)
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float32)}


def test_bundle_fits_the_size_limit(standin):
    size = sum(p.stat().st_size for p in standin["fp16"].rglob("*") if p.is_file())
    full = sum(p.stat().st_size for p in standin["fp32"].rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"{size / 1e6:.2f} MB"
    assert full > 3 * size  # float32 weights + optimizer state: the bundle is the compact form


def test_weights_beyond_float16_range_are_refused():
    with pytest.raises(PnnunetError, match="beyond float16's range"):
        inference_checkpoint({"network_weights": {"w": np.array([1.0, 7e4], np.float32)}}, "ckpt")
    kept = inference_checkpoint({"network_weights": {"n": np.array([3], np.int64)}}, "ckpt")["network_weights"]
    assert kept["n"].dtype == np.int64  # only float32 arrays are narrowed


def _predict(model: str, out: Path, tmp_path: Path, *extra: str) -> int:
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / f"{CASE}.nii.gz", inputs / f"{CASE}.nii.gz")
    return predict_main(["-i", str(inputs), "-o", str(out), "-m", model, "--fp32", "--no_pbar", "-npp", "0", "-nps",
                         "0", *extra])


def test_predict_m_pretrained_loads_the_float16_model(standin, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "ROOT", standin["fp16"].parents[1])
    assert _predict(f"pretrained:{NAME}", tmp_path / "p16", tmp_path, "--disable_tta") == 0
    assert _predict(str(standin["fp32"]), tmp_path / "p32", tmp_path, "--disable_tta") == 0
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / f"{CASE}.nii.gz"))) for d in ("p16", "p32"))
    assert a.shape == b.shape and np.mean(a == b) > 0.99  # float16-stored weights label like the float32 ones


def test_pretrained_name_errors(tmp_path, monkeypatch, capsys):
    assert _predict("pretrained:nosuch", tmp_path / "o", tmp_path) == 1
    assert "use one of pretrained:hippocampus" in capsys.readouterr().err
    empty = tmp_path / "root" / pretrained.MODELS[NAME]
    empty.mkdir(parents=True)
    monkeypatch.setattr(pretrained, "ROOT", tmp_path / "root")
    assert _predict(f"pretrained:{NAME}", tmp_path / "o", tmp_path) == 1
    err = capsys.readouterr().err
    assert "weights are not in this installation" in err and "bundle_pretrained_model.py" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not pretrained.is_bundled(NAME), reason="the real weights are not bundled yet: "
                    "python benchmarks/bundle_pretrained_model.py --fold_dir ... puts them in")
def test_bundled_model_segments_an_unseen_case(tmp_path):
    """The real weights: small, float16, and a foreground Dice >= 0.80 on a case the model never saw."""
    ckpt = BUNDLED / "fold_0" / "checkpoint_final.pdparams"
    assert ckpt.stat().st_size <= MAX_BYTES
    assert load_checkpoint(ckpt)["weights_dtype"] == "float16"
    assert _predict(f"pretrained:{NAME}", tmp_path / "pred", tmp_path) == 0
    summary = evaluate_folder(BUNDLED_SAMPLE / "labelsTs", tmp_path / "pred", BUNDLED / "dataset.json", chill=True)
    dice = summary["foreground_mean"]["Dice"]
    assert dice >= 0.80, json.dumps(summary["metric_per_case"], indent=1)
