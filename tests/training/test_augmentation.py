"""Augmentation pipeline and background batch iterators (§5.2, §5.4 ≤ v2.4 / [v1], §5.5)."""

import multiprocessing
import random
import time

import numpy as np
import pytest
from batchgenerators.augmentations.utils import resize_segmentation
from batchgenerators.transforms.spatial_transforms import SpatialTransform

from pnnunet.plans import ConfigurationPlan
from pnnunet.training.augmentation import (Convert2DTo3D, Convert3DTo2D, PerBatchRandomState, MaskOutsideSeg,
                                           make_batch_iterators, training_transforms, validation_transforms)
from pnnunet.training.dataloading import NNUNetPatchLoader
from pnnunet.training.deep_supervision import ds_scales
from pnnunet.training.sampling import rotation_and_mirroring
from tests.training.test_dataloading import write_case

STRIDES_3D = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
LABELS = {0, 1, 3}


def make_plan(patch, strides, batch_size=3, use_mask=(False,), previous_stage=None, name="3d_fullres"):
    return ConfigurationPlan(name=name, data_identifier="test", batch_size=batch_size, patch_size=tuple(patch),
                             spacing=(1.0,) * len(patch), normalization_schemes=("ZScoreNormalization",),
                             use_mask_for_norm=tuple(use_mask), batch_dice=False,
                             arch_kwargs={"n_stages": len(strides), "strides": strides},
                             previous_stage=previous_stage)


@pytest.fixture
def dataset(tmp_path):
    """Three cases with labels 1 and 3 (no 2: an interpolated label would show up as 2)."""
    for i, shape in enumerate([(30, 40, 36), (20, 26, 22), (12, 14, 10)]):
        c = [s // 2 for s in shape]
        write_case(tmp_path, f"c{i}", shape=shape, classes=(1, 3),
                   blobs={1: (slice(2, c[0]), slice(3, c[1] + 4), slice(2, c[2] + 3)),
                          3: (slice(c[0], c[0] + 4), slice(c[1] - 3, c[1] + 2), slice(c[2], c[2] + 5))})
    return tmp_path, ["c0", "c1", "c2"]


def _transforms_for(patch, strides, use_mask=None, force_spatial=False):
    aug = rotation_and_mirroring(patch)
    tf = training_transforms(patch, aug["rotation"], aug["dummy_2d"], aug["mirror_axes"], ds_scales(strides),
                             use_mask)
    if force_spatial:  # rotate and scale every sample, so the interpolation path always runs
        for t in tf.transforms:
            if isinstance(t, SpatialTransform):
                t.p_rot_per_sample = t.p_scale_per_sample = 1.0
    return aug, tf


@pytest.mark.parametrize("patch, strides, expected_targets", [
    ((16, 24, 16), STRIDES_3D, [(16, 24, 16), (8, 12, 8), (4, 6, 4)]),   # §5.5: scales 1, 1/2, 1/4
    ((24, 20), [[1, 1], [2, 2], [2, 2]], [(24, 20), (12, 10)]),          # 2D
    ((4, 16, 16), [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [(4, 16, 16), (4, 8, 8)]),  # dummy 2D
])
def test_training_batch_shapes_dtypes_and_labels(dataset, patch, strides, expected_targets):
    folder, ids = dataset
    aug, tf = _transforms_for(patch, strides, force_spatial=True)
    assert aug["dummy_2d"] == (patch == (4, 16, 16))
    loader = NNUNetPatchLoader(folder, ids, 3, aug["initial_patch_size"], patch, seed=0)
    tf = PerBatchRandomState(tf, seed=0)  # v1 transforms draw from the global random states
    seen = set()
    for _ in range(8):
        out = tf(**next(loader))
        assert out["data"].shape == (3, 1, *patch) and out["data"].dtype == np.float32
        assert np.isfinite(out["data"]).all()
        assert "seg" not in out and len(out["target"]) == len(expected_targets)
        for t, shape in zip(out["target"], expected_targets):
            assert t.shape == (3, 1, *shape) and t.dtype == np.int16
        labels = set(np.unique(out["target"][0]).tolist())
        assert labels <= LABELS, f"interpolated or padding labels {labels - LABELS}"
        seen |= labels
    assert seen == LABELS


def test_target_downsampling_matches_order0_resize(dataset):
    """DS targets equal batchgenerators' order-0 resize_segmentation, as upstream ≤ v2.4 computed them."""
    folder, ids = dataset
    patch = (16, 24, 16)
    loader = NNUNetPatchLoader(folder, ids, 2, patch, patch, seed=1)
    out = validation_transforms(ds_scales(STRIDES_3D))(**next(loader))
    full = out["target"][0]
    for t, scale in zip(out["target"][1:], ds_scales(STRIDES_3D)[1:]):
        new_shape = [round(s * f) for s, f in zip(patch, scale)]
        ref = np.stack([resize_segmentation(full[b, 0], new_shape, 0) for b in range(2)])[:, None]
        np.testing.assert_array_equal(t, ref)


def test_validation_transforms_remove_padding_label(tmp_path):
    write_case(tmp_path, "small", shape=(6, 7, 5), blobs={1: (slice(1, 3), slice(1, 3), slice(1, 3))}, classes=(1,))
    loader = NNUNetPatchLoader(tmp_path, ["small"], 2, (8, 8, 8), (8, 8, 8), seed=0)
    batch = next(loader)
    assert (batch["seg"] == -1).any()
    out = validation_transforms([[1, 1, 1], [0.5, 0.5, 0.5]])(**batch)
    assert set(np.unique(out["target"][0]).tolist()) == {0, 1}
    assert out["target"][1].shape == (2, 1, 4, 4, 4)
    assert out["keys"] == ["small", "small"]


def test_mask_for_norm_zeroes_outside(tmp_path):
    data = np.ones((2, 2, 4, 4, 4), dtype=np.float32)
    seg = np.zeros((2, 1, 4, 4, 4), dtype=np.int16)
    seg[:, :, :2] = -1
    out = MaskOutsideSeg([1])(data=data, seg=seg)
    assert (out["data"][:, 1, :2] == 0).all() and (out["data"][:, 1, 2:] == 1).all()
    assert (out["data"][:, 0] == 1).all()  # channel 0 not masked
    _, tf = _transforms_for((16, 24, 16), STRIDES_3D, use_mask=(True,))
    assert any(isinstance(t, MaskOutsideSeg) for t in tf.transforms)
    _, tf = _transforms_for((16, 24, 16), STRIDES_3D, use_mask=(False,))
    assert not any(isinstance(t, MaskOutsideSeg) for t in tf.transforms)


def test_dummy_2d_conversion_round_trip():
    x = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.float32).reshape(2, 3, 4, 5, 6)
    d = Convert3DTo2D(("data",))(data=x.copy())
    assert d["data"].shape == (2, 12, 5, 6)
    np.testing.assert_array_equal(Convert2DTo3D(("data",))(**d)["data"], x)


def test_cascade_plan_needs_previous_stage_folder(dataset):
    folder, ids = dataset
    with pytest.raises(ValueError, match="previous_stage_folder"):
        make_batch_iterators(folder, make_plan((8, 8, 8), STRIDES_3D, previous_stage="3d_lowres"), ids, ids, 0, 0)


# ---- iterators -----------------------------------------------------------------------------------

def test_single_threaded_iterators(dataset):
    folder, ids = dataset
    plan = make_plan((16, 24, 16), STRIDES_3D)
    state, py_state = np.random.get_state(), random.getstate()
    tr, va = make_batch_iterators(folder, plan, ids[:2], ids[2:], 0, seed=3)
    with tr, va:
        b = next(tr)
        v = next(va)
    assert b["data"].shape == (3, 1, 16, 24, 16) and [t.shape[2:] for t in b["target"]] == \
        [(16, 24, 16), (8, 12, 8), (4, 6, 4)]
    assert set(b["keys"]) <= {"c0", "c1"} and set(v["keys"]) == {"c2"}
    assert v["data"].shape == (3, 1, 16, 24, 16)
    # the caller's global random states are left alone
    assert np.array_equal(state[1], np.random.get_state()[1]) and state[2] == np.random.get_state()[2]
    assert random.getstate() == py_state
    # same seed → same batches
    tr2, va2 = make_batch_iterators(folder, plan, ids[:2], ids[2:], 0, seed=3)
    b2 = next(tr2)
    assert b2["keys"] == b["keys"] and np.array_equal(b2["data"], b["data"])
    with pytest.raises(RuntimeError):
        next(tr)  # closed


def test_no_deep_supervision_gives_one_target(dataset):
    folder, ids = dataset
    tr, va = make_batch_iterators(folder, make_plan((16, 24, 16), STRIDES_3D), ids, ids, 0, seed=0,
                                  deep_supervision=False)
    with tr, va:
        assert [t.shape for t in next(tr)["target"]] == [(3, 1, 16, 24, 16)]


def test_2d_plan_iterators(dataset):
    folder, ids = dataset
    plan = make_plan((24, 20), [[1, 1], [2, 2], [2, 2]], name="2d")
    tr, va = make_batch_iterators(folder, plan, ids, ids, 0, seed=0)
    with tr, va:
        b, v = next(tr), next(va)
    assert b["data"].shape == (3, 1, 24, 20) and [t.shape for t in b["target"]] == [(3, 1, 24, 20), (3, 1, 12, 10)]
    assert v["data"].shape == (3, 1, 24, 20)


def _children():
    return {p.pid for p in multiprocessing.active_children()}


def test_workers_yield_different_batches_and_shut_down(dataset):
    folder, ids = dataset
    plan = make_plan((16, 24, 16), STRIDES_3D, batch_size=4)
    before = _children()
    tr, va = make_batch_iterators(folder, plan, ids, ids, 2, seed=7)
    try:
        batches = [next(tr) for _ in range(4)]  # round robin: worker 0, 1, 0, 1
        v = next(va)
        assert len(_children() - before) == 3  # 2 training workers, max(1, 2 // 2) validation worker
    finally:
        tr.close()
        va.close()
    assert _children() == before
    assert batches[0]["data"].shape == (4, 1, 16, 24, 16) and v["data"].shape == (4, 1, 16, 24, 16)
    assert not np.array_equal(batches[0]["data"], batches[1]["data"])
    assert batches[0]["keys"] != batches[1]["keys"] or not np.array_equal(batches[0]["target"][0],
                                                                           batches[1]["target"][0])
    # the same seed reproduces the same worker streams
    tr2, va2 = make_batch_iterators(folder, plan, ids, ids, 2, seed=7)
    with tr2, va2:
        again = [next(tr2) for _ in range(2)]
    for a, b in zip(batches, again):
        assert a["keys"] == b["keys"] and np.array_equal(a["data"], b["data"])
    assert _children() == before


def test_close_mid_epoch_stops_busy_workers(dataset):
    folder, ids = dataset
    before = _children()
    tr, va = make_batch_iterators(folder, make_plan((16, 24, 16), STRIDES_3D, batch_size=6), ids, ids, 2, seed=1)
    next(tr)  # workers running and filling their queues
    start = time.time()
    tr.close()
    va.close()  # started, never read
    assert time.time() - start < 15
    assert _children() == before


def test_workers_start_before_the_first_batch_is_asked_for(dataset):
    """Workers are forks: started at once, while the trainer is small, not after its first iterations
    have grown its heap (issue 16)."""
    folder, ids = dataset
    plan = make_plan((16, 24, 16), STRIDES_3D, batch_size=2)
    before = _children()
    tr, va = make_batch_iterators(folder, plan, ids, ids, 2, seed=7, start=False)
    with tr, va:
        assert _children() == before
    tr, va = make_batch_iterators(folder, plan, ids, ids, 2, seed=7)
    with tr, va:
        assert len(_children() - before) == 3
        tr.start()  # idempotent
        assert len(_children() - before) == 3
    assert _children() == before
    with pytest.raises(RuntimeError, match="closed"):
        tr.start()


def test_one_queued_batch_per_worker_gives_the_same_batches(dataset):
    """queued_per_worker=1 (CPU training, issue 16): one waiting batch per worker queue instead of three,
    the same batches in the same order (the queues are read round-robin)."""
    folder, ids = dataset
    plan = make_plan((16, 24, 16), STRIDES_3D, batch_size=2)
    tr, va = make_batch_iterators(folder, plan, ids, ids, 2, seed=5, start=False, queued_per_worker=1)
    assert tr._augmenter.num_cached_per_queue == 1 and va._augmenter.num_cached_per_queue == 1
    tr.close()
    va.close()
    runs = []
    for queued in (1, None):
        tr, va = make_batch_iterators(folder, plan, ids, ids, 2, seed=5, queued_per_worker=queued)
        with tr, va:
            runs.append([next(tr) for _ in range(3)] + [next(va)])
    for a, b in zip(*runs):
        assert a["keys"] == b["keys"] and np.array_equal(a["data"], b["data"])
    with pytest.raises(ValueError, match="queued_per_worker"):
        make_batch_iterators(folder, plan, ids, ids, 2, seed=5, start=False, queued_per_worker=0)


def test_augmented_batches_depend_on_seed_and_index_only(dataset):
    """Issue 14 (bit-exact resume): worker processes and a stream started mid-way (a resumed training) give the
    batches, augmentation included, of the single-process stream from batch 0."""
    folder, ids = dataset
    plan = make_plan((16, 24, 16), STRIDES_3D, batch_size=2)
    tr, va = make_batch_iterators(folder, plan, ids, ids, 0, seed=5)
    with tr, va:
        ref = [next(tr) for _ in range(4)]
    tr, va = make_batch_iterators(folder, plan, ids, ids, 2, seed=5, first_train_batch=2)
    with tr, va:
        late = [next(tr) for _ in range(2)]
    for a, b in zip(ref[2:], late):
        assert a["batch_index"] == b["batch_index"] and a["keys"] == b["keys"]
        assert np.array_equal(a["data"], b["data"]) and np.array_equal(a["target"][0], b["target"][0])
    assert not np.array_equal(ref[0]["data"], ref[1]["data"])
