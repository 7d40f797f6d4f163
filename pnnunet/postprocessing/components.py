"""Keep only the largest connected component of a label map's foreground (reference §8.4).

The one postprocessing operation nnU-Net v2 selects by cross-validation: for the union mask of
some labels (or regions), keep its largest connected component and set every other voxel of the
mask to background. Connectivity is full (26-neighbourhood in 3D, 8 in 2D), as upstream's
``skimage.measure.label(connectivity=None)``; components tied for the largest size are all kept.
Connected components come from cc3d (connected-components-3d), which gives the same components
as skimage and is faster.
"""

from __future__ import annotations

from typing import Sequence

import cc3d
import numpy as np

from pnnunet.metrics import label_or_region_mask

# upstream's function name, used in postprocessing.json so the file reads like upstream's
PP_FN_NAME = "remove_all_but_largest_component_from_segmentation"

LabelsOrRegions = int | tuple[int, ...] | Sequence["int | tuple[int, ...] | Sequence[int]"]


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest connected component(s) of a binary mask.

    Parameters
    ----------
    mask : bool (or 0/1) array of shape (X, Y) or (X, Y, Z)

    Returns
    -------
    bool array of the same shape: True on the largest component under full connectivity
    (8 in 2D, 26 in 3D); every component tied for the largest size is kept; all False if
    ``mask`` is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D mask, got shape {mask.shape}")
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    connectivity = 8 if mask.ndim == 2 else 26
    labeled, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True, binary_image=True)
    sizes = np.bincount(labeled.ravel(), minlength=n + 1)
    sizes[0] = 0  # background is not a component
    keep = np.flatnonzero(sizes == sizes.max())
    if len(keep) == 1:
        return labeled == keep[0]
    return np.isin(labeled, keep)


def union_mask(seg: np.ndarray, labels_or_regions: LabelsOrRegions) -> np.ndarray:
    """Bool mask of the union of labels/regions.

    ``labels_or_regions`` is one label (int), one region (tuple of labels) or a list of labels
    and/or regions; every form means the union of all labels it contains, so a region stored in
    JSON as a list gives the same mask as the tuple.
    """
    items = labels_or_regions if isinstance(labels_or_regions, list) else [labels_or_regions]
    mask = np.zeros(seg.shape, dtype=bool)
    for item in items:
        mask |= label_or_region_mask(seg, item)
    return mask


def remove_all_but_largest_component(seg: np.ndarray, labels_or_regions: LabelsOrRegions,
                                     background: int = 0) -> np.ndarray:
    """Keep only the largest connected component of the union of ``labels_or_regions`` (reference §8.4).

    Voxels of the union mask outside its largest component (ties: all tied components are kept)
    are set to ``background``; other voxels are unchanged. The input is not modified.

    Parameters
    ----------
    seg : integer-valued label map, shape (X, Y) or (X, Y, Z) (any dtype; a 2D file read as
        (1, X, Y) is 3D with one slice, for which 26-connectivity equals 8-connectivity in-plane)
    labels_or_regions : a label, a region (tuple) or a list of labels/regions (their union)
    background : value written into the removed voxels

    Returns
    -------
    a new array, same shape and dtype as ``seg``
    """
    mask = union_mask(seg, labels_or_regions)
    out = np.array(seg, copy=True)
    out[mask & ~largest_component_mask(mask)] = background
    return out
