"""Training losses: soft Dice + cross-entropy with deep supervision (reference §5.5, §5.6, §12.9).

Label mode (upstream ``DC_and_CE_loss``): logits ``(B, C, *spatial)``, targets ``(B, 1, *spatial)``
integer label maps. Region mode (upstream ``DC_and_BCE_loss``): logits ``(B, R, *spatial)``, targets
``(B, R, *spatial)`` binary region maps (plus a last ignore channel with an ignore label), made by
:func:`pnnunet.training.regions.segmentation_to_regions`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from pnnunet.runtime.distributed import all_gather_sum

DICE_SMOOTH = 1e-5
DICE_CLAMP = 1e-8


def _float32(x: paddle.Tensor) -> paddle.Tensor:
    return x if x.dtype == paddle.float32 else x.astype("float32")


def _one_hot(target: paddle.Tensor, num_classes: int) -> paddle.Tensor:
    """(B, 1, *spatial) label map → (B, C, *spatial) float32 one-hot (no gradient)."""
    shape = [1, num_classes] + [1] * (target.ndim - 2)
    classes = paddle.arange(num_classes, dtype="int64").reshape(shape)
    one_hot = (target.astype("int64") == classes).astype("float32")
    one_hot.stop_gradient = True
    return one_hot


class SoftDiceLoss(nn.Layer):
    """Negative soft Dice on softmax probabilities (upstream ``MemoryEfficientSoftDiceLoss``, §5.6).

    ``p = softmax(logits)``, ``y = one_hot(target)``, background channel dropped unless ``do_bg``;
    per sample and class ``I = Σ p·y·m``, ``P = Σ p·m``, ``G = Σ y·m`` over space (``m`` the loss
    mask, 1 if absent), also over the batch if ``batch_dice``;
    ``dc = (2I + s) / max(G + P + s, 1e-8)``, loss ``= -mean(dc)``. Everything in float32.

    Parameters
    ----------
    batch_dice : sum I, P, G over the batch before the ratio (plans' ``batch_dice``).
    do_bg : include the background channel (False in label mode, True in region mode).
    smooth : ``s``, 1e-5 in nnU-Net.
    nonlinearity : ``"softmax"`` (label mode) or ``"sigmoid"`` (region mode: ``p = sigmoid(logits)``
        and the target a (B, C, *spatial) binary map).
    ddp : data-parallel training (upstream's ``ddp``): with ``batch_dice`` the sums ``I, P, G`` are
        those of the global batch, gathered from all ranks in float32, so every rank's Dice term
        is the global-batch Dice; its gradient is scaled by the number of ranks so that after
        ``DataParallel``'s gradient average the step equals one process's on the global batch
        (what upstream's ``AllGatherGrad``, all-reducing the gradient in backward, achieves;
        here without a collective in the backward pass).
    """

    def __init__(self, batch_dice: bool = False, do_bg: bool = False, smooth: float = DICE_SMOOTH,
                 ddp: bool = False, nonlinearity: str = "softmax"):
        super().__init__()
        self.batch_dice, self.do_bg, self.smooth = bool(batch_dice), bool(do_bg), float(smooth)
        self.ddp = bool(ddp)
        if nonlinearity not in ("softmax", "sigmoid"):
            raise ValueError(f"nonlinearity must be 'softmax' or 'sigmoid', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity

    def forward(
        self, logits: paddle.Tensor, target: paddle.Tensor, loss_mask: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        """logits (B, C, *spatial); target (B, 1, *spatial) labels in [0, C) or a (B, C, *spatial)
        one-hot; loss_mask (B, 1, *spatial), 1 = annotated. Returns a scalar tensor."""
        probs = F.softmax(_float32(logits), axis=1) if self.nonlinearity == "softmax" else F.sigmoid(_float32(logits))
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        if list(target.shape) == list(logits.shape):
            y = target.astype("float32")
            y.stop_gradient = True
        else:
            y = _one_hot(target, logits.shape[1])
        if not self.do_bg:
            probs, y = probs[:, 1:], y[:, 1:]
        axes = list(range(2, logits.ndim))
        if loss_mask is None:
            intersect = paddle.sum(probs * y, axis=axes)
            sum_pred = paddle.sum(probs, axis=axes)
            sum_gt = paddle.sum(y, axis=axes)
        else:
            mask = loss_mask.astype("float32")
            intersect = paddle.sum(probs * y * mask, axis=axes)
            sum_pred = paddle.sum(probs * mask, axis=axes)
            sum_gt = paddle.sum(y * mask, axis=axes)
        if self.batch_dice:
            intersect, sum_pred, sum_gt = intersect.sum(axis=0), sum_pred.sum(axis=0), sum_gt.sum(axis=0)
        gathered = self.ddp and self.batch_dice
        if gathered:
            # value: the global sums; gradient: through this rank's own sums only
            intersect, sum_pred, sum_gt = (t + (all_gather_sum(t) - t.detach()) for t in (intersect, sum_pred, sum_gt))
        dc = (2.0 * intersect + self.smooth) / paddle.clip(sum_gt + sum_pred + self.smooth, min=DICE_CLAMP)
        loss = -dc.mean()
        if gathered:
            world = paddle.distributed.get_world_size()
            loss = loss + (world - 1) * (loss - loss.detach())  # same value, gradient x world
        return loss


class DCandCELoss(nn.Layer):
    """``weight_ce · CE + weight_dice · SoftDice`` (upstream ``DC_and_CE_loss``, §5.6).

    CE is the mean multi-class cross-entropy over (annotated) voxels, computed by
    ``F.cross_entropy(..., axis=1)`` on the logits. With ``ignore_label`` its voxels are left
    out of CE (``ignore_index``) and masked in Dice (their label replaced by 0 there); CE is
    skipped entirely when a batch has no annotated voxel.

    Parameters
    ----------
    batch_dice : see :class:`SoftDiceLoss`.
    ignore_label : integer label value to ignore, or None.
    weight_ce, weight_dice : term weights (1, 1 in nnU-Net); a zero weight skips the term.
    smooth : Dice smoothing.
    ddp : data-parallel training, see :class:`SoftDiceLoss`.
    """

    def __init__(
        self,
        batch_dice: bool = False,
        ignore_label: int | None = None,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
        smooth: float = DICE_SMOOTH,
        ddp: bool = False,
    ):
        super().__init__()
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.weight_ce, self.weight_dice = float(weight_ce), float(weight_dice)
        self.dice = SoftDiceLoss(batch_dice=batch_dice, do_bg=False, smooth=smooth, ddp=ddp)

    def forward(self, logits: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        """logits (B, C, *spatial); target (B, 1, *spatial) integer labels. Returns a scalar tensor."""
        if target.ndim != logits.ndim or target.shape[1] != 1:
            raise ValueError(
                f"target must be (B, 1, *spatial) for logits {list(logits.shape)}, got {list(target.shape)}"
            )
        target = target.astype("int64")
        has_annotation = True
        if self.ignore_label is not None:
            mask = target != self.ignore_label
            target_dice = paddle.where(mask, target, paddle.zeros_like(target))
            has_annotation = bool(mask.any())
            mask = mask.astype("float32")
        else:
            target_dice, mask = target, None
        loss = paddle.zeros([], dtype="float32")
        if self.weight_dice != 0:
            loss = loss + self.weight_dice * self.dice(logits, target_dice, loss_mask=mask)
        if self.weight_ce != 0 and has_annotation:
            ignore_index = -100 if self.ignore_label is None else self.ignore_label
            ce = F.cross_entropy(_float32(logits), target, ignore_index=ignore_index, axis=1)
            loss = loss + self.weight_ce * ce
        return loss


class DCandBCELoss(nn.Layer):
    """``weight_ce · BCE + weight_dice · SoftDice(sigmoid)`` (upstream ``DC_and_BCE_loss``, §5.6).

    Region mode: one sigmoid output per region, Dice with ``do_bg`` True. Without an ignore label
    the BCE is the mean over all ``B·R·voxels`` elements. With ``use_ignore_label`` the target's last
    channel marks ignored voxels; the Dice is masked with the annotated voxels and the BCE is
    ``Σ(bce · mask) / max(Σ mask, 1e-8)`` with the one-channel mask broadcast over the ``R``
    channels, i.e. ``R ×`` the mean over annotated elements, exactly as upstream computes it.

    Parameters
    ----------
    batch_dice : see :class:`SoftDiceLoss`.
    use_ignore_label : the target carries an ignore channel last.
    weight_ce, weight_dice : term weights (1, 1 in nnU-Net); a zero weight skips the term.
    smooth : Dice smoothing.
    ddp : data-parallel training, see :class:`SoftDiceLoss`.
    """

    def __init__(self, batch_dice: bool = False, use_ignore_label: bool = False, weight_ce: float = 1.0,
                 weight_dice: float = 1.0, smooth: float = DICE_SMOOTH, ddp: bool = False):
        super().__init__()
        self.use_ignore_label = bool(use_ignore_label)
        self.weight_ce, self.weight_dice = float(weight_ce), float(weight_dice)
        self.dice = SoftDiceLoss(batch_dice=batch_dice, do_bg=True, smooth=smooth, ddp=ddp, nonlinearity="sigmoid")

    def forward(self, logits: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        """logits (B, R, *spatial); target (B, R [+1 ignore channel], *spatial) of 0/1. Returns a scalar."""
        expected = logits.shape[1] + int(self.use_ignore_label)
        if target.ndim != logits.ndim or target.shape[1] != expected:
            raise ValueError(f"region target must be (B, {expected}, *spatial) for logits {list(logits.shape)}, "
                             f"got {list(target.shape)}")
        target = target.astype("float32")
        target.stop_gradient = True
        if self.use_ignore_label:
            mask = 1.0 - target[:, -1:]
            regions = target[:, :-1]
        else:
            mask, regions = None, target
        loss = paddle.zeros([], dtype="float32")
        if self.weight_dice != 0:
            loss = loss + self.weight_dice * self.dice(logits, regions, loss_mask=mask)
        if self.weight_ce != 0:
            bce = F.binary_cross_entropy_with_logits(_float32(logits), regions,
                                                     reduction="none" if mask is not None else "mean")
            if mask is not None:
                bce = (bce * mask).sum() / paddle.clip(mask.sum(), min=DICE_CLAMP)
            loss = loss + self.weight_ce * bce
        return loss


class DeepSupervisionLoss(nn.Layer):
    """``Σ_i w_i · loss(outputs[i], targets[i])``, terms with ``w_i == 0`` skipped (§5.5).

    Parameters
    ----------
    loss : a layer called as ``loss(output, target)``.
    weights : one weight per output, highest resolution first (see ``ds_weights``).
    """

    def __init__(self, loss: nn.Layer, weights: Sequence[float] | np.ndarray):
        super().__init__()
        self.loss = loss
        self.weights = tuple(float(w) for w in weights)
        if not any(w != 0 for w in self.weights):
            raise ValueError("at least one deep-supervision weight must be non-zero")

    def forward(self, outputs: Sequence[paddle.Tensor], targets: Sequence[paddle.Tensor]) -> paddle.Tensor:
        if not isinstance(outputs, (list, tuple)) or not isinstance(targets, (list, tuple)):
            raise TypeError("DeepSupervisionLoss expects lists of outputs and targets (deep supervision on)")
        if not (len(outputs) == len(targets) == len(self.weights)):
            raise ValueError(
                f"got {len(outputs)} outputs, {len(targets)} targets and {len(self.weights)} weights; they must match"
            )
        total = None
        for weight, output, target in zip(self.weights, outputs, targets):
            if weight != 0:
                term = weight * self.loss(output, target)
                total = term if total is None else total + term
        return total
