"""Region targets for region-based training (reference §1.4, §5.4, §5.6).

A region is the union of some labels; the network has one sigmoid output per region. The training
targets are binary region maps made from the (augmented) label map, after augmentation and before
the deep-supervision downsampling, as upstream's ``ConvertSegmentationToRegionsTransform``. With an
ignore label one more channel, last, marks the ignored voxels (the loss masks them).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pnnunet.metrics import label_or_region_mask

Region = int | tuple[int, ...]


def segmentation_to_regions(seg: np.ndarray, regions: Sequence[Region | Sequence[int]],
                            ignore_label: int | None = None) -> np.ndarray:
    """Binary region maps of label maps.

    Parameters
    ----------
    seg : (B, 1, *spatial) integer label maps
    regions : the foreground regions in dataset.json order (ints or tuples of labels)
    ignore_label : if given, one more channel, last: ``seg == ignore_label``

    Returns
    -------
    (B, R [+1], *spatial) array of 0/1 with ``seg``'s dtype; channel r is 1 where the label is one of
    region r's labels.
    """
    if seg.ndim < 3 or seg.shape[1] != 1:
        raise ValueError(f"seg must be (B, 1, *spatial), got shape {seg.shape}")
    channels = list(regions) + ([ignore_label] if ignore_label is not None else [])
    out = np.zeros((seg.shape[0], len(channels), *seg.shape[2:]), dtype=seg.dtype)
    for r, labels in enumerate(channels):
        out[:, r] = label_or_region_mask(seg[:, 0], tuple(labels) if isinstance(labels, (list, tuple)) else labels)
    return out
