"""Initial patch, forced foreground, patch boxes and crops (§5.2, §5.3, Appendix A.2, Appendix B)."""

import math

import numpy as np
import pytest

from pnnunet.training.sampling import (crop_with_padding, forced_foreground_mask, initial_patch_size, patch_bbox,
                                       rotation_and_mirroring)

DEG30 = (-math.pi / 6, math.pi / 6)
DEG180 = (-math.pi, math.pi)


# ---- §5.3 / Appendix B -----------------------------------------------------------------------------

@pytest.mark.parametrize("patch, rot, expected", [
    ((80, 192, 160), (DEG30, DEG30, DEG30), (194, 289, 210)),   # Appendix B, 3D ±30°
    ((40, 56, 40), (DEG30, DEG30, DEG30), (73, 80, 64)),        # Appendix B, Hippocampus 3d_fullres
    ((128, 128, 128), (DEG30, DEG30, DEG30), (205, 205, 205)),  # Appendix B
    ((56, 40), (DEG180, (0, 0), (0, 0)), (65, 65)),             # Appendix B, 2D ±180°
])
def test_initial_patch_size_appendix_b(patch, rot, expected):
    assert initial_patch_size(patch, *rot, scale_range=(0.85, 1.25)) == expected


@pytest.mark.parametrize("patch, expected", [
    ((40, 56, 40), (73, 80, 64)),
    ((80, 192, 160), (194, 289, 210)),
    ((128, 128, 128), (205, 205, 205)),
    ((56, 40), (65, 65)),
    ((20, 320, 256), (20, 376, 376)),  # Appendix B, prostate-like dummy 2D
])
def test_rotation_and_mirroring_initial_patch(patch, expected):
    assert rotation_and_mirroring(patch)["initial_patch_size"] == expected


def test_rotation_and_mirroring_rules():
    # §5.3: 2D ±180° if max/min ≤ 1.5 else ±15°; 3D dummy 2D if max/P[0] > 3 (then ±180° in plane)
    r = rotation_and_mirroring((56, 40))
    assert r["rotation"][0] == pytest.approx(DEG180) and r["mirror_axes"] == (0, 1) and not r["dummy_2d"]
    r = rotation_and_mirroring((320, 100))
    assert r["rotation"][0] == pytest.approx((-math.pi / 12, math.pi / 12))
    r = rotation_and_mirroring((40, 56, 40))
    assert not r["dummy_2d"] and r["mirror_axes"] == (0, 1, 2)
    assert all(a == pytest.approx(DEG30) for a in r["rotation"])
    r = rotation_and_mirroring((20, 320, 256))
    assert r["dummy_2d"] and r["rotation"][0] == pytest.approx(DEG180) and r["rotation"][1:] == ((0, 0), (0, 0))
    assert not rotation_and_mirroring((20, 60, 60))["dummy_2d"]  # exactly 3 is not > 3


# ---- forced foreground (§5.2, Appendix B) -----------------------------------------------------------

def test_forced_foreground_counts_appendix_b():
    counts = [sum(forced_foreground_mask(bs)) for bs in range(2, 13)]
    assert counts == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4]
    for bs in range(2, 13):  # always the last ones
        m = forced_foreground_mask(bs)
        assert m == sorted(m)


def test_forced_foreground_literal_rounding():
    # §5.2: round(250 * (1 - 0.33)) = round(167.4999…) = 167 → 83 forced (bs * 0.67 would give 168 → 82)
    assert sum(forced_foreground_mask(250)) == 250 - 167
    assert sum(forced_foreground_mask(9)) == 3 and forced_foreground_mask(9)[6:] == [True] * 3
    assert sum(forced_foreground_mask(366)) == 121  # §5.2 example
    assert sum(forced_foreground_mask(8, oversample=0.0)) == 0


# ---- patch boxes (Appendix A.2) ----------------------------------------------------------------------

def _starts(shape, crop, final, forced, locs, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    out = np.array([patch_bbox(shape, crop, final, forced, locs, rng)[0] for _ in range(n)])
    return out


@pytest.mark.parametrize("size, crop, final, lb, ub", [
    (100, 73, 40, -17, 44),   # pad 33: lb floor(-33/2) = -17, ub 100 + 16 + 1 - 73 = 44
    (30, 73, 40, -22, -21),   # image smaller than the patch: pad 73 - 30 = 43 → lb -22, ub 30 + 21 + 1 - 73
    (30, 40, 40, -5, -5),     # validation crop (P0 = P), image smaller: pad 10
    (40, 40, 40, 0, 0),       # exact fit
    (57, 40, 40, 0, 17),      # validation crop inside a larger image
])
def test_random_box_range(size, crop, final, lb, ub):
    starts = _starts((size,), (crop,), (final,), False, None)[:, 0]
    assert starts.min() == lb and starts.max() == ub
    assert set(starts.tolist()) == set(range(lb, ub + 1))  # uniform integers, inclusive


def test_box_end_is_start_plus_crop():
    lb, ub = patch_bbox((30, 50, 20), (73, 80, 64), (40, 56, 40), False, None, np.random.default_rng(1))
    assert [u - l for l, u in zip(lb, ub)] == [73, 80, 64]


def test_forced_box_lower_clamp_only():
    # a voxel at the far end: start = voxel - P0 // 2 = 99 - 36 = 63 > ub 44 (no upper clamp, Appendix G.6)
    locs = {1: np.array([[0, 99]])}
    assert patch_bbox((100,), (73,), (40,), True, locs, np.random.default_rng(0))[0] == [63]
    # a voxel at 0: max(lb = -17, 0 - 36) = -17
    locs = {1: np.array([[0, 0]])}
    assert patch_bbox((100,), (73,), (40,), True, locs, np.random.default_rng(0))[0] == [-17]


def test_forced_box_ignores_empty_classes_and_picks_classes_uniformly():
    locs = {1: np.zeros((0, 4), dtype=np.int64),
            2: np.array([[0, 50, 50, 50]]),
            3: np.array([[0, 20, 20, 20 + i] for i in range(1000)])}
    starts = _starts((100, 100, 100), (40, 40, 40), (40, 40, 40), True, locs, n=2000)
    from_2 = np.all(starts == [30, 30, 30], axis=1)
    from_3 = (starts[:, 0] == 0) & (starts[:, 1] == 0)
    assert np.all(from_2 | from_3)
    # the class is drawn first (uniformly), then a voxel: ~1/2 each despite 1 vs 1000 voxels
    assert 0.45 < from_2.mean() < 0.55


def test_forced_without_any_location_is_random():
    for locs in (None, {}, {1: np.zeros((0, 4), dtype=np.int64)}):
        starts = _starts((100,), (73,), (40,), True, locs, n=2000)[:, 0]
        assert starts.min() == -17 and starts.max() == 44


def test_ignore_label_annotated_key():
    annotated = (-1, 0, 1)
    locs = {1: np.array([[0, 80]]), annotated: np.array([[0, 10], [0, 11]])}
    # non-forced samples are centred on annotated voxels (§5.2 last sub-bullet)
    starts = _starts((100,), (20,), (20,), False, locs, n=500)[:, 0]
    assert set(starts.tolist()) == {0, 1}  # max(0, 10 - 10), 11 - 10
    # forced samples drop the annotated key when another class is present
    starts = _starts((100,), (20,), (20,), True, locs, n=500)[:, 0]
    assert set(starts.tolist()) == {70}
    # ... and use it when it is the only class with locations
    only = {1: np.zeros((0, 2), dtype=np.int64), annotated: np.array([[0, 50]])}
    assert set(_starts((100,), (20,), (20,), True, only, n=50)[:, 0].tolist()) == {40}
    # an empty annotated list (no annotated voxel in the case) falls back to random
    empty = {1: np.array([[0, 80]]), annotated: np.zeros((0, 2), dtype=np.int64)}
    assert len(set(_starts((100,), (20,), (20,), False, empty, n=500)[:, 0].tolist())) > 50


# ---- crops -------------------------------------------------------------------------------------------

def test_crop_with_padding_matches_numpy_pad():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 7, 9, 5)).astype(np.float32)
    bbox = [[-3, 6], [2, 14], [-1, 4]]
    pad = [(0, 0)] + [(max(0, -lo), max(0, hi - s)) for (lo, hi), s in zip(bbox, a.shape[1:])]
    ref = np.pad(a, pad, constant_values=0)
    ref = ref[:, :9, 2:14, :5]  # shifted by the pads: [-3,6) → [0,9), [2,14) → [2,14), [-1,4) → [0,5)
    out = crop_with_padding(a, bbox, 0)
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == np.float32


def test_crop_with_padding_seg_pad_and_dtype():
    seg = np.ones((1, 4, 4, 4), dtype=np.int8)
    out = crop_with_padding(seg, [[-2, 2], [0, 4], [3, 7]], -1, dtype=np.int16)
    assert out.dtype == np.int16 and out.shape == (1, 4, 4, 4)
    assert (out[:, :2] == -1).all() and (out[:, 2:, :, :1] == 1).all() and (out[:, 2:, :, 1:] == -1).all()
    # a box entirely outside is all padding
    assert (crop_with_padding(seg, [[10, 12], [0, 2], [0, 2]], -1) == -1).all()


def test_crop_reads_only_the_box_from_a_memmap(tmp_path):
    big = np.arange(2 * 60 * 70 * 80, dtype=np.float32).reshape(2, 60, 70, 80)
    np.save(tmp_path / "big.npy", big)
    mm = np.load(tmp_path / "big.npy", mmap_mode="r")
    out = crop_with_padding(mm, [[10, 20], [-5, 5], [75, 85]], 0)
    assert type(out) is np.ndarray and not isinstance(out, np.memmap)
    assert out.shape == (2, 10, 10, 10) and out.nbytes == 2 * 1000 * 4  # the box only, not the volume
    assert not np.shares_memory(out, mm)
    np.testing.assert_array_equal(out[:, :, 5:, :5], big[:, 10:20, 0:5, 75:80])
    assert (out[:, :, :5] == 0).all() and (out[:, :, :, 5:] == 0).all()


class _IndexSpy:
    """Array stand-in that records how it is indexed."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.keys = array, array.shape, array.dtype, []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.array[key]


def test_crop_indexes_the_memmap_once_with_the_clipped_box(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 50, 60, 70), dtype=np.float32))
    spy = _IndexSpy(np.load(tmp_path / "a.npy", mmap_mode="r"))
    crop_with_padding(spy, [[-4, 36], [10, 66], [40, 80]], 0)
    assert spy.keys == [(slice(None), slice(0, 36), slice(10, 60), slice(40, 70))]
