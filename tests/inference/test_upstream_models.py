"""nnU-Net v2 model folders predict as they are (issue 11), against upstream's own predictions.

The tiny models under tests/data/upstream_models were trained by upstream nnU-Net v2 and predicted
by it (TTA on), see the README there. pnnunet reads their ``.pth`` without torch, converts each once
and must give the same labels (>= 99.99 % of voxels) and logits/probabilities within 1e-3 relative.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pnnunet.defaults import CHECKPOINT_SUFFIX
from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json, write_json_atomic
from tests.conftest import BUNDLED_SAMPLE

pytest.importorskip("paddle")
from pnnunet.inference import pipeline, upstream_fold
from pnnunet.inference.model_folder import load_model_folder
from pnnunet.inference.predictor import Predictor
from pnnunet.runtime import upstream_weights

pytestmark = pytest.mark.upstream

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "upstream_models"
DATASET = "Dataset004_Hippocampus"
# fixture tag -> model folder (benchmarks/upstream/make_upstream_model_fixtures.py MODELS)
MODELS = {"3d_fullres": "nnUNetTrainer__nnUNetPlansTiny__3d_fullres", "2d": "nnUNetTrainer__nnUNetPlansTiny__2d",
          "resenc_3d_fullres": "nnUNetTrainer__nnUNetResEncUNetPlansTiny__3d_fullres",
          "cascade_3d_lowres": "nnUNetTrainer__nnUNetPlansTinyCascade__3d_lowres",
          "cascade_3d_cascade_fullres": "nnUNetTrainer__nnUNetPlansTinyCascade__3d_cascade_fullres"}
CONFIGS = tuple(tag for tag, name in MODELS.items() if (FIXTURES / DATASET / name).is_dir())
CASES = tuple(load_json(FIXTURES / "made_with.json")["test_cases"])
MIRROR_AXES = {"3d_fullres": (0, 1, 2), "2d": (0, 1), "resenc_3d_fullres": (0, 1, 2), "cascade_3d_lowres": (0, 1, 2),
               "cascade_3d_cascade_fullres": (0, 1, 2)}
# upstream's labels cover >= this foreground Dice against the sample's held-out labels (made_with.json "dice"):
# the models segment, so identical labels are not identical background
MIN_FOREGROUND_DICE = 0.3


def _model_name(tag: str) -> str:
    return MODELS[tag]


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max |theirs|."""
    return float(np.max(np.abs(ours.astype(np.float64) - theirs)) / np.max(np.abs(theirs)))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A copy of the fixture results folder (conversions are written beside the checkpoints)."""
    root = tmp_path_factory.mktemp("upstream_results")
    shutil.copytree(FIXTURES / DATASET, root / DATASET)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imagesTs")
    for case in CASES:
        shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / f"{case}.nii.gz", folder / f"{case}_0000.nii.gz")
    return folder


def _seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _foreground_dice(seg: np.ndarray, reference: np.ndarray) -> float:
    return float(2 * np.sum((seg > 0) & (reference > 0)) / (np.sum(seg > 0) + np.sum(reference > 0)))


@pytest.mark.e2e
@pytest.mark.parametrize("config", CONFIGS)
def test_predictions_equal_upstreams(results, images, tmp_path, config):
    model_dir = results / DATASET / _model_name(config)
    settings = pipeline.PredictionSettings(precision="fp32", save_probabilities=True, num_preprocessing_workers=0,
                                           num_export_workers=0, progress=False)
    # a cascade stage: pnnunet predicts its 3d_lowres stage first, upstream was given its own 3d_lowres predictions
    pipeline.predict_folder(images, tmp_path / "out", pipeline.ModelChoice((model_dir,)), settings)
    theirs = FIXTURES / "predictions" / config
    for case in CASES:
        ours_seg, their_seg = _seg(tmp_path / "out" / f"{case}.nii.gz"), _seg(theirs / f"{case}.nii.gz")
        assert np.mean(ours_seg == their_seg) >= 0.9999, case
        reference = _seg(BUNDLED_SAMPLE / "labelsTs" / f"{case}.nii.gz")
        for label in (1, 2):  # both labels predicted: the agreement is not agreement on background
            assert np.sum(their_seg == label) > 50 and np.sum(ours_seg == label) > 50, (case, label)
        assert _foreground_dice(ours_seg, reference) >= MIN_FOREGROUND_DICE, case
        if not (theirs / f"{case}.npz").is_file():
            continue  # probabilities kept for the first case only (fixture size)
        ours_p = np.load(tmp_path / "out" / f"{case}.npz")["probabilities"]
        their_p = np.load(theirs / f"{case}.npz")["probabilities"]
        assert ours_p.shape == their_p.shape
        assert their_p[1:].max() > 0.05  # foreground probabilities vary: the comparison means something
        assert relative_error(ours_p, their_p) <= 1e-3, case
    # converted once, beside the checkpoint, with its static graph
    converted = model_dir / "fold_0" / upstream_fold.CONVERTED_DIR / ("checkpoint_final" + CHECKPOINT_SUFFIX)
    assert converted.is_file() and (converted.parent / "inference" / "checkpoint_final").is_dir()


@pytest.mark.parametrize("config", CONFIGS)
def test_logits_of_upstreams_preprocessed_input(results, config):
    arrays = np.load(FIXTURES / "predictions" / "upstream_logits.npz")
    model = load_model_folder(results / DATASET / _model_name(config), [0])
    assert model.folds[0].mirror_axes == MIRROR_AXES[config]
    predictor = Predictor(model, precision="fp32", use_static_graph=False, progress=False)
    logits = predictor.predict_logits(arrays[f"{config}/data"])
    assert logits.shape == arrays[f"{config}/logits"].shape
    assert np.sum(arrays[f"{config}/logits"].argmax(0) > 0) > 100  # upstream's logits segment foreground
    # both sum the tiles in float16 (upstream's accumulators); a one-step float16 difference near the cascade
    # stage's largest logit (7.5) is 2e-3 of it (measured 1.9e-3; the others 5.5e-4 - 7.3e-4)
    tolerance = 2.5e-3 if config == "cascade_3d_cascade_fullres" else 1e-3
    assert relative_error(np.asarray(logits, np.float32), arrays[f"{config}/logits"]) <= tolerance
    if f"{config}/logits_fp32_accumulator" in arrays:  # upstream run with float32 accumulators (fixture README)
        exact = Predictor(model, precision="fp32", use_static_graph=False, progress=False,
                          accumulation_dtype="float32").predict_logits(arrays[f"{config}/data"])
        assert relative_error(np.asarray(exact), arrays[f"{config}/logits_fp32_accumulator"]) <= 1e-5


def _copy_model(tmp_path: Path, config: str = "3d_fullres", name: str | None = None) -> Path:
    dst = tmp_path / DATASET / (name or _model_name(config))
    shutil.copytree(FIXTURES / DATASET / _model_name(config), dst)
    return dst


def test_conversion_is_cached_and_redone_when_the_checkpoint_changes(tmp_path, monkeypatch):
    model_dir = _copy_model(tmp_path)
    first = load_model_folder(model_dir, [0])
    converted = first.folds[0].checkpoint_path
    assert converted.parent.name == upstream_fold.CONVERTED_DIR
    calls = []
    real = upstream_fold._convert
    monkeypatch.setattr(upstream_fold, "_convert", lambda *a: calls.append(a) or real(*a))
    again = load_model_folder(model_dir, [0])
    assert calls == [] and again.folds[0].checkpoint_path == converted
    for name, w in first.folds[0].weights.items():
        np.testing.assert_array_equal(again.folds[0].weights[name], w)
    (model_dir / "fold_0" / "checkpoint_final.pth").touch()  # a new checkpoint: converted again
    load_model_folder(model_dir, [0])
    assert len(calls) == 1


def test_read_only_model_folder_converts_into_the_cache_dir(tmp_path, monkeypatch, caplog):
    model_dir = _copy_model(tmp_path / "installed")
    real_save = upstream_fold.save_checkpoint

    def save(path, payload):
        if Path(path).is_relative_to(model_dir):
            raise PermissionError(13, "Permission denied")
        real_save(path, payload)

    monkeypatch.setattr(upstream_fold, "save_checkpoint", save)
    with caplog.at_level(logging.WARNING, logger="pnnunet"):
        model = load_model_folder(model_dir, [0])
    assert model.folds[0].checkpoint_path.name == "checkpoint_final.pth" and "--cache_dir" in caplog.text
    cache = tmp_path / "cache"
    model = load_model_folder(model_dir, [0], cache_dir=cache)
    expected = cache / DATASET / model_dir.name / "fold_0" / ("checkpoint_final" + CHECKPOINT_SUFFIX)
    assert model.folds[0].checkpoint_path == expected and expected.is_file()
    assert not (model_dir / "fold_0" / upstream_fold.CONVERTED_DIR).exists()


def test_weights_that_do_not_fit_the_plans_are_refused_and_nothing_is_written(tmp_path):
    model_dir = _copy_model(tmp_path)
    plans = load_json(model_dir / "plans.json")
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 32]
    write_json_atomic(model_dir / "plans.json", plans)
    before = sorted(p.relative_to(model_dir) for p in model_dir.rglob("*"))
    with pytest.raises(PnnunetError) as err:
        load_model_folder(model_dir, [0])
    msg = str(err.value)
    assert "checkpoint_final.pth" in msg and "do not fit" in msg and "[16, 8, 3, 3, 3] vs [32, 8, 3, 3, 3]" in msg
    assert sorted(p.relative_to(model_dir) for p in model_dir.rglob("*")) == before


def test_a_malicious_checkpoint_is_refused_and_nothing_is_written(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path),))

    model_dir = _copy_model(tmp_path)
    pth = model_dir / "fold_0" / "checkpoint_final.pth"
    with zipfile.ZipFile(pth, "w") as z:
        z.writestr("checkpoint_final/data.pkl", pickle.dumps({"network_weights": Evil()}, protocol=2))
    with pytest.raises(PnnunetError, match="refused to load") as err:
        load_model_folder(model_dir, [0])
    assert str(pth) in str(err.value) and "shutil.rmtree" in str(err.value)
    assert model_dir.is_dir() and not (model_dir / "fold_0" / upstream_fold.CONVERTED_DIR).exists()


def test_checkpoint_best_and_a_custom_trainer_name(tmp_path, caplog):
    model_dir = _copy_model(tmp_path, name="nnUNetTrainer_20x50__nnUNetPlansTiny__3d_fullres")
    (model_dir / "fold_0" / "checkpoint_final.pth").unlink()  # fold 0 counts as trained by its best checkpoint
    pth = model_dir / "fold_0" / "checkpoint_best.pth"
    if not pth.is_file():
        pytest.skip("upstream wrote no checkpoint_best.pth")
    # the trainer name a custom subclass would have written into the checkpoint
    with zipfile.ZipFile(pth) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("/data.pkl"))
    old, new = b"X\r\x00\x00\x00nnUNetTrainer", b"X\x13\x00\x00\x00nnUNetTrainer_20x50"
    assert entries[pkl].count(old) == 1
    entries[pkl] = entries[pkl].replace(old, new)
    with zipfile.ZipFile(pth, "w", zipfile.ZIP_STORED) as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with caplog.at_level(logging.INFO, logger="pnnunet"):
        model = load_model_folder(model_dir, None, checkpoint="checkpoint_best")
    assert model.trainer_name == "nnUNetTrainer_20x50" and model.checkpoint == "checkpoint_best"
    assert "not nnU-Net's own" in caplog.text


def test_mirroring_axes_none_means_no_tta(tmp_path, monkeypatch):
    model_dir = _copy_model(tmp_path)
    real = upstream_weights.read_torch_checkpoint  # the reader upstream_fold goes through
    monkeypatch.setattr(upstream_weights, "read_torch_checkpoint",
                        lambda p: {**real(p), "inference_allowed_mirroring_axes": None})
    assert load_model_folder(model_dir, [0]).folds[0].mirror_axes == ()


def test_dataset_and_configuration_find_upstream_folders(tmp_path):
    results = tmp_path / DATASET
    shutil.copytree(FIXTURES / DATASET, results)
    chosen = pipeline.choose_models(results, "2d", None, "nnUNetPlansTiny")
    assert chosen.model_dirs == (results / _model_name("2d"),)
    # without -c: upstream's inference_information.json, its postprocessing found in this results folder
    if not (results / "inference_information.json").is_file():
        pytest.skip("fixtures made without --validate: no inference_information.json")
    chosen = pipeline.choose_models(results)
    info = load_json(results / "inference_information.json")
    selected = info["best_model_or_ensemble"]["selected_model_or_models"][0]
    assert chosen.source == "inference_information.json"
    assert chosen.model_dirs == (results / _model_name(selected["configuration"]),)
    assert chosen.postprocessing_file.is_file() and chosen.postprocessing_file.is_relative_to(results)


@pytest.mark.e2e
def test_predict_from_modelfolder_cli(results, images, tmp_path, capsys):
    from pnnunet.cli import predict

    model_dir = results / DATASET / _model_name("2d")
    out = tmp_path / "cli_out"
    code = predict.main_from_modelfolder(["-i", str(images), "-o", str(out), "-m", str(model_dir), "-f", "0",
                                          "-chk", "checkpoint_final", "-npp", "0", "-nps", "0", "--fp32",
                                          "--disable_progress_bar"])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]


def test_cli_refuses_a_bad_checkpoint_and_writes_nothing(tmp_path, images, capsys):
    from pnnunet.cli import predict

    model_dir = _copy_model(tmp_path)
    pth = model_dir / "fold_0" / "checkpoint_final.pth"
    pth.write_bytes(b"not a checkpoint")
    out = tmp_path / "never"
    code = predict.main(["-i", str(images), "-o", str(out), "-m", str(model_dir), "--disable_progress_bar"])
    err = capsys.readouterr().err
    assert code == 1 and str(pth) in err and "not a PyTorch checkpoint" in err and "Traceback" not in err
    assert not out.exists() and not (model_dir / "fold_0" / upstream_fold.CONVERTED_DIR).exists()


def test_upstreams_postprocessing_pkl_is_read_without_running_code(tmp_path):
    import pickle

    from pnnunet.postprocessing.apply import load_postprocessing

    folder = FIXTURES / DATASET / _model_name("3d_fullres") / "crossval_results_folds_0"
    from_json = load_postprocessing(folder / "postprocessing.json")
    shutil.copy(folder / "postprocessing.pkl", tmp_path / "postprocessing.pkl")  # no JSON beside it
    assert load_postprocessing(tmp_path / "postprocessing.pkl") == from_json
    evil = tmp_path / "evil" / "postprocessing.pkl"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps(([shutil.rmtree], [{"path": str(tmp_path)}])))
    with pytest.raises(PnnunetError, match="shutil.rmtree") as err:
        load_postprocessing(evil)
    assert str(evil) in str(err.value) and tmp_path.is_dir()
