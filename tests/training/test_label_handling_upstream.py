"""Regions and the ignore label against upstream nnU-Net v2's numbers on fixed inputs (reference §1.4, §5.6).

Fixtures: tests/data/upstream_label_handling (made by benchmarks/upstream/make_label_fixtures.py with upstream's
venv; see its README).
"""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from pnnunet.dataset.labels import LabelInfo
from pnnunet.inference.export_prediction import probabilities_to_segmentation, sigmoid
from pnnunet.training.loss import DCandBCELoss, DCandCELoss, DeepSupervisionLoss
from pnnunet.training.regions import segmentation_to_regions
from pnnunet.training.trainer import pseudo_dice_counts

pytestmark = pytest.mark.upstream
DATA = Path(__file__).resolve().parents[1] / "data" / "upstream_label_handling"
EXP = json.loads((DATA / "expected.json").read_text())
X = dict(np.load(DATA / "inputs.npz"))
TARGETS = dict(np.load(DATA / "region_targets.npz"))
DATASET_JSON = {"labels": EXP["labels"], "regions_class_order": EXP["regions_class_order"]}
REGIONS = [tuple(r) if isinstance(r, list) else r for r in EXP["regions"]]
IGNORE = EXP["ignore_label"]


def _t(a):
    return paddle.to_tensor(a)


def test_label_info_matches_label_manager():
    info = LabelInfo.from_dataset_json(DATASET_JSON)
    lm = EXP["label_manager"]
    assert info.foreground_regions == [tuple(r) if isinstance(r, list) else r for r in lm["foreground_regions"]]
    assert info.all_labels == lm["all_labels"]
    assert info.num_segmentation_heads == lm["num_segmentation_heads"]
    assert info.ignore_label == IGNORE


@pytest.mark.parametrize("name,seg,ignore", [("plain", "seg", None), ("ignore", "seg_ignore", IGNORE),
                                             ("all_ignored", "seg_all_ignored", IGNORE)])
def test_region_targets_equal_upstream(name, seg, ignore):
    ours = segmentation_to_regions(X[seg], REGIONS, ignore)
    np.testing.assert_array_equal(ours.astype(bool), TARGETS[name])


@pytest.mark.parametrize("name", sorted(EXP["DC_and_CE_loss"]))
def test_dc_and_ce_loss_with_ignore_label_equals_upstream(name):
    expected = EXP["DC_and_CE_loss"][name]
    bd = name.endswith("bd1")
    ignore = None if name.startswith("plain") else IGNORE
    if name == "ignore_deep_supervision_bd1":
        loss = DeepSupervisionLoss(DCandCELoss(batch_dice=True, ignore_label=IGNORE), [2 / 3, 1 / 3])
        value = loss([_t(X["label_logits"]), _t(X["label_logits_ds1"])], [_t(X["seg_ignore"]), _t(X["seg_ignore_ds1"])])
    else:
        seg = "seg_all_ignored" if name == "all_ignored" else ("seg" if ignore is None else "seg_ignore")
        value = DCandCELoss(batch_dice=bd, ignore_label=ignore)(_t(X["label_logits"]), _t(X[seg]))
    assert float(value) == pytest.approx(expected, rel=2e-6, abs=1e-6)


def test_ce_is_skipped_without_annotated_voxel():
    # no annotated voxel: upstream's loss is the Dice term alone (-smooth/smooth = -1 per class)
    value = float(DCandCELoss(ignore_label=IGNORE)(_t(X["label_logits"]), _t(X["seg_all_ignored"])))
    assert value == pytest.approx(EXP["DC_and_CE_loss"]["all_ignored"], abs=1e-6)
    assert value == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(EXP["DC_and_BCE_loss"]))
def test_dc_and_bce_loss_equals_upstream(name):
    expected = EXP["DC_and_BCE_loss"][name]
    ignore = name.startswith("ignore")
    target = TARGETS["ignore" if ignore else "plain"].astype(np.float32)
    kwargs = {"batch_dice": name.endswith("bd1"), "use_ignore_label": ignore}
    if "noSmooth" in name:
        kwargs["smooth"] = 0.0
    if name == "ignore_bce_term_only":
        kwargs["weight_dice"] = 0.0
    value = float(DCandBCELoss(**kwargs)(_t(X["region_logits"]), _t(target)))
    assert value == pytest.approx(expected, rel=2e-6, abs=1e-6)


def test_masked_bce_is_r_times_the_annotated_mean():
    """Upstream's masked BCE sums R channels but divides by the one-channel mask count (reference §5.6)."""
    logits = X["region_logits"].astype(np.float64)
    target = TARGETS["ignore"]
    y, annotated = target[:, :-1].astype(np.float64), ~target[:, -1:]
    bce = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    mean_over_annotated = bce[np.broadcast_to(annotated, bce.shape)].mean()
    r = logits.shape[1]
    assert EXP["DC_and_BCE_loss"]["ignore_bce_term_only"] == pytest.approx(r * mean_over_annotated, rel=1e-6)


def test_region_bce_ignores_masked_voxels_in_gradient():
    logits = paddle.to_tensor(X["region_logits"], stop_gradient=False)
    target = TARGETS["ignore"]
    DCandBCELoss(use_ignore_label=True)(logits, _t(target.astype(np.float32))).backward()
    grad = logits.grad.numpy()
    ignored = np.broadcast_to(target[:, -1:], grad.shape)
    assert not grad[ignored].any() and grad[~ignored].any()


@pytest.mark.parametrize("name,target,ignore", [("regions", "plain", False), ("regions_ignore", "ignore", True)])
def test_region_pseudo_dice_counts_equal_upstream(name, target, ignore):
    labels = LabelInfo.from_dataset_json(DATASET_JSON if ignore else
                                         {**DATASET_JSON, "labels": {k: v for k, v in EXP["labels"].items()
                                                                     if k != "ignore"}})
    ours = pseudo_dice_counts(X["region_logits"], TARGETS[target].astype(np.int16), labels)
    assert ours.tolist() == EXP["pseudo_dice_counts"][name]


def test_regions_to_segmentation_equals_label_manager():
    info = LabelInfo.from_dataset_json(DATASET_JSON)
    ref = np.load(DATA / "regions_to_segmentation.npz")
    np.testing.assert_array_equal(probabilities_to_segmentation(sigmoid(X["region_logits"][0]), info),
                                  ref["from_logits_case0"])
    np.testing.assert_array_equal(probabilities_to_segmentation(sigmoid(X["region_logits"][1]), info),
                                  ref["from_probabilities_case1"])


@pytest.mark.parametrize("name,seg,ignore", [("labels", "seg", None), ("labels_ignore", "seg_ignore", IGNORE)])
def test_label_pseudo_dice_counts_with_ignore_equal_upstream(name, seg, ignore):
    labels = {"background": 0, "a": 1, "b": 2, "c": 3, **({"ignore": IGNORE} if ignore is not None else {})}
    info = LabelInfo.from_dataset_json({"labels": labels})
    assert pseudo_dice_counts(X["label_logits"], X[seg], info).tolist() == EXP["pseudo_dice_counts"][name]
