"""Largest connected component (pnnunet.postprocessing.components; reference §8.4).

Reference: upstream keeps ``skimage.measure.label(mask, connectivity=None)`` components whose size
equals the maximum (acvl_utils ``remove_all_but_largest_component``); the skimage-based function
below re-implements that rule and is compared against ours on constructed and random masks.
"""

import numpy as np
import pytest
from skimage.measure import label as sk_label

from pnnunet.postprocessing.components import largest_component_mask, remove_all_but_largest_component


def skimage_reference(seg: np.ndarray, labels: list, background: int = 0) -> np.ndarray:
    mask = np.isin(seg, labels)
    lab = sk_label(mask, connectivity=None)  # full connectivity, as upstream
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.zeros(mask.shape, dtype=bool)
    if len(sizes):
        keep = np.isin(lab, [i + 1 for i, s in enumerate(sizes) if s == sizes.max()])
    out = seg.copy()
    out[mask & ~keep] = background
    return out


def test_3d_keeps_largest_and_sets_rest_to_background():
    seg = np.zeros((5, 5, 5), dtype=np.uint8)
    seg[0, 0, 0:3] = 1          # 3 voxels
    seg[4, 4, 0:2] = 1          # 2 voxels, far away
    seg[2, 2, 2] = 2            # other label, untouched when only label 1 is processed
    out = remove_all_but_largest_component(seg, 1)
    expected = seg.copy()
    expected[4, 4, 0:2] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == seg.dtype


def test_3d_corner_neighbours_are_connected():
    # (0,0,0)-(0,0,1) and a voxel touching (0,0,1) only at a corner: 26-connectivity joins them (size 3),
    # so the separate pair (size 2) is the one removed
    seg = np.zeros((4, 4, 6), dtype=np.uint8)
    seg[0, 0, 0:2] = 1
    seg[1, 1, 2] = 1
    seg[3, 3, 4:6] = 1
    out = remove_all_but_largest_component(seg, [1])
    assert out[1, 1, 2] == 1 and out[0, 0, 0] == 1
    assert out[3, 3, 4:6].sum() == 0


def test_2d_diagonal_neighbours_are_connected():
    seg = np.array([[1, 0, 0, 0, 0],
                    [0, 1, 0, 0, 0],
                    [0, 0, 1, 0, 1],
                    [0, 0, 0, 0, 1]], dtype=np.uint8)
    out = remove_all_but_largest_component(seg, 1)
    expected = seg.copy()
    expected[2:4, 4] = 0  # the diagonal chain (3 pixels) is one component under 8-connectivity
    np.testing.assert_array_equal(out, expected)


def test_ties_keep_all_tied_components():
    seg = np.zeros((6, 6), dtype=np.int16)
    seg[0, 0:2] = 1   # size 2
    seg[5, 4:6] = 1   # size 2
    seg[3, 0] = 1     # size 1
    out = remove_all_but_largest_component(seg, 1)
    assert out[0, 0:2].tolist() == [1, 1] and out[5, 4:6].tolist() == [1, 1]
    assert out[3, 0] == 0


def test_union_of_labels_and_regions_and_custom_background():
    seg = np.zeros((3, 8), dtype=np.uint8)
    seg[1, 0:2] = 1
    seg[1, 2:4] = 2     # touches label 1: together one object of size 4
    seg[1, 6:8] = 2     # separate, size 2
    for spec in ([1, 2], (1, 2), [(1, 2)]):
        out = remove_all_but_largest_component(seg, spec, background=7)
        assert out[1, 6:8].tolist() == [7, 7]
        np.testing.assert_array_equal(out[1, 0:4], [1, 1, 2, 2])
    # label 2 alone: the two label-2 objects tie (2 voxels each) → nothing removed
    np.testing.assert_array_equal(remove_all_but_largest_component(seg, 2), seg)


def test_input_not_modified_and_empty_mask():
    seg = np.zeros((3, 3, 3), dtype=np.uint8)
    seg[0, 0, 0] = 1
    seg[2, 2, 2] = 1
    seg[2, 2, 1] = 1
    before = seg.copy()
    remove_all_but_largest_component(seg, 1)
    np.testing.assert_array_equal(seg, before)
    np.testing.assert_array_equal(remove_all_but_largest_component(seg, 3), seg)
    assert not largest_component_mask(np.zeros((2, 2), dtype=bool)).any()


def test_rejects_other_dimensions():
    with pytest.raises(ValueError):
        largest_component_mask(np.ones(5, dtype=bool))


@pytest.mark.parametrize("shape, density", [((9, 11, 7), 0.25), ((1, 17, 13), 0.35), ((15, 12), 0.4),
                                            ((6, 6, 6), 0.1)])
def test_equals_skimage_reference_on_random_label_maps(shape, density):
    rng = np.random.default_rng(1234)
    for _ in range(20):
        seg = (rng.random(shape) < density).astype(np.uint8) * rng.integers(1, 4, size=shape).astype(np.uint8)
        for labels in ([1], [2], [1, 2], [1, 2, 3]):
            np.testing.assert_array_equal(remove_all_but_largest_component(seg, labels),
                                          skimage_reference(seg, labels))
