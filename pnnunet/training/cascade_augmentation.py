"""Cascade input augmentation (reference §5.4 step 14): the previous stage's segmentation becomes
one-hot input channels, which are then randomly dilated/eroded/opened/closed and lose random
connected components, so that the cascade learns to correct the previous stage's mistakes.

batchgenerators v1 interface (``__call__(**data_dict) -> dict`` on whole batches); random draws
come from the global ``np.random`` functions, which the augmenter seeds per worker.

DEVIATION(nnU-Net §5.4): upstream's morphology convolves with a ``skimage`` ball of radius
``r ~ U(1, 8)`` (torch FFT convolution). Here a dilation by radius ``r`` is "Euclidean distance to
the mask <= r" (scipy's exact distance transform, linear time instead of the ball's size), the same
set as a ball of integer radius; erosion, opening and closing are built from it as upstream builds
them from its dilation (outside the patch counts as background for dilation, as foreground for
erosion). Connected components use cc3d with full connectivity, as upstream's skimage labelling.
"""

from __future__ import annotations

from typing import Sequence

import cc3d
import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy.ndimage import distance_transform_edt

from pnnunet.preprocessing.previous_stage import one_hot_foreground

# §5.4 step 14
MORPHOLOGY_P_PER_SAMPLE = 0.4
MORPHOLOGY_P_PER_LABEL = 0.5
MORPHOLOGY_RADIUS = (1.0, 8.0)
REMOVE_COMPONENT_P_PER_SAMPLE = 0.2
REMOVE_COMPONENT_P_PER_LABEL = 0.5
REMOVE_COMPONENT_MAX_FRACTION = 0.15


# ---- binary morphology by distance transform --------------------------------------------------


def binary_dilation(mask: np.ndarray, radius: float) -> np.ndarray:
    """Voxels within Euclidean distance ``radius`` of ``mask`` (outside the array: background)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    return distance_transform_edt(~mask) <= radius


def binary_erosion(mask: np.ndarray, radius: float) -> np.ndarray:
    """Voxels farther than ``radius`` from every background voxel (outside the array: foreground)."""
    return ~binary_dilation(~np.asarray(mask, dtype=bool), radius)


def binary_opening(mask: np.ndarray, radius: float) -> np.ndarray:
    return binary_dilation(binary_erosion(mask, radius), radius)


def binary_closing(mask: np.ndarray, radius: float) -> np.ndarray:
    return binary_erosion(binary_dilation(mask, radius), radius)


OPERATORS = (binary_dilation, binary_erosion, binary_closing, binary_opening)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components with full connectivity (26 in 3D, 8 in 2D): labels and sizes (index = label)."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    labels = cc3d.connected_components(mask, connectivity=8 if mask.ndim == 2 else 26)
    return labels, np.bincount(labels.ravel())


# ---- transforms -------------------------------------------------------------------------------


class MoveSegAsOneHotToData(AbstractTransform):
    """Seg channel ``channel`` → one-hot over ``labels`` appended to ``data``, removed from ``seg``."""

    def __init__(self, labels: Sequence[int], channel: int = 1):
        self.labels = [int(v) for v in labels]
        self.channel = int(channel)

    def __call__(self, **data_dict):
        seg, data = data_dict["seg"], data_dict["data"]
        one_hot = np.stack([one_hot_foreground(s[self.channel], self.labels, data.dtype) for s in seg])
        data_dict["data"] = np.concatenate([data, one_hot], axis=1)
        data_dict["seg"] = np.delete(seg, self.channel, axis=1)
        return data_dict


class RandomBinaryOperator(AbstractTransform):
    """Per sample with ``p_per_sample``: in random channel order, each of ``channels`` with
    ``p_per_label`` gets one of dilation/erosion/closing/opening with a radius ~ U(``radius``);
    voxels a channel gains are removed from the other channels."""

    def __init__(self, channels: Sequence[int], p_per_sample: float = MORPHOLOGY_P_PER_SAMPLE,
                 p_per_label: float = MORPHOLOGY_P_PER_LABEL, radius: Sequence[float] = MORPHOLOGY_RADIUS):
        self.channels = [int(c) for c in channels]
        self.p_per_sample, self.p_per_label, self.radius = p_per_sample, p_per_label, tuple(radius)

    def __call__(self, **data_dict):
        data = data_dict["data"]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            order = list(np.random.permutation(self.channels))
            for c in order:
                if np.random.uniform() >= self.p_per_label:
                    continue
                op = OPERATORS[np.random.randint(len(OPERATORS))]
                radius = np.random.uniform(*self.radius)
                before = data[b, c] > 0
                after = op(before, radius)
                added = after & ~before
                for other in self.channels:
                    if other != c:
                        data[b, other][added] = 0
                data[b, c] = after
        return data_dict


class RemoveRandomConnectedComponent(AbstractTransform):
    """Per sample with ``p_per_sample``: in random channel order, each of ``channels`` with
    ``p_per_label`` loses one random connected component smaller than ``max_fraction`` of the patch."""

    def __init__(self, channels: Sequence[int], p_per_sample: float = REMOVE_COMPONENT_P_PER_SAMPLE,
                 p_per_label: float = REMOVE_COMPONENT_P_PER_LABEL,
                 max_fraction: float = REMOVE_COMPONENT_MAX_FRACTION):
        self.channels = [int(c) for c in channels]
        self.p_per_sample, self.p_per_label, self.max_fraction = p_per_sample, p_per_label, max_fraction

    def __call__(self, **data_dict):
        data = data_dict["data"]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            for c in list(np.random.permutation(self.channels)):
                if np.random.uniform() >= self.p_per_label:
                    continue
                mask = data[b, c] > 0
                if not mask.any():
                    continue
                labels, sizes = label_components(mask)
                candidates = [i for i in range(1, len(sizes)) if sizes[i] < mask.size * self.max_fraction]
                if candidates:
                    data[b, c][labels == candidates[np.random.randint(len(candidates))]] = 0
        return data_dict


def cascade_transforms(foreground_labels: Sequence[int], augment: bool) -> list:
    """The cascade steps of §5.4 step 14, to run after ``-1 → 0`` (validation: only the one-hot move).

    The one-hot channels are the last ``len(foreground_labels)`` channels of ``data``.
    """
    channels = list(range(-len(foreground_labels), 0))
    transforms: list = [MoveSegAsOneHotToData(foreground_labels, channel=1)]
    if augment:
        transforms += [RandomBinaryOperator(channels), RemoveRandomConnectedComponent(channels)]
    return transforms
