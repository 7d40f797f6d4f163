"""Issue 14: a catalogue of bad inputs, each run through the real command (``main(argv)`` in this process).

Every row must end with exit code 1, a message on stderr that names the offending file or flag, no
traceback, and every file that existed before unchanged (content and mtime); output folders the
command was pointed at are not created. The rows use a tiny synthetic raw dataset and one tiny model
trained once per session (the bundled Hippocampus sample, tiny plans, one short epoch of fold 0).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import BUNDLED_SAMPLE
from tests.dataset.conftest import make_v2_dataset, tree_hashes, write_nifti

pytest.importorskip("paddle")

from pnnunet.cli import evaluate, find_best_config, plan_and_preprocess, predict, train  # noqa: E402

DATASET = "Dataset004_Hippocampus_sample"
PLANS = "pnnunetTinyPlans"
MODEL = f"pnnunetTrainer__{PLANS}__3d_fullres"
TEST_IMAGES = BUNDLED_SAMPLE / "imagesTs"


@dataclass
class Ctx:
    """One row's sandbox: ``root`` holds raw/, pre/, res/ (the roots) and inputs; ``env`` the roots' env vars."""

    root: Path
    trained: Path | None

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def model(self) -> Path:
        return self.root / "res" / DATASET / MODEL

    @property
    def pre(self) -> Path:
        return self.root / "pre" / DATASET

    def env(self) -> dict:
        return {"pnnunet_raw": str(self.raw), "pnnunet_preprocessed": str(self.root / "pre"),
                "pnnunet_results": str(self.root / "res")}

    def synthetic(self, **kw) -> Path:
        """``raw/Dataset001_Test``: 3 cases, 1 channel, labels 0..2 (tests/dataset/conftest.py)."""
        kw.setdefault("n_channels", 1)
        return make_v2_dataset(self.raw, name="Dataset001_Test", **kw)

    def images(self, names: dict[str, str] | None = None) -> Path:
        """``inputs/`` with sample test images ({source case: new file name})."""
        folder = self.root / "inputs"
        folder.mkdir(exist_ok=True)
        for src, dst in (names or {"hippocampus_045": "case_a_0000.nii.gz"}).items():
            shutil.copyfile(TEST_IMAGES / f"{src}.nii.gz", folder / dst)
        return folder


def _integrity(ctx: Ctx) -> list[str]:
    return ["-d", "1", "--verify_dataset_integrity", "--no_pp", "-np", "1", "--no_pbar"]


def _predict_args(ctx: Ctx, inputs: Path, *extra: str) -> list[str]:
    return ["-i", str(inputs), "-o", str(ctx.root / "out"), "-d", DATASET, "-c", "3d_fullres", "-p", PLANS,
            "-npp", "0", "-nps", "0", "--no_pbar", "-device", "cpu", *extra]


def _train_args(*extra: str) -> list[str]:
    return ["3d_fullres", "0", "-d", DATASET, "-p", PLANS, "-device", "cpu", "--no_pbar", *extra]


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d, indent=1))


# ---- the rows: setup(ctx) -> (command, argv, substrings the message must contain) ---------------------------
def label_without_image(ctx):
    ds = ctx.synthetic()
    (ds / "imagesTr" / "case_001_0000.nii.gz").unlink()
    return plan_and_preprocess.main, _integrity(ctx), ["labelsTr/case_001.nii.gz", "label file without image"]


def image_without_label(ctx):
    ds = ctx.synthetic()
    (ds / "labelsTr" / "case_002.nii.gz").unlink()
    return plan_and_preprocess.main, _integrity(ctx), ["labelsTr/case_002.nii.gz", "missing label file"]


def nan_inf_in_nifti(ctx):
    ds = ctx.synthetic()
    f = ds / "imagesTr" / "case_001_0000.nii.gz"
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
    img[0, 0, :3] = np.nan
    img[1, 1, 1] = np.inf
    write_nifti(f, img)
    return plan_and_preprocess.main, _integrity(ctx), ["case_001_0000.nii.gz", "3 NaN voxel(s) and 1 inf"]


def truncated_training_image(ctx):
    ds = ctx.synthetic()
    _cut(ds / "imagesTr" / "case_002_0000.nii.gz")
    return plan_and_preprocess.main, _integrity(ctx), ["case_002_0000.nii.gz", "truncated"]


def truncated_training_image_without_check(ctx):
    ds = ctx.synthetic()
    _cut(ds / "imagesTr" / "case_000_0000.nii.gz", keep=0.8)
    return (plan_and_preprocess.main, ["-d", "1", "-pl", "tiny", "-c", "3d_fullres", "-np", "1", "--no_pbar"],
            ["case_000_0000.nii.gz", "truncated"])


def file_ending_mismatch(ctx):
    ds = ctx.synthetic()
    _edit_json(ds / "dataset.json", lambda d: d.update(file_ending=".nrrd"))
    return plan_and_preprocess.main, _integrity(ctx), ["case_000_0000.nii.gz", "file_ending .nrrd"]


def channels_of_different_geometry(ctx):
    ds = ctx.synthetic(n_channels=2)
    write_nifti(ds / "imagesTr" / "case_001_0001.nii.gz", np.zeros((8, 10, 11), np.float32))
    return plan_and_preprocess.main, _integrity(ctx), ["case_001_0000.nii.gz", "different shapes"]


def label_value_not_declared(ctx):
    ds = ctx.synthetic()
    write_nifti(ds / "labelsTr" / "case_000.nii.gz", np.full((8, 10, 12), 7, np.uint8))
    return plan_and_preprocess.main, _integrity(ctx), ["labelsTr/case_000.nii.gz", "label values [7]"]


def labels_not_consecutive(ctx):
    ds = ctx.synthetic()
    _edit_json(ds / "dataset.json", lambda d: d.update(labels={"background": 0, "a": 1, "b": 3}))
    return plan_and_preprocess.main, _integrity(ctx), ["Dataset001_Test/dataset.json", "consecutive"]


def image_label_shape_mismatch(ctx):
    ds = ctx.synthetic()
    write_nifti(ds / "labelsTr" / "case_001.nii.gz", np.zeros((8, 10, 11), np.uint8))
    return plan_and_preprocess.main, _integrity(ctx), ["labelsTr/case_001.nii.gz", "differs from the image"]


def broken_dataset_json(ctx):
    ds = ctx.synthetic()
    (ds / "dataset.json").write_text((ds / "dataset.json").read_text().replace('"labels"', '"labels" "x"', 1))
    return plan_and_preprocess.main, _integrity(ctx), ["Dataset001_Test/dataset.json", "not valid JSON", "line"]


def bad_np_flag(ctx):
    ctx.synthetic()
    return plan_and_preprocess.main, ["-d", "1", "-np", "0", "--no_pp"], ["-np"]


def hand_edited_plans_patch_size(ctx):
    _edit_json(ctx.pre / f"{PLANS}.json",
               lambda d: d["configurations"]["3d_fullres"].update(patch_size=[24, 36, 30]))
    return train.main, _train_args(), [f"{PLANS}.json", "patch_size [24, 36, 30] is not divisible"]


def hand_edited_plans_spacing(ctx):
    _edit_json(ctx.pre / f"{PLANS}.json", lambda d: d["configurations"]["3d_fullres"].update(spacing=[1.0, 1.0]))
    return plan_and_preprocess.main_preprocess, ["-d", DATASET, "-plans_name", PLANS, "-c", "3d_fullres", "-np", "1"], \
        [f"{PLANS}.json", "spacing [1.0, 1.0] must have one entry per patch axis"]


def plans_missing(ctx):
    return train.main, ["3d_fullres", "0", "-d", DATASET, "-p", "nnUNetPlansX", "-device", "cpu"], \
        ["nnUNetPlansX.json", "not found"]


def unknown_configuration(ctx):
    return train.main, ["3d_fulres", "0", "-d", DATASET, "-p", PLANS, "-device", "cpu"], \
        [f"{PLANS}.json: configuration '3d_fulres'", "did you mean '3d_fullres'"]


def bad_fold_for_training(ctx):
    return train.main, ["3d_fullres", "zero", "-d", DATASET, "-p", PLANS, "-device", "cpu"], ["fold 'zero'"]


def save_every_zero(ctx):
    return train.main, _train_args("--save_every", "0"), ["--save_every 0", ">= 1"]


def epochs_zero(ctx):
    return train.main, _train_args("--epochs", "0"), ["--epochs 0", "--val"]


def num_workers_negative(ctx):
    return train.main, _train_args("--num_workers", "-1"), ["--num_workers -1"]


def n_proc_da_not_a_number(ctx):
    os.environ["pnnunet_n_proc_DA"] = "abc"
    return train.main, _train_args(), ["pnnunet_n_proc_DA='abc'", "not an integer"]


def val_step_size_zero(ctx):
    return train.main, _train_args("--val_step_size", "0"), ["--val_step_size"]


def corrupt_checkpoint_on_resume(ctx):
    fold = ctx.model / "fold_0"
    _cut(fold / "checkpoint_final.pdparams")
    return train.main, _train_args("--c"), ["checkpoint_final.pdparams", "cannot be loaded"]


def checkpoint_from_other_label_set(ctx):
    _edit_json(ctx.pre / "dataset.json", lambda d: d["labels"].update(third=3))
    return train.main, _train_args("--c", "--epochs", "1"), ["checkpoint_final.pdparams", "labels",
                                                              "another dataset or label set"]


def predict_truncated_input(ctx):
    inputs = ctx.images()
    _cut(inputs / "case_a_0000.nii.gz")
    return predict.main, _predict_args(ctx, inputs), ["case_a_0000.nii.gz", "truncated"]


def predict_channel_count(ctx):
    inputs = ctx.images({"hippocampus_045": "case_a_0000.nii.gz", "hippocampus_048": "case_a_0001.nii.gz"})
    return predict.main, _predict_args(ctx, inputs), ["case_a_0001.nii.gz", "expects 1"]


def predict_2d_image_into_3d_model(ctx):
    inputs = ctx.root / "inputs"
    inputs.mkdir()
    img = sitk.GetImageFromArray(np.zeros((40, 30), np.float32))
    sitk.WriteImage(img, str(inputs / "flat_0000.nii.gz"), True)
    return predict.main, _predict_args(ctx, inputs), ["flat_0000.nii.gz", "2D"]


def predict_file_ending(ctx):
    inputs = ctx.root / "inputs"
    inputs.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(TEST_IMAGES / "hippocampus_045.nii.gz")), str(inputs / "case_a_0000.nrrd"))
    return predict.main, _predict_args(ctx, inputs), ["case_a_0000.nrrd", "file_ending .nii.gz"]


def predict_empty_input(ctx):
    inputs = ctx.root / "inputs"
    inputs.mkdir()
    return predict.main, _predict_args(ctx, inputs), [str(inputs), "empty"]


def predict_fold_5(ctx):
    return predict.main, _predict_args(ctx, ctx.images(), "-f", "5"), ["fold 5"]


def predict_step_size_zero(ctx):
    return predict.main, _predict_args(ctx, ctx.images(), "-step_size", "0"), ["-step_size"]


def predict_step_size_above_one(ctx):
    return predict.main, _predict_args(ctx, ctx.images(), "-step_size", "1.5"), ["-step_size"]


def predict_corrupt_checkpoint(ctx):
    _cut(ctx.model / "fold_0" / "checkpoint_final.pdparams", keep=0.3)
    return predict.main, _predict_args(ctx, ctx.images()), ["checkpoint_final.pdparams"]


def predict_model_folder_without_plans(ctx):
    (ctx.model / "plans.json").unlink()
    return predict.main, _predict_args(ctx, ctx.images()), ["plans.json"]


def predict_unknown_checkpoint_name(ctx):
    return predict.main, _predict_args(ctx, ctx.images(), "-chk", "checkpoint_bestest"), ["checkpoint_bestest"]


def predict_npp_env_negative(ctx):
    os.environ["pnnunet_npp"] = "-2"
    args = [a for a in _predict_args(ctx, ctx.images()) if a not in ("-npp",)]
    args.remove("0")  # drop the value of -npp (the first "0")
    return predict.main, args, ["pnnunet_npp=-2", "at least 0"]


def predict_output_is_a_file(ctx):
    (ctx.root / "out").write_text("not a folder")
    return predict.main, _predict_args(ctx, ctx.images()), [str(ctx.root / "out")]


def find_best_config_nothing_trained(ctx):
    shutil.rmtree(ctx.model / "fold_0")
    return find_best_config.main, ["-d", DATASET, "-p", PLANS, "-c", "3d_fullres", "-f", "0", "-np", "1"], \
        ["fold_0"]


def evaluate_missing_prediction_folder(ctx):
    return evaluate.main, ["-ref", str(ctx.root / "pre" / DATASET / "gt_segmentations"), "-pred",
                           str(ctx.root / "nope"), "-djfile", str(ctx.pre / "dataset.json")], [str(ctx.root / "nope")]


ROWS_DATASET = [label_without_image, image_without_label, nan_inf_in_nifti, truncated_training_image,
                truncated_training_image_without_check, file_ending_mismatch, channels_of_different_geometry,
                label_value_not_declared, labels_not_consecutive, image_label_shape_mismatch, broken_dataset_json,
                bad_np_flag]
ROWS_TRAINED = [hand_edited_plans_patch_size, hand_edited_plans_spacing, plans_missing, unknown_configuration,
                bad_fold_for_training, save_every_zero, epochs_zero, num_workers_negative, n_proc_da_not_a_number,
                val_step_size_zero, corrupt_checkpoint_on_resume, checkpoint_from_other_label_set,
                predict_truncated_input, predict_channel_count, predict_2d_image_into_3d_model, predict_file_ending,
                predict_empty_input, predict_fold_5, predict_step_size_zero, predict_step_size_above_one,
                predict_corrupt_checkpoint, predict_model_folder_without_plans, predict_unknown_checkpoint_name,
                predict_npp_env_negative, predict_output_is_a_file,
                find_best_config_nothing_trained, evaluate_missing_prediction_folder]


CREATE_OUTPUT_FOLDER = [predict_truncated_input, predict_2d_image_into_3d_model]


def _run_row(row, ctx: Ctx, monkeypatch, capsys) -> str:
    for k, v in ctx.env().items():
        monkeypatch.setenv(k, v)
    for k in ("pnnunet_n_proc_DA", "pnnunet_npp", "pnnunet_nps"):  # recorded, then unset: restored afterwards
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    command, argv, expected = row(ctx)
    before = tree_hashes(ctx.root)
    out_existed = (ctx.root / "out").exists()
    capsys.readouterr()
    try:
        code = command(argv)
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    message = captured.err
    assert code == 1, f"{row.__name__}: exit code {code}\n{captured.out[-2000:]}\n{message[-2000:]}"
    assert "Traceback" not in message + captured.out, message
    for s in expected:
        assert s in message, f"{row.__name__}: {s!r} not in:\n{message}"
    after = tree_hashes(ctx.root)
    assert {k: v for k, v in after.items() if k in before} == before, f"{row.__name__}: modified a file"
    out = ctx.root / "out"
    if row in CREATE_OUTPUT_FOLDER:  # found while reading a case: the claimed folder holds no prediction
        assert not [p for p in out.iterdir() if p.name.endswith(".nii.gz")], f"{row.__name__}: wrote a prediction"
    else:
        assert out_existed or not out.exists(), f"{row.__name__}: created the output folder"
    return message


MESSAGES: dict[str, str] = {}


@pytest.mark.parametrize("row", ROWS_DATASET, ids=lambda r: r.__name__)
def test_bad_dataset_input(row, tmp_path, monkeypatch, capsys):
    MESSAGES[row.__name__] = _run_row(row, Ctx(tmp_path, None), monkeypatch, capsys)


@pytest.mark.parametrize("row", ROWS_TRAINED, ids=lambda r: r.__name__)
def test_bad_input_with_trained_model(row, trained, tmp_path, monkeypatch, capsys):
    root = tmp_path / "ws"
    shutil.copytree(trained, root)
    MESSAGES[row.__name__] = _run_row(row, Ctx(root, trained), monkeypatch, capsys)


def test_catalogue_has_at_least_30_kinds():
    assert len(ROWS_DATASET) + len(ROWS_TRAINED) >= 30
    if os.environ.get("PNNUNET_BAD_INPUT_TABLE"):  # write the table (input -> message) for the closing note
        Path(os.environ["PNNUNET_BAD_INPUT_TABLE"]).write_text(json.dumps(MESSAGES, indent=1))
