"""Region-based training steps and the named trainer variants (reference §1.4, §5.5, §5.6, issue 12)."""

from pathlib import Path

import numpy as np
import pytest

from pnnunet.runtime import checkpoints as ck
from pnnunet.training.augmentation import validation_transforms
from pnnunet.training.config import UPSTREAM_EPOCHS, UPSTREAM_EPOCHS_NO_MIRRORING, make_train_config, trainer_overrides
from pnnunet.training.deep_supervision import downsample_seg_for_ds, ds_scales
from pnnunet.training.loss import DCandBCELoss, DCandCELoss
from pnnunet.training.regions import segmentation_to_regions
from pnnunet.training.trainer import Trainer, TrainingJob
from tests.training.synthetic import DATASET_JSON, PATCH, STRIDES, tiny_plans

REGION_JSON = {**DATASET_JSON, "labels": {"background": 0, "hippocampus": [1, 2], "posterior": 2},
               "regions_class_order": [1, 2]}
REGION_IGNORE_JSON = {**REGION_JSON, "labels": {**REGION_JSON["labels"], "ignore": 3}}


def _trainer(tmp: Path, dataset_json: dict, trainer: str = "pnnunetTrainer", batch_size: int = 2) -> Trainer:
    cfg = make_train_config(trainer, num_workers=0)
    job = TrainingJob(Path(tmp) / "pre" / "Dataset999_Tiny", Path(tmp) / "res", tiny_plans(batch_size), "3d_fullres",
                      0, dataset_json, trainer, cfg, "cpu", progress_bar=False)
    return Trainer(job)


def _region_batch(rng, regions, ignore=None, deep_supervision=True, batch_size=2):
    seg = rng.integers(0, 3 if ignore is None else 4, size=(batch_size, 1, *PATCH)).astype(np.int16)
    target = segmentation_to_regions(seg, regions, ignore)
    scales = ds_scales(STRIDES) if deep_supervision else [[1.0, 1.0, 1.0]]
    return {"data": rng.normal(size=(batch_size, 1, *PATCH)).astype(np.float32),
            "target": downsample_seg_for_ds(target, scales)}


def test_upstream_variant_names_are_overrides():
    assert trainer_overrides("nnUNetTrainer_onlyMirror01") == {"only_mirror_01": True}
    assert trainer_overrides("nnUNetTrainerNoDeepSupervision") == {"deep_supervision": False}
    assert trainer_overrides("nnUNetTrainerDiceCELoss_noSmooth") == {"dice_smooth": 0.0}
    assert trainer_overrides("nnUNetTrainer_probabilisticOversampling") == {
        "oversampling": "probabilistic_batch_fraction"}
    assert trainer_overrides("nnUNetTrainer_probabilisticOversampling_010") == {
        "oversampling": "probabilistic", "oversample_foreground": 0.10}
    assert trainer_overrides("nnUNetTrainer_1epoch") == {"num_epochs": 1}
    for n in UPSTREAM_EPOCHS:
        assert trainer_overrides(f"nnUNetTrainer_{n}epochs") == {"num_epochs": n}
    for n in UPSTREAM_EPOCHS_NO_MIRRORING:  # e.g. TotalSegmentator's nnUNetTrainer_4000epochs_NoMirroring
        assert trainer_overrides(f"nnUNetTrainer_{n}epochs_NoMirroring") == {"num_epochs": n, "mirroring": False}
    assert trainer_overrides("pnnunetTrainer_30epochs_NoMirroring") == {"num_epochs": 30, "mirroring": False}


@pytest.mark.parametrize("trainer,axes", [("pnnunetTrainer", [0, 1, 2]), ("nnUNetTrainer_onlyMirror01", [0, 1]),
                                          ("nnUNetTrainerNoMirroring", []),
                                          ("nnUNetTrainer_4000epochs_NoMirroring", [])])
def test_mirror_axes_of_the_variant_are_recorded_in_the_checkpoint(tmp_path, trainer, axes):
    t = _trainer(tmp_path, DATASET_JSON, trainer)
    assert t.mirror_axes == axes
    import paddle

    with paddle.utils.unique_name.guard():
        t.build()
    t._save("checkpoint_final")
    state = ck.load_checkpoint(ck.checkpoint_path(t.job.fold_dir, "checkpoint_final"))
    assert state["inference_allowed_mirroring_axes"] == axes  # what prediction reads (model_folder.py)
    assert state["trainer_name"] == trainer


def test_only_mirror_01_in_2d_is_axis_0(tmp_path):
    t = _trainer(tmp_path, DATASET_JSON, "nnUNetTrainer_onlyMirror01")
    c3 = tiny_plans()["configurations"]["3d_fullres"]
    arch = {**c3["architecture"]["arch_kwargs"], "conv_op": "paddle.nn.Conv2D",
            "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]]}
    c2 = {**c3, "data_identifier": "tiny_2d", "patch_size": [12, 8], "spacing": [1.0, 1.0],
          "architecture": {**c3["architecture"], "arch_kwargs": arch}}
    t.plan = type(t.plan).from_plans({**tiny_plans(), "configurations": {"2d": c2}}, "2d")
    assert t.mirror_axes == [0]


def test_probabilistic_oversampling_fraction(tmp_path):
    # upstream: the fraction the default rule forces for the plan's batch size (bs 2 -> 0.5), per sample
    assert _trainer(tmp_path, DATASET_JSON, "nnUNetTrainer_probabilisticOversampling").oversample == 0.5
    assert _trainer(tmp_path, DATASET_JSON, "nnUNetTrainer_probabilisticOversampling_033").oversample == 0.33
    assert _trainer(tmp_path, DATASET_JSON, "pnnunetTrainer").oversample == 0.33


@pytest.mark.parametrize("dataset_json,ignore", [(REGION_JSON, None), (REGION_IGNORE_JSON, 3)])
def test_region_training_steps(tmp_path, dataset_json, ignore):
    import paddle

    t = _trainer(tmp_path, dataset_json)
    assert t.num_heads == 2 and t.evaluated_classes == [(1, 2), 2]
    with paddle.utils.unique_name.guard():
        paddle.seed(0)
        t.build()
    assert isinstance(t.loss.loss, DCandBCELoss) and t.loss.loss.use_ignore_label == (ignore is not None)
    rng = np.random.default_rng(0)
    batch = _region_batch(rng, [(1, 2), 2], ignore)
    losses = [t.train_step(batch) for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    t.network.eval()
    with paddle.no_grad():
        val_loss, stats = t._val_step(batch)
    assert np.isfinite(val_loss) and stats.shape == (2, 3)
    voxels = np.prod(PATCH) * 2
    annotated = voxels if ignore is None else int(np.sum(batch["target"][0][:, -1] == 0))
    tp, fp, fn = stats.T
    assert np.all(tp + fn == [int(np.sum(batch["target"][0][:, r][batch["target"][0][:, -1] == 0]))
                              if ignore is not None else int(np.sum(batch["target"][0][:, r])) for r in range(2)])
    assert np.all(tp + fp + fn <= annotated)


def test_no_deep_supervision_and_no_smooth_variants_train(tmp_path):
    import paddle

    t = _trainer(tmp_path, DATASET_JSON, "nnUNetTrainerNoDeepSupervision")
    with paddle.utils.unique_name.guard():
        t.build()
    assert t.loss.weights == (1.0,)
    rng = np.random.default_rng(1)
    seg = rng.integers(0, 3, size=(2, 1, *PATCH)).astype(np.int16)
    assert np.isfinite(t.train_step({"data": rng.normal(size=(2, 1, *PATCH)).astype(np.float32), "target": [seg]}))
    t2 = _trainer(tmp_path / "b", DATASET_JSON, "nnUNetTrainerDiceCELoss_noSmooth")
    with paddle.utils.unique_name.guard():
        t2.build()
    assert isinstance(t2.loss.loss, DCandCELoss) and t2.loss.loss.dice.smooth == 0.0
    assert len(t2.loss.weights) == len(STRIDES) - 1


def test_validation_transforms_make_region_targets_after_the_label_tail():
    rng = np.random.default_rng(2)
    seg = rng.integers(-1, 4, size=(2, 1, *PATCH)).astype(np.int16)  # -1: outside the image
    out = validation_transforms(ds_scales(STRIDES), regions=[(1, 2), 2], ignore_label=3)(
        data=np.zeros((2, 1, *PATCH), np.float32), seg=seg.copy())
    target = out["target"]
    assert [t.shape for t in target] == [(2, 3, *PATCH), (2, 3, 4, 6, 4)]
    full = target[0]
    np.testing.assert_array_equal(full[:, 0], np.isin(seg[:, 0], [1, 2]))
    np.testing.assert_array_equal(full[:, 1], seg[:, 0] == 2)
    np.testing.assert_array_equal(full[:, 2], seg[:, 0] == 3)  # ignore channel last; -1 became background
