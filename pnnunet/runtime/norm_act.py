"""InstanceNorm → LeakyReLU as one autograd node that keeps only its output (training memory, issue 16).

In a ConvNormAct block Paddle's ``instance_norm`` keeps its input (the convolution output) for the
backward pass and the next convolution keeps the LeakyReLU output: two full activations per block.
One suffices: LeakyReLU with a positive slope is invertible, and an affine instance norm's output
determines its normalised input, ``x̂ = (y − β) / γ``, which with the per-sample-and-channel
reciprocal standard deviation is all the norm's backward needs. This node therefore saves ``z`` (the
block's output, which the next convolution keeps anyway), ``γ``, ``β`` and the reciprocal standard
deviations; the convolution output is freed as soon as the block's forward is done (a 32-channel CT
batch of 2 × 80 × 192 × 160 voxels: 629 MB per block).

The gradients are the instance norm's and LeakyReLU's own formulas, evaluated at the reconstructed
``x̂``: equal to Paddle's up to float32 rounding (``tests/runtime/test_norm_act.py``). Reconstruction
divides by ``γ``, which is ill-conditioned for a channel whose scale is near zero (a residual block's
zero-initialised norm, or one trained to zero): :func:`fused_applies` then says no and the block uses
Paddle's kernels, which keep the input.
"""

from __future__ import annotations

import math

import paddle
from paddle.nn import functional as F

# a |γ| below this makes x̂ = (y − β) / γ lose more than ~1e-4 of its precision: use the unfused path
MIN_ABS_SCALE = 1e-3


def _spatial_mean(x: paddle.Tensor) -> paddle.Tensor:
    """Mean over the spatial axes, kept as ``(N, C, 1, ...)``: the last axis first, then the rest, which
    keeps float32 accumulation error ~10x below one reduction over millions of voxels."""
    inner = x.mean(axis=-1, keepdim=True)
    return inner.mean(axis=list(range(2, x.ndim - 1)), keepdim=True) if x.ndim > 3 else inner


def _spatial_product_mean(a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
    """``mean(a * b)`` over the spatial axes, ``(N, C, 1, ...)``, as one batched dot product per
    sample and channel: no product tensor is allocated (on CPU a fresh activation-sized buffer costs
    more than the arithmetic: page faults), and BLAS accumulates in blocks (as accurate as
    :func:`_spatial_mean`); ``a.ndim >= 3``."""
    rows = a.shape[0] * a.shape[1] * a.shape[2]  # one dot per (sample, channel, first spatial index) ...
    dot = paddle.matmul(a.reshape([rows, 1, -1]), b.reshape([rows, -1, 1]))
    partial = dot.reshape(list(a.shape[:3]) + [1] * (a.ndim - 3))
    # ... then their mean: two short accumulations instead of one over millions of voxels
    return partial.mean(axis=2, keepdim=True) / float(math.prod(a.shape[3:]))


def _per_channel(v: paddle.Tensor, ndim: int) -> paddle.Tensor:
    return v.reshape([1, -1] + [1] * (ndim - 2))


def leaky_relu_grad(y: paddle.Tensor, dy: paddle.Tensor, slope: float) -> paddle.Tensor:
    """``dy`` where ``y >= 0``, else ``dy * slope``: Paddle's own ``leaky_relu_grad`` kernel (one pass)
    where it has one (Paddle 3), else the same formula in three."""
    grad_kernel = getattr(paddle._C_ops, "leaky_relu_grad", None)
    if grad_kernel is not None:
        return grad_kernel(y, dy, slope)
    return paddle.where(y >= 0, dy, dy * slope)


class _InstanceNormLeakyReLU(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x, scale, shift, eps, slope):
        with paddle.no_grad():  # a PyLayer's forward records autograd otherwise (its saves would be kept)
            mean = _spatial_mean(x)  # (N, C, 1, ...)
            z = x - mean
            rstd = paddle.rsqrt(_spatial_product_mean(z, z) + eps)
            z.multiply_(rstd * _per_channel(scale, x.ndim)).add_(_per_channel(shift, x.ndim))
            F.leaky_relu_(z, slope)
        ctx.slope = slope
        ctx.needs = (not scale.stop_gradient, not shift.stop_gradient)  # (saved tensors may not say it)
        ctx.save_for_backward(z, scale, shift, rstd)
        return z

    @staticmethod
    def backward(ctx, dz):
        z, scale, shift, rstd = ctx.saved_tensor()
        slope, ndim = ctx.slope, z.ndim
        g, b = _per_channel(scale, ndim), _per_channel(shift, ndim)
        # LeakyReLU: its gradient, and its input y (the norm's output), both from the output z
        dy = leaky_relu_grad(z, dz, slope)
        u = leaky_relu_grad(z, z, 1.0 / slope)  # y
        u.subtract_(b)  # u = y - shift = scale * x̂
        # instance norm: dx = rstd·γ·(dy − mean(dy) − x̂·mean(dy·x̂)); with x̂ = u / γ and t = mean(dy·u):
        # dx = rstd·γ·(dy − mean(dy)) − (rstd·t/γ)·u
        s1 = _spatial_mean(dy)
        t = _spatial_product_mean(dy, u)
        count = math.prod(z.shape[2:])
        dscale = None if not ctx.needs[0] else ((t / g) * count).sum(axis=0).reshape([-1])
        dshift = None if not ctx.needs[1] else (s1 * count).sum(axis=0).reshape([-1])
        dx = dy.subtract_(s1).multiply_(rstd * g)
        dx.subtract_(u.multiply_(rstd * t / g))
        return dx, dscale, dshift


def fused_applies(x: paddle.Tensor, norm) -> bool:
    """Whether :func:`instance_norm_leaky_relu` may replace ``norm`` followed by LeakyReLU on ``x``:
    dynamic graph with grad recording, CPU float32 input, an affine norm whose scales are all at
    least :data:`MIN_ABS_SCALE` away from zero."""
    if not (paddle.in_dynamic_mode() and paddle.is_grad_enabled()):  # first: static graphs have no place
        return False
    scale, shift = getattr(norm, "scale", None), getattr(norm, "bias", None)
    if scale is None or shift is None or x.dtype != paddle.float32 or not x.place.is_cpu_place():
        return False
    return float(scale.detach().abs().min()) >= MIN_ABS_SCALE  # detached: nothing recorded, nothing saved


def instance_norm_leaky_relu(x: paddle.Tensor, scale: paddle.Tensor, shift: paddle.Tensor, eps: float,
                             slope: float) -> paddle.Tensor:
    """``leaky_relu(instance_norm(x, scale, shift, eps), slope)`` whose autograd keeps only the output
    (module doc); ``slope > 0``."""
    if not slope > 0:
        raise ValueError(f"the output determines the gradient only for a positive slope, got {slope}")
    return _InstanceNormLeakyReLU.apply(x, scale, shift, eps, slope)
