"""Network topology rules of the planner (reference §3.5, §3.6.4). Pure numpy, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_FEATURE_MAP_EDGE = 4  # §3 constants: pool an axis only while its edge is ≥ 2·4
MAX_POOLS_PER_AXIS = 999999


@dataclass(frozen=True)
class Topology:
    """Result of :func:`get_pool_and_conv_props`.

    ``strides`` and ``kernel_sizes`` have one entry per resolution stage (``strides[0]`` is all
    ones); ``patch_size`` is the input patch padded up to a multiple of ``divisible_by``.
    """

    num_pool_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def pad_to_divisible(shape: Sequence[int], divisible_by: Sequence[int]) -> tuple[int, ...]:
    """Round each edge up to the next multiple of ``divisible_by`` (unchanged if already divisible)."""
    return tuple(int(s) if s % d == 0 else int(s + d - s % d) for s, d in zip(shape, divisible_by))


def get_pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[float],
                            min_feature_map_edge: int = MIN_FEATURE_MAP_EDGE,
                            max_pools: int = MAX_POOLS_PER_AXIS) -> Topology:
    """Pooling strides and conv kernels for a patch (nnU-Net v2 rule, reference §3.5).

    Parameters
    ----------
    spacing : (dim,) voxel spacing of the configuration (transposed order).
    patch_size : (dim,) initial patch size (may be float; edges are halved with ``ceil``).

    Each loop pools (stride 2) every axis whose edge is ≥ 2·min edge and whose spacing is within
    a factor 2 of the finest such axis; a lone remaining axis is pooled only while its edge is
    ≥ 3·min edge. Kernel sizes switch from 1 to 3 (and stay 3) once an axis' spacing is within a
    factor 2 of the finest spacing over all axes; the bottleneck kernel is all 3.
    """
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(s) for s in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    num_pool = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [a for a in range(dim) if cur_size[a] >= 2 * min_feature_map_edge]
        if not valid:
            break
        s_min = min(cur_spacing[a] for a in valid)
        valid = [a for a in valid if cur_spacing[a] / s_min < 2]
        valid = [a for a in valid if num_pool[a] < max_pools]
        if len(valid) == 1 and cur_size[valid[0]] < 3 * min_feature_map_edge:
            break
        if not valid:
            break
        global_min = min(cur_spacing)
        for d in range(dim):
            if kernel[d] != 3 and cur_spacing[d] / global_min < 2:
                kernel[d] = 3
        stride = [1] * dim
        for a in valid:
            stride[a] = 2
            num_pool[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)
    divisible_by = tuple(2 ** n for n in num_pool)
    padded = pad_to_divisible(patch_size, divisible_by)
    return Topology(tuple(num_pool), tuple(strides), tuple(kernels), padded, divisible_by)


def _stage_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Feature-map edge per stage: floor division by each stage's stride, as upstream's estimates."""
    sizes, size = [], [int(p) for p in patch_size]
    for stride in strides:
        size = [i // j for i, j in zip(size, stride)]
        sizes.append(size)
    return sizes


def _vox(size: Sequence[int]) -> int:
    return int(np.prod(size, dtype=np.int64))


def _decoder_feature_map_size(sizes: list[list[int]], features_per_stage: Sequence[int],
                              n_conv_per_stage_decoder: Sequence[int], num_classes: int) -> int:
    """The plain decoder (both networks): conv blocks and transposed conv per skip resolution, one head."""
    total = 0
    for j in range(len(sizes) - 1):
        total += (n_conv_per_stage_decoder[j] + 1) * features_per_stage[j] * _vox(sizes[j])  # convs + transp. conv
    return total + num_classes * _vox(sizes[0])  # one seg head, DS off


def conv_feature_map_size(patch_size: Sequence[int], features_per_stage: Sequence[int],
                          strides: Sequence[Sequence[int]], n_conv_per_stage: Sequence[int],
                          n_conv_per_stage_decoder: Sequence[int], num_classes: int) -> int:
    """The planner's memory estimate of a PlainConvUNet without deep supervision (§3.6.4).

    Counts the output elements (batch 1) of every encoder conv, every decoder conv, every
    transposed conv and the single full-resolution segmentation head; the input is not counted.
    Stage resolutions use floor division per stage, exactly as upstream's estimate.
    """
    sizes = _stage_sizes(patch_size, strides)
    total = sum(n_conv_per_stage[s] * features_per_stage[s] * _vox(size) for s, size in enumerate(sizes))
    return int(total + _decoder_feature_map_size(sizes, features_per_stage, n_conv_per_stage_decoder, num_classes))


def resenc_conv_feature_map_size(patch_size: Sequence[int], features_per_stage: Sequence[int],
                                 strides: Sequence[Sequence[int]], n_blocks_per_stage: Sequence[int],
                                 n_conv_per_stage_decoder: Sequence[int], num_classes: int) -> int:
    """The ResEnc planners' memory estimate of a ResidualEncoderUNet without deep supervision
    (models_and_scale §3; upstream's ``compute_conv_feature_map_size``).

    Stem: one conv at full resolution with ``features_per_stage[0]`` outputs. Each residual block: its two
    convs at the stage's resolution, plus its skip projection's output when the block changes the
    stride or the channel count (only a stage's first block can). Decoder as the plain one.
    """
    sizes = _stage_sizes(patch_size, strides)
    total = features_per_stage[0] * _vox(patch_size)  # stem
    previous, c_in = [int(p) for p in patch_size], features_per_stage[0]
    for s, size in enumerate(sizes):
        f, vox = features_per_stage[s], _vox(size)
        total += 2 * n_blocks_per_stage[s] * f * vox
        if c_in != f or size != previous:
            total += f * vox  # first block's skip (avg-pool and/or 1x1 projection output)
        previous, c_in = size, f
    return int(total + _decoder_feature_map_size(sizes, features_per_stage, n_conv_per_stage_decoder, num_classes))
