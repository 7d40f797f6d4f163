"""Crop a case to the bounding box of its non-zero region (reference §4.2).

Arrays are channel first, ``(C, X, Y, Z)`` (2D cases ``(C, 1, X, Y)``); bounding boxes are
half-open ``[lo, hi)`` per spatial axis, like Python slices.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes


def create_nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Mask of voxels that are non-zero in any channel, with holes filled (reference §4.2).

    Parameters
    ----------
    data : ndarray of shape (C, X, Y, Z) or (C, X, Y)

    Returns
    -------
    mask : bool ndarray of shape ``data.shape[1:]``
    """
    if data.ndim not in (3, 4):
        raise ValueError(f"data must have shape (C, X, Y, Z) or (C, X, Y), got {data.shape}")
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    return binary_fill_holes(mask)


def get_bbox_from_mask(mask: np.ndarray) -> list[list[int]]:
    """Tight bounding box of ``mask``, ``[[lo, hi), ...]`` per axis (reference §4.2).

    An all-False mask gives the full extent of every axis (no crop).

    Parameters
    ----------
    mask : bool ndarray of any dimension

    Returns
    -------
    bbox : list of ``[lo, hi]`` int pairs, one per axis of ``mask``
    """
    bbox = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        if hits.size == 0:
            bbox.append([0, int(mask.shape[axis])])
        else:
            bbox.append([int(hits[0]), int(hits[-1]) + 1])
    return bbox


def bbox_to_slices(bbox: list[list[int]]) -> tuple[slice, ...]:
    """``[[lo, hi), ...]`` → tuple of slices."""
    return tuple(slice(lo, hi) for lo, hi in bbox)


def crop_to_nonzero(data: np.ndarray, seg: np.ndarray | None = None, nonzero_label: int = -1
                    ) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Crop data (and seg) to the non-zero bounding box and mark the outside in seg (reference §4.2).

    Parameters
    ----------
    data : ndarray of shape (C, X, Y, Z)
    seg : ndarray of shape (1, X, Y, Z) or None
    nonzero_label : value written into seg where seg is 0 and the voxel is outside the
        (hole-filled) non-zero mask.

    Returns
    -------
    data : a view of the input cropped to the bbox, shape (C, x, y, z)
    seg : a cropped *copy* of ``seg`` with ``nonzero_label`` marked; without ``seg`` a new int8
        array of shape (1, x, y, z) that is 0 inside the mask and ``nonzero_label`` outside.
    bbox : ``[[lo, hi), ...]`` per spatial axis
    """
    mask = create_nonzero_mask(data)
    bbox = get_bbox_from_mask(mask)
    slicer = bbox_to_slices(bbox)
    mask = mask[slicer][None]
    data = data[(slice(None),) + slicer]
    if seg is not None:
        seg = seg[(slice(None),) + slicer].copy()
        seg[(seg == 0) & ~mask] = nonzero_label
    else:
        seg = np.where(mask, np.int8(0), np.int8(nonzero_label))
    return data, seg, bbox
