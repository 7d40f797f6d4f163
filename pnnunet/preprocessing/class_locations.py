"""Foreground voxel locations stored per case for oversampling (reference §4.6, Appendix G.14)."""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

ClassKey = Union[int, tuple[int, ...]]

MIN_NUM_SAMPLES = 10000
MIN_PERCENT_COVERAGE = 0.01


def _key(c) -> ClassKey:
    return tuple(int(v) for v in c) if isinstance(c, (tuple, list)) else int(c)


def sample_foreground_locations(seg: np.ndarray, classes: Sequence[int | Sequence[int]], seed: int = 1234,
                                min_num_samples: int = MIN_NUM_SAMPLES,
                                min_percent_coverage: float = MIN_PERCENT_COVERAGE
                                ) -> dict[ClassKey, np.ndarray]:
    """Sample voxel coordinates of every class or region (reference §4.6).

    For each entry of ``classes`` in order, the candidates are the voxels of its label(s),
    concatenated label by label in the order the entry lists them, each label's voxels in C
    (row-major) order. ``k = max(min(min_num_samples, n), ceil(min_percent_coverage * n))`` of the
    ``n`` candidates are drawn without replacement with one ``RandomState(seed)`` shared by all
    classes of the case. A class whose labels do not occur draws no random numbers.

    Parameters
    ----------
    seg : int or float ndarray of shape (1, X, Y, Z) (resampled, -1 outside the non-zero mask)
    classes : labels (ints) and/or regions (lists/tuples of labels)

    Returns
    -------
    dict mapping ``int`` (label) or ``tuple`` (region) keys, in the order of ``classes``, to int64
    arrays of shape (k, 4) with rows ``[0, x, y, z]`` (k = 0 for absent classes; upstream stores
    an empty list there).
    """
    rs = np.random.RandomState(seed)
    keys = [_key(c) for c in classes]
    wanted = sorted({lab for k in keys for lab in (k if isinstance(k, tuple) else (k,))})
    flat = seg.reshape(-1)
    # flat indices of every voxel with a requested label, grouped by label (stable → C order inside a label)
    idx = np.flatnonzero(np.isin(flat, np.asarray(wanted)))
    values = flat[idx]
    order = np.argsort(values, kind="stable")
    idx, values = idx[order], values[order]
    starts = np.searchsorted(values, wanted, side="left")
    ends = np.searchsorted(values, wanted, side="right")
    voxels_of = {lab: idx[s:e] for lab, s, e in zip(wanted, starts, ends)}

    result: dict[ClassKey, np.ndarray] = {}
    for key in keys:
        labels = key if isinstance(key, tuple) else (key,)
        candidates = np.concatenate([voxels_of[lab] for lab in labels])
        n = candidates.size
        if n == 0:
            result[key] = np.zeros((0, seg.ndim), dtype=np.int64)
            continue
        k = max(min(min_num_samples, n), int(math.ceil(n * min_percent_coverage)))
        chosen = candidates[rs.choice(n, k, replace=False)]
        result[key] = np.stack(np.unravel_index(chosen, seg.shape), axis=1).astype(np.int64)
    return result


def location_classes(label_info) -> list[ClassKey]:
    """Classes whose locations are sampled (reference §4.6), from a :class:`pnnunet.dataset.labels.LabelInfo`.

    Label mode: the foreground labels. Region mode: the foreground regions in dataset.json order
    (tuples, or ints for single-label entries). With an ignore label, the key
    ``(-1, *all_labels)`` (every annotated voxel) is appended last.
    """
    classes: list[ClassKey] = list(label_info.foreground_regions if label_info.has_regions
                                   else label_info.foreground_labels)
    if label_info.ignore_label is not None:
        classes.append(tuple([-1] + [int(v) for v in label_info.all_labels]))
    return classes
