"""Dice + CE loss and deep supervision against a numpy reference and upstream's numbers (§5.5, §5.6)."""

import numpy as np
import paddle
import pytest

from pnnunet.training.deep_supervision import downsample_seg_for_ds, ds_scales, ds_weights
from pnnunet.training.loss import DCandCELoss, DeepSupervisionLoss, SoftDiceLoss


def make_logits(shape, phase):
    k = np.arange(np.prod(shape))
    return (2.0 * np.sin(0.7 * k + phase)).reshape(shape).astype(np.float32)


def make_target(shape, n_classes):
    k = np.arange(np.prod(shape))
    t = ((k * 7 + k // 5) % n_classes).reshape(shape).astype(np.int64)
    t[1][t[1] == n_classes - 1] = 0  # the second sample lacks the last class
    return t


def with_ignore(target, ignore_label):
    t = target.copy()
    t.reshape(-1)[::4] = ignore_label
    return t


# ---- independent numpy reference, written from the formulas of §5.6 --------------------------------------
def np_dice_loss(logits, target, batch_dice, mask=None, smooth=1e-5):
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (target == np.arange(x.shape[1]).reshape([1, -1] + [1] * (x.ndim - 2))).astype(np.float64)
    m = np.ones_like(target, dtype=np.float64) if mask is None else mask.astype(np.float64)
    p, y = p[:, 1:], y[:, 1:]  # background excluded
    axes = tuple(range(2, x.ndim))
    inter, pred, gt = (p * y * m).sum(axes), (p * m).sum(axes), (y * m).sum(axes)
    if batch_dice:
        inter, pred, gt = inter.sum(0), pred.sum(0), gt.sum(0)
    return -np.mean((2 * inter + smooth) / np.maximum(gt + pred + smooth, 1e-8))


def np_ce(logits, target, ignore_label=None):
    x = logits.astype(np.float64)
    logp = x - x.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    keep = np.ones(target.shape, bool) if ignore_label is None else target != ignore_label
    nll = -np.take_along_axis(logp, np.where(keep, target, 0), axis=1)
    return nll[keep].mean()


def np_dc_ce(logits, target, batch_dice, ignore_label=None):
    if ignore_label is None:
        return np_ce(logits, target) + np_dice_loss(logits, target, batch_dice)
    mask = target != ignore_label
    dice = np_dice_loss(logits, np.where(mask, target, 0), batch_dice, mask)
    return dice + (np_ce(logits, target, ignore_label) if mask.any() else 0.0)


# ---- cases, with upstream's values ---------------------------------------------------------------------------
# Upstream values: nnunetv2 2.8.1 DC_and_CE_loss({'batch_dice': bd, 'smooth': 1e-5, 'do_bg': False, 'ddp': False},
# {}, weight_ce=1, weight_dice=1, ignore_label=..., dice_class=MemoryEfficientSoftDiceLoss) on the same arrays
# (torch CPU, float32), upstream venv, scratch script upstream_loss.py.
L3, T3 = make_logits((2, 3, 3, 4, 5), 0.3), make_target((2, 1, 3, 4, 5), 3)
L2, T2 = make_logits((2, 2, 6, 5), 1.1), make_target((2, 1, 6, 5), 2)
CASES = {  # name: (logits, target, batch_dice, ignore_label, upstream value)
    "3d": (L3, T3, False, None, 1.624090313911438),
    "3d_batch_dice": (L3, T3, True, None, 1.6085256338119507),
    "3d_ignore": (L3, with_ignore(T3, 3), False, 3, 1.6438835859298706),
    "3d_ignore_batch_dice": (L3, with_ignore(T3, 3), True, 3, 1.6279056072235107),
    "3d_all_ignored": (L3, np.full_like(T3, 3), False, 3, -1.0),
    "2d": (L2, T2, False, None, 1.1354371309280396),
    "2d_batch_dice": (L2, T2, True, None, 1.0866785049438477),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dc_and_ce_loss(name):
    logits, target, batch_dice, ignore_label, upstream = CASES[name]
    loss = DCandCELoss(batch_dice=batch_dice, ignore_label=ignore_label)
    value = float(loss(paddle.to_tensor(logits), paddle.to_tensor(target)))
    assert value == pytest.approx(np_dc_ce(logits, target, batch_dice, ignore_label), rel=2e-6, abs=1e-6)
    assert value == pytest.approx(upstream, rel=2e-6, abs=1e-6)


def test_parts_separately():
    # upstream's own parts on case "3d": l.ce(...) = 1.8708511590957642, l.dc(...) = -0.24676086008548737
    dice = float(SoftDiceLoss(batch_dice=False)(paddle.to_tensor(L3), paddle.to_tensor(T3)))
    assert dice == pytest.approx(np_dice_loss(L3, T3, False), rel=2e-6)
    assert dice == pytest.approx(-0.24676086008548737, rel=2e-6)
    ce = float(DCandCELoss(weight_dice=0)(paddle.to_tensor(L3), paddle.to_tensor(T3)))
    assert ce == pytest.approx(np_ce(L3, T3), rel=2e-6)
    assert ce == pytest.approx(1.8708511590957642, rel=2e-6)


def test_dice_accepts_one_hot_target_and_do_bg():
    y = (T3 == np.arange(3).reshape(1, 3, 1, 1, 1)).astype(np.float32)
    a = float(SoftDiceLoss()(paddle.to_tensor(L3), paddle.to_tensor(y)))
    assert a == pytest.approx(np_dice_loss(L3, T3, False), rel=2e-6)
    # do_bg=True on a perfect one-hot "prediction" (huge logits) gives dc ≈ 1 for every class
    perfect = paddle.to_tensor(100.0 * y)
    assert float(SoftDiceLoss(do_bg=True)(perfect, paddle.to_tensor(T3))) == pytest.approx(-1.0, abs=1e-6)


def test_ignore_label_gets_no_gradient():
    logits = paddle.to_tensor(L3, stop_gradient=False)
    target = with_ignore(T3, 3)
    DCandCELoss(ignore_label=3)(logits, paddle.to_tensor(target)).backward()
    grad = logits.grad.numpy()
    ignored = np.broadcast_to(target == 3, grad.shape)
    assert not grad[ignored].any() and grad[~ignored].any()


def test_deep_supervision_loss_equals_upstream():
    # Upstream: DeepSupervisionWrapper(DC_and_CE_loss(batch_dice=True, ...), weights [2/3, 1/3, 0]) on these
    # outputs, with targets made by torch interpolate(mode='nearest-exact') (as batchgeneratorsv2's
    # DownsampleSegForDSTransform) → 1.5847561359405518 (upstream_loss.py). The 0-weight output is NaN and must
    # be skipped.
    full = make_target((2, 1, 4, 8, 8), 3)
    outputs = [make_logits((2, 3, 4, 8, 8), 0.1), make_logits((2, 3, 2, 4, 4), 0.2),
               np.full((2, 3, 1, 2, 2), np.nan, np.float32)]
    scales = ds_scales([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
    targets = downsample_seg_for_ds(full, scales)
    weights = ds_weights(4)
    loss = DeepSupervisionLoss(DCandCELoss(batch_dice=True), weights)
    value = float(loss([paddle.to_tensor(o) for o in outputs], [paddle.to_tensor(t) for t in targets]))
    reference = sum(w * np_dc_ce(o, t, True) for w, o, t in zip(weights[:2], outputs[:2], targets[:2]))
    assert value == pytest.approx(reference, rel=2e-6)
    assert value == pytest.approx(1.5847561359405518, rel=2e-6)


def test_deep_supervision_loss_validation():
    with pytest.raises(ValueError):
        DeepSupervisionLoss(DCandCELoss(), [0.0, 0.0])
    loss = DeepSupervisionLoss(DCandCELoss(), [0.5, 0.5])
    x, t = paddle.to_tensor(L3), paddle.to_tensor(T3)
    with pytest.raises(ValueError):
        loss([x], [t])
    with pytest.raises(TypeError):
        loss(x, t)
