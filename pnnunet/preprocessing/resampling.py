"""Resampling of images and label maps to a target spacing (reference §4.3, §4.5, §12.2).

Arrays are channel first, ``(C, X, Y, Z)``; spacings and shapes are in array order.

Images: ``skimage.transform.resize`` (order 3, mode edge, no anti-aliasing, clipped to the input
range) in float64, one channel at a time. Label maps: batchgenerators' ``resize_segmentation``,
the very function nnU-Net calls (its rule changed in batchgenerators 0.25.4, reference §4.5 and
Appendix G.13; pnnunet requires ``>=0.25.5``). Strongly anisotropic data are resampled "separate
z": in-plane per slice, then nearest neighbour (``order_z`` 0) along the low-resolution axis.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from batchgenerators.augmentations.utils import resize_segmentation
from scipy.ndimage import map_coordinates
from skimage.transform import resize

from pnnunet.errors import PnnunetError

ANISO_THRESHOLD = 3.0


def compute_new_shape(old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]
                      ) -> list[int]:
    """``int(round(old_spacing / new_spacing * old_shape))`` per axis, Python's round (reference §4.3)."""
    if not len(old_shape) == len(old_spacing) == len(new_spacing):
        raise ValueError(f"shape {old_shape}, spacing {old_spacing} and target {new_spacing} differ in length")
    return [int(round(os_ / ns * n)) for os_, ns, n in zip(old_spacing, new_spacing, old_shape)]


def get_do_separate_z(spacing: Sequence[float], anisotropy_threshold: float = ANISO_THRESHOLD) -> bool:
    """True when ``max(spacing) / min(spacing) > anisotropy_threshold`` (reference §4.5)."""
    return bool(np.max(spacing) / np.min(spacing) > anisotropy_threshold)


def get_lowres_axis(spacing: Sequence[float]) -> np.ndarray:
    """Indices of the axes whose spacing equals the largest spacing (reference §4.5)."""
    return np.where(max(spacing) / np.asarray(spacing) == 1)[0]


def determine_do_sep_z_and_axis(force_separate_z: bool | None, current_spacing: Sequence[float],
                                new_spacing: Sequence[float], anisotropy_threshold: float = ANISO_THRESHOLD
                                ) -> tuple[bool, int | None]:
    """Decide whether to resample separately along one axis, and which (reference §4.5).

    ``force_separate_z`` None: separate if the *current* spacing is anisotropic (axis from the
    current spacing), else if the *target* spacing is (axis from the target spacing). When the
    selected axis set has 2 or 3 members (e.g. spacing (0.24, 1.25, 1.25)) nothing is separate.

    Returns
    -------
    (do_separate_z, axis) with axis None when not separate.
    """
    if force_separate_z is not None:
        do_separate = bool(force_separate_z)
        axes = get_lowres_axis(current_spacing) if force_separate_z else None
    elif get_do_separate_z(current_spacing, anisotropy_threshold):
        do_separate, axes = True, get_lowres_axis(current_spacing)
    elif get_do_separate_z(new_spacing, anisotropy_threshold):
        do_separate, axes = True, get_lowres_axis(new_spacing)
    else:
        do_separate, axes = False, None
    if axes is None:
        return do_separate, None
    if len(axes) != 1:
        return False, None
    return do_separate, int(axes[0])


def _resize_image(x: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    return resize(x, tuple(new_shape), order, mode="edge", anti_aliasing=False)


def _resize_seg(x: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    return resize_segmentation(x, tuple(new_shape), order)


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output position for order-0 resampling along one axis.

    Coordinates are ``(n_in / n_out) * (i + 0.5) - 0.5`` (align corners False); scipy's own
    order-0 ``map_coordinates`` with mode ``nearest`` rounds and clamps them, so the result equals
    resampling the whole volume with ``map_coordinates`` as nnU-Net does, without building a
    full-size coordinate grid.
    """
    coords = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
    return map_coordinates(np.arange(n_in, dtype=np.float64), coords[None], order=0, mode="nearest").astype(np.intp)


def _resample_along_axis(vol: np.ndarray, axis: int, n_out: int, order_z: int, is_seg: bool) -> np.ndarray:
    """Resample one float64 volume along ``axis`` only (in-plane sizes already final)."""
    n_in = vol.shape[axis]
    if order_z == 0:
        return np.take(vol, _nearest_indices(n_in, n_out), axis=axis)
    # order_z > 0 (never used by the default plans): full coordinate grid as upstream does
    out_shape = list(vol.shape)
    out_shape[axis] = n_out
    grids = np.mgrid[tuple(slice(0, s) for s in out_shape)].astype(np.float64)
    grids[axis] = float(n_in) / n_out * (grids[axis] + 0.5) - 0.5
    if not is_seg:
        return map_coordinates(vol, grids, order=order_z, mode="nearest")
    out = np.zeros(out_shape, dtype=np.float64)
    for label in np.unique(vol):
        score = map_coordinates((vol == label).astype(np.float64), grids, order=order_z, mode="nearest")
        out[np.round(score) > 0.5] = label
    return out


def _resample_separate(x: np.ndarray, new_shape: Sequence[int], axis: int, is_seg: bool, order: int,
                       order_z: int) -> np.ndarray:
    """One channel: in-plane per slice along ``axis``, then along ``axis`` (float64 result)."""
    resize_fn = _resize_seg if is_seg else _resize_image
    plane_shape = [s for a, s in enumerate(new_shape) if a != axis]
    tmp_shape = list(new_shape)
    tmp_shape[axis] = x.shape[axis]
    tmp = np.zeros(tmp_shape, dtype=np.float64)
    for i in range(x.shape[axis]):
        index = (slice(None),) * axis + (i,)
        tmp[index] = resize_fn(x[index], plane_shape, order)
    if x.shape[axis] == new_shape[axis]:
        return tmp
    return _resample_along_axis(tmp, axis, int(new_shape[axis]), order_z, is_seg)


def resample_data_or_seg(data: np.ndarray, new_shape: Sequence[int], is_seg: bool = False, axis: int | None = None,
                         order: int = 3, do_separate_z: bool = False, order_z: int = 0,
                         dtype_out: np.dtype | type | None = None) -> np.ndarray:
    """Resample every channel of ``data`` to ``new_shape`` (reference §4.5).

    Parameters
    ----------
    data : ndarray of shape (C, X, Y, Z)
    new_shape : 3 ints
    is_seg : label map (``resize_segmentation``) instead of image (``resize``)
    axis, do_separate_z : from :func:`determine_do_sep_z_and_axis`
    order, order_z : spline order in-plane / along ``axis``
    dtype_out : output dtype, default ``data.dtype``

    Returns
    -------
    ndarray of shape (C, *new_shape); ``data`` itself when the shape does not change.
    Each channel is computed in float64 (one channel at a time) and cast to ``dtype_out``.
    """
    if data.ndim != 4 or len(new_shape) != 3:
        raise ValueError(f"data must be (C, X, Y, Z) and new_shape 3 ints, got {data.shape} and {new_shape}")
    new_shape = [int(s) for s in new_shape]
    if list(data.shape[1:]) == new_shape:
        return data
    if do_separate_z and axis is None:
        raise ValueError("do_separate_z needs the axis to resample separately")
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype if dtype_out is None else dtype_out)
    resize_fn = _resize_seg if is_seg else _resize_image
    for c in range(data.shape[0]):
        channel = data[c].astype(np.float64)
        if do_separate_z:
            out[c] = _resample_separate(channel, new_shape, axis, is_seg, order, order_z)
        else:
            out[c] = resize_fn(channel, new_shape, order)
        del channel
    return out


def resample_data_or_seg_to_shape(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                                  new_spacing: Sequence[float], is_seg: bool = False, order: int = 3,
                                  order_z: int = 0, force_separate_z: bool | None = None,
                                  separate_z_anisotropy_threshold: float = ANISO_THRESHOLD) -> np.ndarray:
    """Resample (C, X, Y, Z) ``data`` to ``new_shape``, deciding separate-z from the spacings (reference §4.5).

    This is the function named ``resample_data_or_seg_to_shape`` in the plans'
    ``resampling_fn_*`` entries; its keyword arguments are the plans' ``resampling_fn_*_kwargs``.
    """
    do_separate_z, axis = determine_do_sep_z_and_axis(force_separate_z, current_spacing, new_spacing,
                                                      separate_z_anisotropy_threshold)
    return resample_data_or_seg(data, new_shape, is_seg, axis, order, do_separate_z, order_z=order_z)


def resample_data_or_seg_to_spacing(data: np.ndarray, current_spacing: Sequence[float],
                                    new_spacing: Sequence[float], is_seg: bool = False, order: int = 3,
                                    order_z: int = 0, force_separate_z: bool | None = None,
                                    separate_z_anisotropy_threshold: float = ANISO_THRESHOLD) -> np.ndarray:
    """As :func:`resample_data_or_seg_to_shape`, with the shape from :func:`compute_new_shape`."""
    new_shape = compute_new_shape(data.shape[1:], current_spacing, new_spacing)
    return resample_data_or_seg_to_shape(data, new_shape, current_spacing, new_spacing, is_seg, order, order_z,
                                         force_separate_z, separate_z_anisotropy_threshold)


RESAMPLING_FUNCTIONS = {
    "resample_data_or_seg_to_shape": resample_data_or_seg_to_shape,
}


def resampling_function(name: str):
    """The resampling function a plans file names (``resampling_fn_data`` etc.)."""
    if name not in RESAMPLING_FUNCTIONS:
        raise PnnunetError(f"plans name the resampling function '{name}', which pnnunet does not have; "
                           f"known: {sorted(RESAMPLING_FUNCTIONS)}")
    return RESAMPLING_FUNCTIONS[name]
