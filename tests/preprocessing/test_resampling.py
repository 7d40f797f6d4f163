"""Resampling and the separate-z decision (reference §4.3, §4.5)."""

import numpy as np
import pytest
from batchgenerators.augmentations.utils import resize_segmentation
from scipy.ndimage import map_coordinates

from pnnunet.preprocessing.resampling import (compute_new_shape, determine_do_sep_z_and_axis,
                                              resample_data_or_seg, resample_data_or_seg_to_shape)


def test_new_shape_uses_python_round():
    # 5.5 -> 6 and 2.5 -> 2 (round half to even), 10/2 -> 5
    assert compute_new_shape((10, 11, 5), (1, 1, 1), (2, 2, 2)) == [5, 6, 2]
    assert compute_new_shape((20, 40, 24), (4.0, 0.8, 0.8), (3.0, 1.0, 1.0)) == [27, 32, 19]


@pytest.mark.parametrize("force, current, target, expected", [
    (None, (4.0, 0.8, 0.8), (3.0, 1.0, 1.0), (True, 0)),       # current spacing anisotropic
    (None, (1.0, 1.0, 1.0), (1.0, 1.0, 4.0), (True, 2)),       # only the target is: axis from target
    (None, (1.2, 1.0, 1.0), (3.5, 0.9, 1.1), (True, 0)),
    (None, (0.24, 1.25, 1.25), (1.0, 1.0, 1.0), (False, None)),  # two axes share the max: not separate
    (None, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (False, None)),
    (None, (3.0, 1.0, 1.0), (1.0, 1.0, 1.0), (False, None)),    # ratio 3 is not > 3
    (None, (1.0, 5.0, 1.0), (1.0, 1.0, 9.0), (True, 1)),       # current wins over target
    (True, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (False, None)),    # forced, but three axes tie
    (True, (2.0, 1.0, 1.0), (2.0, 2.0, 2.0), (True, 0)),
    (False, (5.0, 1.0, 1.0), (1.0, 1.0, 1.0), (False, None)),
])
def test_separate_z_decision(force, current, target, expected):
    assert determine_do_sep_z_and_axis(force, current, target) == expected


def test_same_shape_returns_input():
    data = np.random.RandomState(0).rand(1, 4, 5, 6).astype(np.float32)
    assert resample_data_or_seg_to_shape(data, (4, 5, 6), (1, 1, 1), (1, 1, 1)) is data


def test_separate_z_is_nearest_along_axis():
    data = np.arange(4, dtype=np.float32)[None, :, None, None] * np.ones((1, 4, 5, 5), np.float32)
    out = resample_data_or_seg_to_shape(data, (8, 5, 5), (4.0, 1.0, 1.0), (2.0, 1.0, 1.0))
    # coordinates 0.5 * (i + 0.5) - 0.5 = -0.25, 0.25, 0.75, ... rounded and clamped -> 0,0,1,1,2,2,3,3
    np.testing.assert_allclose(out[0, :, 2, 2], [0, 0, 1, 1, 2, 2, 3, 3], atol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize("axis, new_shape", [(0, (3, 9, 7)), (1, (6, 11, 4)), (2, (5, 8, 13))])
def test_separate_z_matches_full_coordinate_map(axis, new_shape):
    rs = np.random.RandomState(axis)
    data = rs.rand(2, 5, 8, 7)
    out = resample_data_or_seg(data, new_shape, is_seg=False, axis=axis, order=3, do_separate_z=True, order_z=0)
    # independent: in-plane per slice with skimage, then the whole-volume map_coordinates of §4.5
    from skimage.transform import resize
    for c in range(2):
        plane = [s for a, s in enumerate(new_shape) if a != axis]
        slices = [resize(np.take(data[c], i, axis=axis), plane, 3, mode="edge", anti_aliasing=False)
                  for i in range(data.shape[axis + 1])]
        tmp = np.stack(slices, axis=axis)
        grid = np.mgrid[tuple(slice(0, s) for s in new_shape)].astype(float)
        for a in range(3):
            grid[a] = tmp.shape[a] / new_shape[a] * (grid[a] + 0.5) - 0.5
        expected = map_coordinates(tmp, grid, order=0, mode="nearest")
        assert np.array_equal(out[c], expected)


def test_cubic_output_is_clipped_to_input_range():
    data = np.zeros((1, 6, 6, 6), np.float32)
    data[0, 2:4, 2:4, 2:4] = 1.0
    out = resample_data_or_seg_to_shape(data, (11, 11, 11), (1, 1, 1), (0.55, 0.55, 0.55))
    assert out.min() >= 0.0 and out.max() <= 1.0   # spline overshoot bounded (Appendix G.11)


def test_seg_uses_batchgenerators_rule_and_keeps_dtype():
    rs = np.random.RandomState(3)
    seg = rs.randint(-1, 3, (1, 7, 9, 8)).astype(np.int8)
    out = resample_data_or_seg_to_shape(seg, (5, 12, 6), (1, 1, 1), (1.4, 0.75, 1.33), is_seg=True, order=1)
    expected = resize_segmentation(seg[0].astype(float), (5, 12, 6), 1)
    assert out.dtype == np.int8 and np.array_equal(out[0], expected)
    assert set(np.unique(out)) <= set(np.unique(seg))


def test_seg_separate_z_per_slice_then_nearest():
    rs = np.random.RandomState(4)
    seg = rs.randint(0, 3, (1, 4, 10, 10)).astype(np.float32)
    out = resample_data_or_seg_to_shape(seg, (7, 6, 6), (5.0, 1.0, 1.0), (3.0, 1.6, 1.6), is_seg=True, order=1)
    per_slice = np.stack([resize_segmentation(seg[0, i].astype(float), (6, 6), 1) for i in range(4)])
    idx = np.clip(np.floor(4 / 7 * (np.arange(7) + 0.5) - 0.5 + 0.5).astype(int), 0, 3)
    assert np.array_equal(out[0], per_slice[idx])
