"""ResidualEncoderUNet (nnU-Net's ResEnc presets) in Paddle (reference models_and_scale §2-3).

Same module tree as upstream's ``dynamic_network_architectures`` ``ResidualEncoderUNet``, so that
an upstream state_dict maps by name (drop upstream's ``all_modules.*`` and ``decoder.encoder.*``
aliases):

- ``encoder.stem.convs.0.{conv,norm}``: one conv-norm-LeakyReLU, stride 1, ``features_per_stage[0]``.
- ``encoder.stages[s].blocks[b]``: :class:`BasicBlockD`; block 0 of stage ``s`` is strided by
  ``strides[s]``. Each block has ``conv1.{conv,norm}`` (conv-norm-LeakyReLU), ``conv2.{conv,norm}``
  (conv-norm, no nonlinearity) and, when the stride or the channel count changes, ``skip``:
  AvgPool(stride) (``skip.0``, no parameters) and/or a 1×1 conv without bias + norm (``skip.1`` after
  a pool, ``skip.0`` without one). ``out = LeakyReLU(conv2(conv1(x)) + skip(x))``.
- ``decoder``: the PlainConvUNet decoder of :mod:`pnnunet.runtime.network` (transposed conv, concat,
  ``n_conv_per_stage_decoder`` conv blocks, 1×1 heads).

Init as upstream: He normal (a = 1e-2) conv weights, zero biases, and every block's ``conv2.norm``
weight and bias zeroed, so each residual block starts as its skip path.
"""

from __future__ import annotations

from typing import Sequence

import paddle
from paddle import nn

from pnnunet.runtime.network import (
    LEAKY_SLOPE,
    ConvNorm,
    ConvNormAct,
    Decoder,
    StackedConvs,
    leaky_relu_for_mode,
    unet_stages,
)

_AVG_POOL = {2: nn.AvgPool2D, 3: nn.AvgPool3D}


class BasicBlockD(nn.Layer):
    """ResNet-D basic block: strided conv1 (with activation), conv2 (without), avg-pool + 1×1 skip."""

    def __init__(self, dim: int, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int], bias: bool):
        super().__init__()
        stride = list(stride)
        self.conv1 = ConvNormAct(dim, c_in, c_out, kernel, stride, bias)
        self.conv2 = ConvNorm(dim, c_out, c_out, kernel, [1] * dim, bias, zero_norm=True)  # as upstream's init
        self.nonlin2 = nn.LeakyReLU(LEAKY_SLOPE)
        skip = []
        if any(s != 1 for s in stride):
            skip.append(_AVG_POOL[dim](kernel_size=stride, stride=stride))
        if c_in != c_out:
            skip.append(ConvNorm(dim, c_in, c_out, [1] * dim, [1] * dim, bias=False))
        # registered after conv1/conv2, as upstream (state_dict order)
        self.skip = nn.Sequential(*skip) if skip else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        residual = x if self.skip is None else self.skip(x)
        return leaky_relu_for_mode(self.conv2(self.conv1(x)) + residual, self.nonlin2)


class StackedResidualBlocks(nn.Layer):
    """``n`` BasicBlockD; only the first one is strided (and may change the channel count)."""

    def __init__(self, n: int, dim: int, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int],
                 bias: bool):
        super().__init__()
        blocks = [BasicBlockD(dim, c_in, c_out, kernel, stride, bias)]
        blocks += [BasicBlockD(dim, c_out, c_out, kernel, [1] * dim, bias) for _ in range(n - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.blocks(x)


class ResidualEncoder(nn.Layer):
    """Stem + residual stages; returns the output of every stage (skips, bottleneck last)."""

    def __init__(self, dim, input_channels, features, kernel_sizes, strides, n_blocks_per_stage, bias):
        super().__init__()
        self.stem = StackedConvs(1, dim, input_channels, features[0], kernel_sizes[0], [1] * dim, bias)
        stages, c_in = [], features[0]
        for s, c_out in enumerate(features):
            stages.append(StackedResidualBlocks(n_blocks_per_stage[s], dim, c_in, c_out, kernel_sizes[s], strides[s],
                                                bias))
            c_in = c_out
        self.stages = nn.LayerList(stages)

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResidualEncoderUNet(nn.Layer):
    """nnU-Net's ResidualEncoderUNet with BasicBlockD (the ResEnc M/L/XL presets' network).

    Parameters
    ----------
    input_channels : image channels (+ one-hot previous-stage labels for the cascade).
    n_stages, features_per_stage, kernel_sizes, strides, n_blocks_per_stage, n_conv_per_stage_decoder,
    conv_bias : as in a ResEnc plan's ``arch_kwargs``; kernel_sizes / strides are per stage, per axis.
    conv_dim : 2 or 3.
    num_classes : output channels (labels incl. background, or regions).
    deep_supervision : as :class:`pnnunet.runtime.network.PlainConvUNet`.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: Sequence[int],
        conv_dim: int,
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_blocks_per_stage: Sequence[int],
        num_classes: int,
        n_conv_per_stage_decoder: Sequence[int],
        conv_bias: bool = True,
        deep_supervision: bool = False,
    ):
        super().__init__()
        features, kernels, strides_, n_blocks, n_dec = unet_stages(
            n_stages, conv_dim, features_per_stage, kernel_sizes, strides, n_blocks_per_stage, "n_blocks_per_stage",
            n_conv_per_stage_decoder)
        self.conv_dim = conv_dim
        self.num_classes = num_classes
        self.strides = strides_
        self.deep_supervision = bool(deep_supervision)
        self.encoder = ResidualEncoder(conv_dim, input_channels, features, kernels, strides_, n_blocks, conv_bias)
        self.decoder = Decoder(conv_dim, features, kernels, strides_, n_dec, num_classes, conv_bias)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor | list[paddle.Tensor]:
        outputs = self.decoder(self.encoder(x), self.deep_supervision)
        return outputs if self.deep_supervision else outputs[0]
