"""Reference numbers of upstream nnU-Net v2 for region-based training and the ignore label.

Run with the upstream venv (nnunetv2 + torch), never with pnnunet's:

    /work/venvs/upstream/bin/python benchmarks/upstream/make_label_fixtures.py --out tests/data/upstream_label_handling

Writes ``inputs.npz`` (the fixed logits and label maps, made here with numpy) and ``expected.json``
(upstream's values on them): ``DC_and_CE_loss`` with an ignore label (incl. a batch without any
annotated voxel and the deep-supervision wrapper), ``DC_and_BCE_loss`` on regions with and without
an ignore label (batch Dice on/off, smooth 0 as ``nnUNetTrainerDiceCELoss_noSmooth``), the region
targets of ``ConvertSegmentationToRegionsTransform``, the pseudo-Dice counts of
``nnUNetTrainer.validation_step`` (regions, ignore) and ``LabelManager``'s regions → segmentation.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
from pathlib import Path

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss, get_tp_fp_fn_tn
from nnunetv2.utilities.label_handling.label_handling import LabelManager

REGION_LABELS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3, "ignore": 4}
REGIONS_CLASS_ORDER = [1, 2, 3]
REGIONS = [(1, 2, 3), (2, 3), 3]
IGNORE = 4


def make_inputs(rs: np.random.RandomState) -> dict:
    seg = rs.randint(0, 4, size=(2, 1, 4, 6, 5)).astype(np.int64)  # labels 0..3
    seg_ignore = seg.copy()
    seg_ignore[rs.uniform(size=seg.shape) < 0.3] = IGNORE
    return {
        "label_logits": rs.normal(0, 2, size=(2, 4, 4, 6, 5)).astype(np.float32),
        "region_logits": rs.normal(0, 2, size=(2, 3, 4, 6, 5)).astype(np.float32),
        "seg": seg,
        "seg_ignore": seg_ignore,
        "seg_all_ignored": np.full_like(seg, IGNORE),
        # deep supervision: a second, half-size output and its target
        "label_logits_ds1": rs.normal(0, 2, size=(2, 4, 2, 3, 3)).astype(np.float32),
        "seg_ignore_ds1": seg_ignore[:, :, 1::2, 1::2, ::2][:, :, :2, :3, :3].copy(),
    }


def region_target(seg: np.ndarray, ignore: bool) -> torch.Tensor:
    t = ConvertSegmentationToRegionsTransform(list(REGIONS) + ([IGNORE] if ignore else []), channel_in_seg=0)
    return torch.stack([t._apply_to_segmentation(torch.from_numpy(s)) for s in seg])  # bool (B, R[+1], ...)


def dc_ce(batch_dice: bool, ignore_label, smooth=1e-5):
    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": smooth, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=ignore_label, dice_class=MemoryEfficientSoftDiceLoss)


def dc_bce(batch_dice: bool, use_ignore: bool, smooth=1e-5):
    return DC_and_BCE_loss({}, {"batch_dice": batch_dice, "do_bg": True, "smooth": smooth, "ddp": False},
                           use_ignore_label=use_ignore, dice_class=MemoryEfficientSoftDiceLoss)


def pseudo_dice_counts(logits: torch.Tensor, target: torch.Tensor, ignore: bool) -> list:
    """nnUNetTrainer.validation_step, region branch."""
    pred = (torch.sigmoid(logits) > 0.5).long()
    if ignore:
        mask = ~target[:, -1:]
        target = target[:, :-1]
    else:
        mask = None
    tp, fp, fn, _ = get_tp_fp_fn_tn(pred, target.long(), axes=[0, 2, 3, 4], mask=mask)
    return [[int(a), int(b), int(c)] for a, b, c in zip(tp, fp, fn)]


def label_pseudo_dice_counts(logits: torch.Tensor, target: torch.Tensor, ignore_label) -> list:
    """nnUNetTrainer.validation_step, label branch (argmax, one-hot, ignore voxels masked, background dropped)."""
    seg = logits.argmax(1)[:, None]
    onehot = torch.zeros(logits.shape, dtype=torch.float32).scatter_(1, seg, 1)
    target = target.clone()
    mask = None
    if ignore_label is not None:
        mask = (target != ignore_label).float()
        target[target == ignore_label] = 0
    tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=[0, 2, 3, 4], mask=mask)
    return [[int(a), int(b), int(c)] for a, b, c in list(zip(tp, fp, fn))[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x = make_inputs(np.random.RandomState(20261202))
    t = {k: torch.from_numpy(v) for k, v in x.items()}
    exp: dict = {"made_with": {p: md.version(p) for p in ("nnunetv2", "torch", "batchgeneratorsv2", "numpy")},
                 "date": datetime.date.today().isoformat(), "regions": [list(r) if isinstance(r, tuple) else r
                                                                         for r in REGIONS],
                 "labels": REGION_LABELS, "regions_class_order": REGIONS_CLASS_ORDER, "ignore_label": IGNORE}
    with torch.no_grad():
        ce = {}
        for bd in (False, True):
            ce[f"ignore_bd{int(bd)}"] = float(dc_ce(bd, IGNORE)(t["label_logits"], t["seg_ignore"]))
            ce[f"plain_bd{int(bd)}"] = float(dc_ce(bd, None)(t["label_logits"], t["seg"]))
        ce["all_ignored"] = float(dc_ce(False, IGNORE)(t["label_logits"], t["seg_all_ignored"]))
        ds = DeepSupervisionWrapper(dc_ce(True, IGNORE), [2 / 3, 1 / 3])
        ce["ignore_deep_supervision_bd1"] = float(ds([t["label_logits"], t["label_logits_ds1"]],
                                                     [t["seg_ignore"], t["seg_ignore_ds1"]]))
        exp["DC_and_CE_loss"] = ce

        targets = {"plain": region_target(x["seg"], False), "ignore": region_target(x["seg_ignore"], True),
                   "all_ignored": region_target(x["seg_all_ignored"], True)}
        np.savez_compressed(args.out / "region_targets.npz", **{k: v.numpy() for k, v in targets.items()})
        bce = {}
        for bd in (False, True):
            bce[f"plain_bd{int(bd)}"] = float(dc_bce(bd, False)(t["region_logits"], targets["plain"]))
            bce[f"ignore_bd{int(bd)}"] = float(dc_bce(bd, True)(t["region_logits"], targets["ignore"]))
        bce["plain_noSmooth_bd0"] = float(dc_bce(False, False, smooth=0)(t["region_logits"], targets["plain"]))
        bce["ignore_noSmooth_bd1"] = float(dc_bce(True, True, smooth=0)(t["region_logits"], targets["ignore"]))
        # the masked BCE alone (weight_dice 0): R x the mean over annotated elements (reference §5.6)
        only = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                               weight_dice=0, use_ignore_label=True, dice_class=MemoryEfficientSoftDiceLoss)
        bce["ignore_bce_term_only"] = float(only(t["region_logits"], targets["ignore"]))
        exp["DC_and_BCE_loss"] = bce

        exp["pseudo_dice_counts"] = {
            "regions": pseudo_dice_counts(t["region_logits"], targets["plain"], False),
            "regions_ignore": pseudo_dice_counts(t["region_logits"], targets["ignore"], True),
            "labels_ignore": label_pseudo_dice_counts(t["label_logits"], t["seg_ignore"], IGNORE),
            "labels": label_pseudo_dice_counts(t["label_logits"], t["seg"], None)}

        lm = LabelManager(REGION_LABELS, REGIONS_CLASS_ORDER)
        seg_from_logits = lm.convert_logits_to_segmentation(t["region_logits"][0])
        seg_from_probs = lm.convert_probabilities_to_segmentation(torch.sigmoid(t["region_logits"][1]))
        np.savez_compressed(args.out / "regions_to_segmentation.npz",
                            from_logits_case0=np.asarray(seg_from_logits), from_probabilities_case1=np.asarray(
                                seg_from_probs))
        exp["label_manager"] = {"foreground_regions": [list(r) if isinstance(r, tuple) else r
                                                       for r in lm.foreground_regions],
                                "all_labels": [int(v) for v in lm.all_labels],
                                "num_segmentation_heads": int(lm.num_segmentation_heads)}
    np.savez_compressed(args.out / "inputs.npz", **x)
    (args.out / "expected.json").write_text(json.dumps(exp, indent=2) + "\n")
    print(json.dumps(exp, indent=2))


if __name__ == "__main__":
    main()
