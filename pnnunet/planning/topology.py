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


def conv_feature_map_size(patch_size: Sequence[int], features_per_stage: Sequence[int],
                          strides: Sequence[Sequence[int]], n_conv_per_stage: Sequence[int],
                          n_conv_per_stage_decoder: Sequence[int], num_classes: int) -> int:
    """The planner's memory estimate of a PlainConvUNet without deep supervision (§3.6.4).

    Counts the output elements (batch 1) of every encoder conv, every decoder conv, every
    transposed conv and the single full-resolution segmentation head; the input is not counted.
    Stage resolutions use floor division per stage, exactly as upstream's estimate.
    """
    sizes = []
    size = [int(p) for p in patch_size]
    total = 0
    for s, stride in enumerate(strides):
        size = [i // j for i, j in zip(size, stride)]
        sizes.append(size)
        total += n_conv_per_stage[s] * features_per_stage[s] * int(np.prod(size, dtype=np.int64))
    for j in range(len(strides) - 1):  # decoder, per skip resolution
        vox = int(np.prod(sizes[j], dtype=np.int64))
        total += n_conv_per_stage_decoder[j] * features_per_stage[j] * vox  # conv blocks
        total += features_per_stage[j] * vox  # transposed conv output
    total += num_classes * int(np.prod(sizes[0], dtype=np.int64))  # one seg head, DS off
    return int(total)
