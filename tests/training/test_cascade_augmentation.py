"""Cascade training input (reference §5.2, §5.4 step 14): the previous stage's segmentation is
cropped with the labels' box, becomes one-hot input channels, and is augmented by morphology and
connected-component removal."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import ball, disk

from pnnunet.errors import PnnunetError
from pnnunet.preprocessing.previous_stage import (append_previous_stage, check_previous_stage_available,
                                                  one_hot_foreground, save_next_stage_segmentation)
from pnnunet.training.augmentation import make_batch_iterators
from pnnunet.training.cascade_augmentation import (MoveSegAsOneHotToData, RandomBinaryOperator,
                                                   RemoveRandomConnectedComponent, binary_closing, binary_dilation,
                                                   binary_erosion, binary_opening, label_components)
from pnnunet.training.dataloading import NNUNetPatchLoader
from tests.training.test_augmentation import STRIDES_3D, make_plan
from tests.training.test_dataloading import write_case


def _random_mask(shape, seed):
    rng = np.random.default_rng(seed)
    return ndimage.binary_opening(rng.random(shape) > 0.6, iterations=1) | (rng.random(shape) > 0.97)


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("shape, strel", [((17, 19, 15), ball), ((31, 27), disk)])
def test_morphology_equals_ball_operators(radius, shape, strel):
    """Integer radii give exactly scipy's operators with skimage's ball/disk (outside: background for
    dilation, foreground for erosion, as upstream's zero-padded convolution)."""
    mask = _random_mask(shape, radius)
    s = strel(radius).astype(bool)
    dil = ndimage.binary_dilation(mask, s)
    ero = ndimage.binary_erosion(mask, s, border_value=1)
    np.testing.assert_array_equal(binary_dilation(mask, radius), dil)
    np.testing.assert_array_equal(binary_erosion(mask, radius), ero)
    np.testing.assert_array_equal(binary_opening(mask, radius),
                                  ndimage.binary_dilation(ero, s))
    np.testing.assert_array_equal(binary_closing(mask, radius),
                                  ndimage.binary_erosion(dil, s, border_value=1))


def test_morphology_of_empty_and_full_masks():
    empty, full = np.zeros((5, 6, 7), bool), np.ones((5, 6, 7), bool)
    assert not binary_dilation(empty, 3).any() and not binary_erosion(empty, 3).any()
    assert binary_dilation(full, 3).all() and binary_erosion(full, 3).all()


def test_label_components_full_connectivity():
    m = np.zeros((6, 6, 6), bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # corner neighbours: one component with 26-connectivity
    m[4, 4, 4] = True
    labels, sizes = label_components(m)
    assert sorted(sizes[1:].tolist()) == [1, 2]
    m2 = np.zeros((5, 5), bool)
    m2[0, 0] = m2[1, 1] = True  # 8-connected in 2D
    assert label_components(m2)[1][1:].tolist() == [2]


def test_one_hot_foreground_and_append():
    seg = np.array([[-1, 0, 1], [3, 1, 0]], dtype=np.int16)
    oh = one_hot_foreground(seg, [1, 3])
    np.testing.assert_array_equal(oh[0], [[0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(oh[1], [[0, 0, 0], [1, 0, 0]])
    data = np.full((2, 2, 3), 5, np.float32)
    out = append_previous_stage(data, seg[None], [1, 3])
    assert out.shape == (4, 2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[2:], oh)
    with pytest.raises(PnnunetError, match="shape"):
        append_previous_stage(data, seg[:, :2], [1, 3])


def test_move_seg_as_one_hot_to_data():
    data = np.zeros((2, 1, 4, 4), np.float32)
    seg = np.zeros((2, 2, 4, 4), np.int16)
    seg[:, 1] = [0, 1, 3, -1]  # channel 1: the previous stage, along the last axis
    out = MoveSegAsOneHotToData([1, 3])(data=data, seg=seg)
    assert out["data"].shape == (2, 3, 4, 4) and out["seg"].shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(out["data"][0, 1, 0], [0, 1, 0, 0])
    np.testing.assert_array_equal(out["data"][0, 2, 0], [0, 0, 1, 0])


def _one_hot_batch(seed=0):
    seg = np.zeros((3, 20, 22, 18), np.int16)
    seg[:, 3:9, 4:12, 5:10] = 1
    seg[:, 12:15, 12:18, 8:14] = 2
    seg[:, 16, 2, 2] = 2  # a tiny component of label 2
    data = np.concatenate([np.random.default_rng(seed).random((3, 1, 20, 22, 18), dtype=np.float32),
                           np.stack([one_hot_foreground(s, [1, 2]) for s in seg])], axis=1)
    return data


def test_random_binary_operator_keeps_channels_exclusive():
    np.random.seed(0)
    data = _one_hot_batch()
    before = data.copy()
    out = RandomBinaryOperator([-2, -1], p_per_sample=1.0, p_per_label=1.0)(data=data)["data"]
    np.testing.assert_array_equal(out[:, 0], before[:, 0])  # image channel untouched
    assert set(np.unique(out[:, 1:])) <= {0.0, 1.0}
    assert out[:, 1:].sum(axis=1).max() <= 1  # a voxel gained by one label is taken from the other
    assert not np.array_equal(out[:, 1:], before[:, 1:])
    np.random.seed(0)
    same = RandomBinaryOperator([-2, -1], p_per_sample=0.0)(data=_one_hot_batch())["data"]
    np.testing.assert_array_equal(same, before)


def test_remove_random_component_removes_one_small_component():
    np.random.seed(1)
    data = _one_hot_batch()
    before = data.copy()
    out = RemoveRandomConnectedComponent([-1], p_per_sample=1.0, p_per_label=1.0,
                                         max_fraction=0.15)(data=data)["data"]
    np.testing.assert_array_equal(out[:, :2], before[:, :2])
    for b in range(3):
        removed = before[b, 2].sum() - out[b, 2].sum()
        assert removed in (1, 6 * 3 * 6)  # the single voxel or the 3x6x6 block, whole
    # a component covering more than the fraction is never removed
    big = _one_hot_batch()
    out = RemoveRandomConnectedComponent([-2], p_per_sample=1.0, p_per_label=1.0, max_fraction=0.01)(data=big)
    np.testing.assert_array_equal(out["data"], _one_hot_batch())


# ---- loader and iterators -------------------------------------------------------------------------

@pytest.fixture
def cascade_dataset(tmp_path):
    """Preprocessed cases plus 'previous stage' segmentations equal to their labels."""
    pre, prev = tmp_path / "pre", tmp_path / "prev"
    ids = []
    for i, shape in enumerate([(30, 40, 36), (20, 26, 22)]):
        c = [s // 2 for s in shape]
        seg = write_case(pre, f"c{i}", shape=shape, classes=(1, 3),
                         blobs={1: (slice(2, c[0]), slice(3, c[1] + 4), slice(2, c[2] + 3)),
                                3: (slice(c[0], c[0] + 4), slice(c[1] - 3, c[1] + 2), slice(c[2], c[2] + 5))})
        save_next_stage_segmentation(prev, f"c{i}", seg[0].astype(np.uint8))
        ids.append(f"c{i}")
    return pre, prev, ids


def test_loader_crops_previous_stage_with_the_same_box(cascade_dataset):
    pre, prev, ids = cascade_dataset
    loader = NNUNetPatchLoader(pre, ids, 4, (24, 28, 20), (16, 20, 12), seed=2, previous_stage_folder=prev)
    batch = next(loader)
    assert batch["seg"].shape == (4, 2, 24, 28, 20)
    np.testing.assert_array_equal(batch["seg"][:, 0], batch["seg"][:, 1])  # prev stage == labels here


def test_cascade_iterators(cascade_dataset):
    pre, prev, ids = cascade_dataset
    plan = make_plan((16, 24, 16), STRIDES_3D, previous_stage="3d_lowres", name="3d_cascade_fullres")
    tr, va = make_batch_iterators(pre, plan, ids, ids, 0, seed=4, previous_stage_folder=prev,
                                  foreground_labels=[1, 3])
    with tr, va:
        v = next(va)
        assert v["data"].shape == (3, 3, 16, 24, 16)
        target = v["target"][0][:, 0]
        # no augmentation in validation: the one-hot channels are exactly the labels
        np.testing.assert_array_equal(v["data"][:, 1], target == 1)
        np.testing.assert_array_equal(v["data"][:, 2], target == 3)
        for _ in range(3):
            t = next(tr)
            assert t["data"].shape == (3, 3, 16, 24, 16) and t["target"][0].shape == (3, 1, 16, 24, 16)
            assert set(np.unique(t["data"][:, 1:])) <= {0.0, 1.0}
            assert t["data"][:, 1:].sum(axis=1).max() <= 1


def test_missing_previous_stage_names_cases_and_fix(cascade_dataset, tmp_path):
    _, prev, ids = cascade_dataset
    check_previous_stage_available(prev, ids, "3d_lowres", "3d_cascade_fullres")
    with pytest.raises(PnnunetError, match=r"c7.*\n.*pnnunet_train 3d_lowres"):
        check_previous_stage_available(prev, ids + ["c7"], "3d_lowres", "3d_cascade_fullres")


@pytest.mark.parametrize("fold, hint, not_hint", [
    ("all", "pnnunet_train 3d_lowres all", "FOLD for FOLD in 0 1 2 3 4"),
    (0, "pnnunet_train 3d_lowres FOLD for FOLD in 0 1 2 3 4", "pnnunet_train 3d_lowres all"),
    (None, "pnnunet_train 3d_lowres FOLD for FOLD in 0 1 2 3 4", "pnnunet_train 3d_lowres all"),
])
def test_missing_previous_stage_hint_follows_the_fold(tmp_path, fold, hint, not_hint):
    # fold all of the cascade needs every case, which only the lowres stage's fold all validates
    with pytest.raises(PnnunetError) as err:
        check_previous_stage_available(tmp_path, ["c1", "c2"], "3d_lowres", "3d_cascade_fullres", fold)
    fix = str(err.value).split("fix:")[1]
    assert hint in fix and not_hint not in fix
