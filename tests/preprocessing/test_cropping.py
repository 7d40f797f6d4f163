"""Crop to non-zero (reference §4.2)."""

import numpy as np

from pnnunet.preprocessing.cropping import create_nonzero_mask, crop_to_nonzero, get_bbox_from_mask


def _two_channel_case():
    data = np.zeros((2, 6, 7, 8), np.float32)
    data[0, 1:3, 2:5, 3:4] = 5.0
    data[1, 4, 6, 7] = -2.0  # non-zero in the second channel only: still inside the mask
    return data


def test_bbox_is_half_open_union_over_channels():
    data = _two_channel_case()
    _, _, bbox = crop_to_nonzero(data)
    assert bbox == [[1, 5], [2, 7], [3, 8]]


def test_all_zero_image_keeps_full_extent():
    data = np.zeros((1, 3, 4, 5), np.float32)
    cropped, seg, bbox = crop_to_nonzero(data)
    assert bbox == [[0, 3], [0, 4], [0, 5]]
    assert cropped.shape == data.shape
    assert seg.dtype == np.int8 and np.all(seg == -1)


def test_bbox_of_mask_in_2d_and_3d():
    mask = np.zeros((5, 6), bool)
    mask[2, 1] = mask[3, 4] = True
    assert get_bbox_from_mask(mask) == [[2, 4], [1, 5]]


def test_holes_are_filled():
    data = np.zeros((1, 7, 7, 7), np.float32)
    data[0, 1:6, 1:6, 1:6] = 1.0
    data[0, 3, 3, 3] = 0.0  # enclosed hole
    mask = create_nonzero_mask(data)
    assert mask[3, 3, 3] and not mask[0, 0, 0]


def test_seg_outside_mask_marked_minus_one_but_labels_kept():
    data = np.zeros((1, 5, 5, 5), np.float32)
    data[0, 1:4, 1:4, 1:4] = 1.0
    data[0, 2, 2, 2] = 0.0        # hole: inside the filled mask, stays 0 in seg
    data[0, 1, 1, 1] = 0.0        # corner of the cube: not enclosed, becomes -1
    seg = np.zeros((1, 5, 5, 5), np.float32)
    seg[0, 1, 1, 2] = 2.0         # labelled voxel inside the mask
    seg[0, 1, 1, 1] = 1.0         # labelled voxel outside the mask: label kept
    seg_in = seg.copy()
    cropped, cseg, bbox = crop_to_nonzero(data, seg)
    assert bbox == [[1, 4], [1, 4], [1, 4]]
    assert np.array_equal(seg, seg_in), "input seg must not be modified"
    assert cseg[0, 1, 1, 1] == 0          # hole -> inside
    assert cseg[0, 0, 0, 0] == 1          # label outside the mask is kept
    assert cseg[0, 0, 0, 1] == 2
    expected_minus_one = (cropped[0] == 0) & ~create_nonzero_mask(cropped) & (seg_in[0, 1:4, 1:4, 1:4] == 0)
    assert np.array_equal(cseg[0] == -1, expected_minus_one)


def test_generated_seg_without_input_seg():
    data = _two_channel_case()
    cropped, seg, _ = crop_to_nonzero(data)
    assert seg.dtype == np.int8 and seg.shape == (1, *cropped.shape[1:])
    assert set(np.unique(seg)) == {-1, 0}
    assert seg[0, 0, 0, 0] == 0 and seg[0, -1, -1, -1] == 0  # both channels' voxels are inside
