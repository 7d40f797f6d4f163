"""Class locations for foreground oversampling (reference §4.6, Appendix G.14)."""

import math

import numpy as np

from pnnunet.dataset.labels import LabelInfo
from pnnunet.preprocessing.class_locations import location_classes, sample_foreground_locations


def _seg():
    seg = np.zeros((1, 4, 5, 6), np.int8)
    seg[0, 1, 2, 3] = seg[0, 3, 0, 0] = seg[0, 0, 4, 5] = 1
    seg[0, 2, 1:4, 1:5] = 2
    seg[0, 0, 0, 0] = -1
    return seg


def test_small_classes_take_all_voxels_as_rows_0_x_y_z():
    locs = sample_foreground_locations(_seg(), [1, 2, 3])
    assert list(locs) == [1, 2, 3]
    assert sorted(map(tuple, locs[1])) == [(0, 0, 4, 5), (0, 1, 2, 3), (0, 3, 0, 0)]
    assert locs[2].shape == (12, 4) and np.all(locs[2][:, 1] == 2)
    assert locs[3].shape == (0, 4)


def test_exact_draws_with_randomstate_1234_and_absent_class_draws_nothing():
    seg = _seg()
    rs = np.random.RandomState(1234)
    c1 = np.argwhere(seg == 1)
    exp1 = c1[rs.choice(len(c1), 3, replace=False)]
    c2 = np.argwhere(seg == 2)
    exp2 = c2[rs.choice(len(c2), 12, replace=False)]
    locs = sample_foreground_locations(seg, [1, 7, 2])   # 7 is absent: must not consume random numbers
    assert np.array_equal(locs[1], exp1) and np.array_equal(locs[2], exp2)


def test_region_candidates_are_concatenated_in_key_order():
    seg = _seg()
    cand = np.concatenate([np.argwhere(seg == 2), np.argwhere(seg == 1)])  # not the row-major union
    expected = cand[np.random.RandomState(1234).choice(len(cand), len(cand), replace=False)]
    locs = sample_foreground_locations(seg, [[2, 1]])
    assert list(locs) == [(2, 1)]
    assert np.array_equal(locs[(2, 1)], expected)


def test_sample_count_rule():
    seg = np.ones((1, 100, 100, 150), np.int8)  # label 1: n = 1,469,950 -> k = ceil(14699.5) = 14700
    seg[0, :2] = 2                              # n = 30000 -> k = 10000
    seg[0, 2, :5, :10] = 3                      # n = 50 -> k = 50
    locs = sample_foreground_locations(seg, [1, 2, 3])
    n1 = int((seg == 1).sum())
    assert len(locs[1]) == max(min(10000, n1), math.ceil(0.01 * n1)) == 14700
    assert len(locs[2]) == 10000 and len(locs[3]) == 50
    assert len({tuple(r) for r in locs[1]}) == len(locs[1])  # without replacement


def test_location_classes_label_region_and_ignore_modes():
    def classes(labels, rco=None):
        d = {"labels": labels, **({"regions_class_order": rco} if rco else {})}
        return location_classes(LabelInfo.from_dataset_json(d))
    assert classes({"background": 0, "a": 1, "b": 2}) == [1, 2]
    assert classes({"background": 0, "b": 2, "a": 1, "ignore": 3}) == [1, 2, (-1, 0, 1, 2)]
    labels = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3, "ignore": 4}
    assert classes(labels, [1, 2, 3]) == [(1, 2, 3), (2, 3), 3, (-1, 0, 1, 2, 3)]
