"""PlainConvUNet, nnU-Net v2's default network, in Paddle (reference §6.1, §12.3–12.5).

Built from a plan configuration's ``architecture.arch_kwargs`` (upstream v2 field names), so a
pnnunet plan and an upstream ``nnUNetPlans.json`` build the same network with the same number of
parameters.

Layout (parameter registration order equals upstream's, which keeps ``parameters()`` aligned):

- ``encoder.stages[s].convs[i]``: ConvNormAct blocks; the first block of stage ``s`` is strided
  by ``strides[s]``. Stage outputs are the skips; the last one is the bottleneck.
- ``decoder.stages[t]``: ConvNormAct blocks on ``concat([up, skip])`` (``2·F_skip → F_skip``; CPU training
  convolves the two parts without concatenating them, see ``StackedConvs.forward_concatenated``).
- ``decoder.transpconvs[t]``: transposed conv, kernel = stride = ``strides[n-1-t]``.
- ``decoder.seg_layers[t]``: 1×1 conv heads, one per decoder stage (always built, so weights load
  with deep supervision on or off).

Tensors are ``(B, C, X, Y)`` (2D) or ``(B, C, X, Y, Z)`` (3D).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import paddle
from paddle import nn
from paddle.nn import functional as F

from pnnunet.errors import PnnunetError
from pnnunet.runtime.norm_act import fused_applies, instance_norm_leaky_relu, leaky_relu_grad
from pnnunet.runtime.recompute import recomputed

LEAKY_SLOPE = 0.01
NORM_EPS = 1e-5

_CONV = {2: nn.Conv2D, 3: nn.Conv3D}
_CONV_T = {2: nn.Conv2DTranspose, 3: nn.Conv3DTranspose}
_NORM = {2: nn.InstanceNorm2D, 3: nn.InstanceNorm3D}


def conv_dim_from_op(conv_op: str) -> int:
    """Spatial dimensionality (2 or 3) named by a plan's ``conv_op`` string.

    Parameters
    ----------
    conv_op : e.g. ``"torch.nn.modules.conv.Conv3d"`` (upstream) or ``"paddle.nn.Conv2D"``.
        Anything containing ``Conv2d``/``Conv2D`` is 2D, ``Conv3d``/``Conv3D`` is 3D.
    """
    text = str(conv_op).lower()
    if "conv2d" in text:
        return 2
    if "conv3d" in text:
        return 3
    raise PnnunetError(f"unsupported conv_op {conv_op!r} in the plan: expected a 2D or 3D convolution (Conv2d/Conv3d)")


def he_std(weight_shape: Sequence[int], negative_slope: float = LEAKY_SLOPE) -> float:
    """Standard deviation of nnU-Net's He init for one conv weight (reference §6.1, §12.4).

    PyTorch ``kaiming_normal_(a=negative_slope)`` semantics: gain ``sqrt(2 / (1 + a²))`` over
    ``sqrt(fan_in)`` with ``fan_in = weight_shape[1] · prod(weight_shape[2:])``. For a transposed
    conv (weight ``[in, out, k...]``, same layout in Paddle and PyTorch) that is ``out · prod(k)``.
    """
    fan_in = int(weight_shape[1]) * int(np.prod(weight_shape[2:], dtype=np.int64))
    return math.sqrt(2.0 / (1.0 + negative_slope**2)) / math.sqrt(fan_in)


def _he_attrs(weight_shape: Sequence[int]) -> tuple[paddle.ParamAttr, paddle.ParamAttr]:
    weight = paddle.ParamAttr(initializer=nn.initializer.Normal(mean=0.0, std=he_std(weight_shape)))
    bias = paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
    return weight, bias


def _conv(dim: int, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int], bias: bool) -> nn.Layer:
    kernel, stride = list(kernel), list(stride)
    weight_attr, bias_attr = _he_attrs([c_out, c_in, *kernel])
    return _CONV[dim](
        c_in,
        c_out,
        kernel,
        stride=stride,
        padding=[(k - 1) // 2 for k in kernel],
        weight_attr=weight_attr,
        bias_attr=bias_attr if bias else False,
    )


class _LeakyReLUSavingOutput(paddle.autograd.PyLayer):
    """LeakyReLU whose backward reads its output instead of its input (training memory, issue 16).

    Paddle's ``leaky_relu`` keeps its input (the InstanceNorm output) for the backward pass, and the
    next convolution keeps the LeakyReLU output: two full activations per block, where one suffices,
    since for a positive slope ``out >= 0`` exactly where ``in >= 0`` (the only exception: negative
    denormals above ``-1e-43``, where ``slope * in`` rounds to -0). Backward is Paddle's own
    ``leaky_relu_grad`` kernel evaluated at the output, so the gradients are bit-identical, and the
    InstanceNorm output is freed as soon as the block's forward is done (a 32-channel CT patch of
    2 x 80 x 192 x 160 voxels: 629 MB per block).
    """

    @staticmethod
    def forward(ctx, x, slope):
        y = F.leaky_relu(x, slope)
        ctx.slope = slope
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensor()
        return leaky_relu_grad(y, dy, ctx.slope)


def leaky_relu_saving_output(x: paddle.Tensor, slope: float = LEAKY_SLOPE) -> paddle.Tensor:
    """``F.leaky_relu(x, slope)`` (slope > 0) whose autograd keeps only the output (see
    :class:`_LeakyReLUSavingOutput`)."""
    if not slope > 0:
        raise ValueError(f"the output determines the gradient only for a positive slope, got {slope}")
    return _LeakyReLUSavingOutput.apply(x, slope)


def leaky_relu_for_mode(y: paddle.Tensor, layer: nn.Layer) -> paddle.Tensor:
    """LeakyReLU(0.01) of ``y`` the cheapest way for the current mode (``layer`` is the fallback)."""
    if paddle.in_dynamic_mode() and not paddle.is_grad_enabled():
        # inference: in place, which saves allocating (and page-faulting) one more activation per
        # block: 10x faster on a 32-channel 64x160x192 CT patch (0.013 s instead of 0.126 s)
        return F.leaky_relu_(y, LEAKY_SLOPE)
    if paddle.in_dynamic_mode():
        # training: the input is not kept for the backward pass (one activation less per block)
        return leaky_relu_saving_output(y, LEAKY_SLOPE)
    return layer(y)


class ConvNorm(nn.Layer):
    """Conv (padding ``(k-1)//2``) → InstanceNorm (eps 1e-5, affine), no nonlinearity.

    ``zero_norm``: the norm's scale and bias start at 0 instead of 1 and 0 (a residual block's last norm).
    """

    def __init__(self, dim: int, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int], bias: bool,
                 zero_norm: bool = False):
        super().__init__()
        self.conv = _conv(dim, c_in, c_out, kernel, stride, bias)
        # Paddle's InstanceNorm has no running statistics: train and eval normalise alike (§12.3).
        attrs = {}
        if zero_norm:
            attrs = {name: paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
                     for name in ("weight_attr", "bias_attr")}
        self.norm = _NORM[dim](c_out, epsilon=NORM_EPS, **attrs)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.norm(self.conv(x))


class ConvNormAct(ConvNorm):
    """Conv (padding ``(k-1)//2``) → InstanceNorm (eps 1e-5, affine) → LeakyReLU(0.01) (§6.1)."""

    # CPU training memory (:func:`save_activation_memory`): norm + LeakyReLU as one node keeping only
    # its output, and ``forward_concatenated`` without the concatenation; off by default (on small
    # activations, e.g. Hippocampus, the fused node is slower than Paddle's kernels)
    save_memory = False

    def __init__(self, dim: int, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int], bias: bool):
        super().__init__(dim, c_in, c_out, kernel, stride, bias)
        self.nonlin = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self._norm_act(self.conv(x))

    def forward_concatenated(self, parts: Sequence[paddle.Tensor]) -> paddle.Tensor:
        """``forward(paddle.concat(parts, axis=1))``, without the concatenation where the convolution
        can do so (the oneDNN layers in CPU training: ``FastConv*.forward_concatenated``)."""
        conv_parts = getattr(self.conv, "forward_concatenated", None) if self.save_memory else None
        return self._norm_act(conv_parts(parts) if conv_parts is not None else self.conv(paddle.concat(parts, 1)))

    def _norm_act(self, y: paddle.Tensor) -> paddle.Tensor:
        if self.save_memory and fused_applies(y, self.norm):  # CPU training: the conv output is not kept
            return instance_norm_leaky_relu(y, self.norm.scale, self.norm.bias, self.norm._epsilon, LEAKY_SLOPE)
        return leaky_relu_for_mode(self.norm(y), self.nonlin)


class StackedConvs(nn.Layer):
    """``n`` ConvNormAct blocks; only the first one is strided.

    ``recompute`` (training memory, :func:`recompute_encoder_stages`): the stage's activations are not
    kept for the backward pass but computed again there (:func:`pnnunet.runtime.recompute.recomputed`)."""

    recompute = False

    def __init__(
        self, n: int, dim: int, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int], bias: bool
    ):
        super().__init__()
        blocks = [ConvNormAct(dim, c_in, c_out, kernel, stride, bias)]
        blocks += [ConvNormAct(dim, c_out, c_out, kernel, [1] * dim, bias) for _ in range(n - 1)]
        self.convs = nn.Sequential(*blocks)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.recompute:
            return recomputed(self.convs, x)
        return self.convs(x)

    def forward_concatenated(self, parts: Sequence[paddle.Tensor]) -> paddle.Tensor:
        """``forward(paddle.concat(parts, axis=1))``; the first block convolves the parts without
        concatenating them where it can (:meth:`ConvNormAct.forward_concatenated`)."""
        if self.recompute:
            return self.forward(paddle.concat(list(parts), axis=1))
        x = self.convs[0].forward_concatenated(parts)
        for block in list(self.convs)[1:]:
            x = block(x)
        return x


class Encoder(nn.Layer):
    """Strided-conv encoder; returns the output of every stage (skips, bottleneck last)."""

    def __init__(self, dim, input_channels, features, kernel_sizes, strides, n_conv_per_stage, bias):
        super().__init__()
        stages, c_in = [], input_channels
        for s, c_out in enumerate(features):
            stages.append(StackedConvs(n_conv_per_stage[s], dim, c_in, c_out, kernel_sizes[s], strides[s], bias))
            c_in = c_out
        self.stages = nn.LayerList(stages)

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Layer):
    """Transposed-conv decoder with a segmentation head per stage (§6.1)."""

    def __init__(self, dim, features, kernel_sizes, strides, n_conv_per_stage_decoder, num_classes, bias):
        super().__init__()
        n = len(features)
        stages, transpconvs, seg_layers = [], [], []
        for t in range(n - 1):
            below, skip = features[n - 1 - t], features[n - 2 - t]
            stride = list(strides[n - 1 - t])
            w_attr, b_attr = _he_attrs([below, skip, *stride])
            b_attr = b_attr if bias else False
            transpconvs.append(_CONV_T[dim](below, skip, stride, stride=stride, weight_attr=w_attr, bias_attr=b_attr))
            n_conv, kernel = n_conv_per_stage_decoder[t], kernel_sizes[n - 2 - t]
            stages.append(StackedConvs(n_conv, dim, 2 * skip, skip, kernel, [1] * dim, bias))
            seg_layers.append(_conv(dim, skip, num_classes, [1] * dim, [1] * dim, bias=True))
        # registration order stages → transpconvs → seg_layers, as upstream
        self.stages = nn.LayerList(stages)
        self.transpconvs = nn.LayerList(transpconvs)
        self.seg_layers = nn.LayerList(seg_layers)

    def forward(self, skips: list[paddle.Tensor], deep_supervision: bool) -> list[paddle.Tensor]:
        """Logits per decoder stage, highest resolution first (only the last head if DS is off)."""
        x, outputs = skips[-1], []
        last = len(self.stages) - 1
        for t, stage in enumerate(self.stages):
            x = stage.forward_concatenated([self.transpconvs[t](x), skips[-(t + 2)]])  # (concat([up, skip]))
            if deep_supervision or t == last:
                outputs.append(self.seg_layers[t](x))
        return outputs[::-1]


def _per_stage(value, n: int, name: str) -> list:
    """One entry per stage: a scalar is repeated (upstream accepts scalars too), a list is length-checked."""
    if isinstance(value, (int, float)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise PnnunetError(f"plan arch_kwargs {name!r} has {len(value)} entries, expected {n} (one per stage)")
    return value


def _per_axis(value, dim: int, name: str) -> list[int]:
    if isinstance(value, (int, float)):
        return [int(value)] * dim
    value = [int(v) for v in value]
    if len(value) != dim:
        raise PnnunetError(f"plan arch_kwargs {name!r} entry {value} does not have {dim} axes")
    return value


class UNet(nn.Layer):
    """An encoder (``encoder_class``) and the plain decoder; ``forward`` as nnU-Net's networks.

    ``n_per_stage`` is the encoder's depth per stage: convs (PlainConvUNet) or residual blocks
    (ResidualEncoderUNet); subclasses name it as upstream's keyword.
    """

    encoder_class: type = None  # (dim, input_channels, features, kernels, strides, n_per_stage, bias) -> Layer
    n_per_stage_name = "n_per_stage"

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_dim: int, kernel_sizes, strides,
                 n_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool, deep_supervision: bool):
        super().__init__()
        if conv_dim not in (2, 3):
            raise PnnunetError(f"conv_dim must be 2 or 3, got {conv_dim}")
        if n_stages < 2:
            raise PnnunetError(f"a U-Net needs at least 2 stages, the plan has n_stages={n_stages}")
        features = [int(f) for f in _per_stage(features_per_stage, n_stages, "features_per_stage")]
        kernels = [_per_axis(k, conv_dim, "kernel_sizes") for k in _per_stage(kernel_sizes, n_stages, "kernel_sizes")]
        strides_ = [_per_axis(s, conv_dim, "strides") for s in _per_stage(strides, n_stages, "strides")]
        n_enc = [int(v) for v in _per_stage(n_per_stage, n_stages, self.n_per_stage_name)]
        n_dec = [int(v) for v in _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")]
        self.conv_dim = conv_dim
        self.num_classes = num_classes
        self.strides = strides_
        self.deep_supervision = bool(deep_supervision)
        self.encoder = self.encoder_class(conv_dim, input_channels, features, kernels, strides_, n_enc, conv_bias)
        self.decoder = Decoder(conv_dim, features, kernels, strides_, n_dec, num_classes, conv_bias)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor | list[paddle.Tensor]:
        outputs = self.decoder(self.encoder(x), self.deep_supervision)
        return outputs if self.deep_supervision else outputs[0]


class PlainConvUNet(UNet):
    """nnU-Net's PlainConvUNet (reference §6.1).

    Parameters
    ----------
    input_channels : image channels (+ one-hot previous-stage labels for the cascade).
    n_stages, features_per_stage, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder,
    conv_bias : as in a v2 plan's ``arch_kwargs``; kernel_sizes / strides are per stage, per axis.
    conv_dim : 2 or 3 (see :func:`conv_dim_from_op`).
    num_classes : output channels (labels incl. background, or regions).
    deep_supervision : if True ``forward`` returns a list of ``n_stages - 1`` logits maps, highest
        resolution first; else only the full-resolution logits. Can be toggled at any time.

    Weights are He-initialised with an explicitly computed std (§12.4, :func:`he_std`), biases 0,
    InstanceNorm scale 1 / bias 0; the draw uses Paddle's global generator (``paddle.seed``).
    """

    encoder_class = Encoder
    n_per_stage_name = "n_conv_per_stage"

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: Sequence[int],
        conv_dim: int,
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_conv_per_stage: Sequence[int],
        num_classes: int,
        n_conv_per_stage_decoder: Sequence[int],
        conv_bias: bool = True,
        deep_supervision: bool = False,
    ):
        super().__init__(input_channels, n_stages, features_per_stage, conv_dim, kernel_sizes, strides,
                         n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, deep_supervision)


def recompute_encoder_stages(network: nn.Layer, stages: int) -> int:
    """Training memory: the ``stages`` highest-resolution encoder stages do not keep their activations
    for the backward pass; they are computed again there (same gradients bit for bit, one more forward
    pass of those stages). Their conv and LeakyReLU outputs are the largest activations of a 3D U-Net
    (a 2 x 80 x 192 x 160 CT batch with 32 features: 629 MB each), and their backward comes last, when
    the decoder's activations are freed, so the recomputation does not raise the peak (recomputing
    the decoder's highest-resolution stage would not lower it: its backward comes first, when
    everything else is still alive). Only :class:`StackedConvs` stages (PlainConvUNet) are switched;
    a ResidualEncoderUNet's stages keep their activations. 0 turns it off. Returns how many stages
    recompute."""
    count = 0
    for i, stage in enumerate(network.encoder.stages):
        if isinstance(stage, StackedConvs):
            stage.recompute = i < stages
            count += stage.recompute
    return count


# a training step whose largest activation (batch x first-stage features x patch voxels, float32) is at
# least this large saves activation memory by default (a CT 3d_lowres batch: 629 MB; Hippocampus: 92 MB)
SAVE_MEMORY_ACTIVATION_BYTES = 256 * 2**20


def saving_activation_memory_pays(batch_size: int, features_per_stage, patch_size: Sequence[int]) -> bool:
    """Whether CPU training should use :func:`save_activation_memory` for this plan: its largest
    activation reaches :data:`SAVE_MEMORY_ACTIVATION_BYTES` (the memory matters there; below it the
    fused node's extra passes cost more than they save). ``features_per_stage`` as in the plan's
    ``arch_kwargs``: per stage, or one number for all."""
    first = features_per_stage if isinstance(features_per_stage, (int, float)) else features_per_stage[0]
    voxels = int(np.prod([int(v) for v in patch_size], dtype=np.int64))
    return batch_size * int(first) * voxels * 4 >= SAVE_MEMORY_ACTIVATION_BYTES


def save_activation_memory(network: nn.Layer, on: bool = True) -> int:
    """Training memory on CPU (issue 16): every :class:`ConvNormAct` block computes its InstanceNorm and
    LeakyReLU as one autograd node that keeps only the block's output (``runtime/norm_act.py``: the
    convolution output is not kept), and the decoder's first block of each stage convolves
    ``[up, skip]`` without concatenating them (:meth:`ConvNormAct.forward_concatenated`). Results equal
    the plain path's up to float32 rounding. Returns how many blocks were switched."""
    count = 0
    for layer in network.sublayers(include_self=True):
        if isinstance(layer, ConvNormAct):
            layer.save_memory = bool(on)
            count += 1
    return count


def weights_mismatch(network, weights: dict) -> str | None:
    """How ``weights`` (name → array) fail to fit ``network`` exactly (missing, unexpected, wrong-shape
    names, a few of each with the shapes), or None when they fit."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(np.shape(weights[k])) != expected[k])
    if not (missing or unexpected or wrong):
        return None
    wrong = [f"{k} {list(np.shape(weights[k]))} vs {list(expected[k])}" for k in wrong]
    parts = [f"{name}: {keys[:3]}{' ...' if len(keys) > 3 else ''}" for name, keys in
             (("missing", missing), ("unexpected", unexpected), ("wrong shape (checkpoint vs plan)", wrong)) if keys]
    return "; ".join(parts)


def load_weights(network, weights: dict) -> None:
    """Load numpy ``weights`` into ``network``; keys and shapes must match exactly.

    Paddle's ``set_state_dict`` only warns about mismatches; a checkpoint of another architecture
    must fail loudly instead.
    """
    problem = weights_mismatch(network, weights)
    if problem is not None:
        raise PnnunetError("the checkpoint's weights do not fit the network of the plan (" + problem +
                           ")\n  fix: use the plans.json the model was trained with")
    network.set_state_dict(weights)
