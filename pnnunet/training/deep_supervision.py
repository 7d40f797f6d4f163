"""Deep-supervision scales, loss weights and target downsampling (reference §5.5, §12.5).

Pure numpy; no Paddle needed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ds_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Relative size of each deep-supervision output, highest resolution first (§5.5).

    Parameters
    ----------
    strides : per-stage strides of the plan, shape (n_stages, n_spatial_axes).

    Returns
    -------
    ``n_stages - 1`` lists of per-axis scales: ``1 / cumprod(strides, axis=0)`` without the
    bottleneck row; e.g. strides ``[[1,1],[2,2],[2,1]]`` → ``[[1, 1], [0.5, 0.5]]``.
    """
    strides = np.asarray(strides, dtype=np.float64)
    if strides.ndim != 2 or strides.shape[0] < 2:
        raise ValueError(f"strides must be (n_stages >= 2, n_axes), got shape {strides.shape}")
    return [[float(v) for v in row] for row in (1.0 / np.cumprod(strides, axis=0))[:-1]]


def ds_weights(n_stages: int, ddp: bool = False) -> np.ndarray:
    """Loss weights of the ``n_stages - 1`` deep-supervision outputs (§5.5, Appendix B).

    ``w_i = 1 / 2**i``, the lowest-resolution weight set to 0, normalised to sum 1:
    4 stages → ``[2/3, 1/3, 0]``. Returns float64 of shape (n_stages - 1,).
    ``ddp``: data-parallel training sets the lowest weight to 1e-6 instead of 0, as upstream, so
    that the lowest head's parameters get a gradient on every rank (``paddle.DataParallel`` fails
    on parameters without one unless ``find_unused_parameters`` traverses the graph every step).
    """
    if n_stages < 2:
        raise ValueError(f"deep supervision needs at least 2 stages, got {n_stages}")
    if n_stages == 2:
        # DEVIATION(nnU-Net §5.5): with a single output upstream zeroes its only weight and then
        # divides 0/0 (NaN loss); the single output gets weight 1 here.
        return np.ones(1)
    weights = 1.0 / 2.0 ** np.arange(n_stages - 1)
    weights[-1] = 1e-6 if ddp else 0.0
    return weights / weights.sum()


def nearest_exact_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index per output index for ``nearest-exact`` resizing (§12.5).

    ``min(floor((i + 0.5) · in / out), in - 1)``, evaluated in float32 exactly as PyTorch's CPU
    kernel does (checked against ``torch.nn.functional.interpolate(mode='nearest-exact')`` for all
    downsizing pairs up to 300 and random 2D/3D shapes; pure integer arithmetic differs in rare
    cases such as 26 → 11). For an exact ×2 downsampling this picks the odd voxels ``[1::2]``.
    """
    scale = np.float32(size_in) / np.float32(size_out)
    src = np.floor((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
    return np.minimum(src, size_in - 1)


def downsample_seg_for_ds(seg: np.ndarray, scales: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Segmentation targets for each deep-supervision output (§5.5, §12.5).

    Parameters
    ----------
    seg : label map, shape (..., *spatial) — e.g. (C, X, Y, Z) per sample or (B, C, X, Y, Z);
        the last ``len(scale)`` axes are resized, leading axes are kept.
    scales : output of :func:`ds_scales`.

    Returns
    -------
    One array per scale, same dtype, spatial shape ``round(size · scale)`` (Python round),
    nearest-exact sampled. A scale of all ones returns ``seg`` itself (not a copy), as upstream.
    """
    out = []
    for scale in scales:
        n = len(scale)
        if n > seg.ndim:
            raise ValueError(f"scale {list(scale)} has more axes than seg of shape {seg.shape}")
        if all(s == 1 for s in scale):
            out.append(seg)
            continue
        spatial = seg.shape[seg.ndim - n :]
        new_shape = [round(size * s) for size, s in zip(spatial, scale)]
        if min(new_shape) < 1:
            raise ValueError(f"scale {list(scale)} shrinks spatial shape {spatial} to {new_shape}")
        index = np.ix_(*[nearest_exact_indices(a, b) for a, b in zip(spatial, new_shape)])
        out.append(seg[(Ellipsis, *index)])
    return out
