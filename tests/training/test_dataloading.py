"""Patch loader: shapes, padding, foreground oversampling, 2D slices, worker seeding (§5.2, Appendix A.2)."""

import numpy as np
import pytest
from batchgenerators.augmentations.crop_and_pad_augmentations import center_crop

from pnnunet.preprocessing.class_locations import sample_foreground_locations
from pnnunet.preprocessing.storage import save_preprocessed_case
from pnnunet.training.dataloading import NNUNetPatchLoader


def coordinate_image(shape):
    """float32 (1, X, Y, Z) whose value encodes the voxel: 10000·x + 100·y + z + 1 (0 = padding)."""
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (10000 * x + 100 * y + z + 1).astype(np.float32)[None]


def write_case(folder, case, shape=(30, 40, 36), blobs=None, classes=(1, 2)):
    """A synthetic preprocessed case; ``blobs``: {label: (slice, slice, slice)}."""
    seg = np.zeros((1, *shape), dtype=np.int16)
    for label, box in (blobs or {}).items():
        seg[(0, *box)] = label
    props = {"spacing": [1.0, 1.0, 1.0],
             "class_locations": sample_foreground_locations(seg, list(classes))}
    save_preprocessed_case(folder, case, coordinate_image(shape), seg, props)
    return seg


@pytest.fixture
def dataset(tmp_path):
    # label 1: a big block, label 2: a single voxel; both far from the borders (no clamping)
    write_case(tmp_path, "a", blobs={1: (slice(10, 20), slice(15, 25), slice(12, 24)), 2: (15, 30, 8)})
    write_case(tmp_path, "b", blobs={1: (slice(12, 18), slice(10, 30), slice(15, 20)), 2: (14, 12, 25)})
    return tmp_path, ["a", "b"]


def test_batch_shapes_and_dtypes(dataset):
    folder, ids = dataset
    loader = NNUNetPatchLoader(folder, ids, 5, (24, 28, 20), (16, 20, 12), seed=1)
    batch = next(loader)
    assert batch["data"].shape == (5, 1, 24, 28, 20) and batch["data"].dtype == np.float32
    assert batch["seg"].shape == (5, 1, 24, 28, 20) and batch["seg"].dtype == np.int16
    assert len(batch["keys"]) == 5 and set(batch["keys"]) <= set(ids)


def test_small_case_is_padded_with_0_and_minus_1(tmp_path):
    write_case(tmp_path, "tiny", shape=(6, 8, 5), blobs={1: (slice(2, 4), slice(2, 4), slice(2, 4))})
    loader = NNUNetPatchLoader(tmp_path, ["tiny"], 4, (12, 12, 12), (10, 10, 10), seed=0)
    for _ in range(5):
        batch = next(loader)
        for d, s in zip(batch["data"], batch["seg"]):
            inside = d[0] > 0
            assert inside.sum() == 6 * 8 * 5  # the whole tiny case is inside every box
            assert (s[0][~inside] == -1).all() and (s[0][inside] >= 0).all()
            # the case sits where Appendix A.2 puts it: pad 6/4/7 → lb -3/-2/-4 … ub -3/-2/-3
            x0, y0, z0 = [int(np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != ax)))[0])
                          for ax in range(3)]
            assert (x0, y0) == (3, 2) and z0 in (3, 4)


def test_forced_foreground_centre_voxel_statistics(dataset):
    """Forced samples are centred on a voxel of a uniformly chosen class (checked over many draws)."""
    folder, ids = dataset
    crop = (20, 22, 16)  # validation-style crop (P0 = P): the class voxel lands at index P0 // 2
    loader = NNUNetPatchLoader(folder, ids, 3, crop, crop, seed=5)  # bs 3 → the last sample is forced
    centre = tuple(c // 2 for c in crop)
    forced_labels, random_fg = [], []
    for _ in range(400):
        batch = next(loader)
        forced_labels.append(int(batch["seg"][2, 0][centre]))
        random_fg.append(int(batch["seg"][0, 0][centre]))
    forced_labels = np.array(forced_labels)
    assert np.isin(forced_labels, [1, 2]).all()
    # label 2 is a single voxel per case, label 1 hundreds: classes are drawn uniformly first
    assert 0.4 < np.mean(forced_labels == 2) < 0.6
    assert np.mean(np.array(random_fg) == 2) < 0.05  # a non-forced centre rarely hits the single voxel


def test_forced_voxel_reaches_the_final_patch_centre(dataset):
    """Training crop P0 > P: voxel at P0 // 2, and the spatial transform's centre crop (no rotation or
    scaling drawn) moves it to P // 2 (Appendix F)."""
    folder, ids = dataset
    final = (16, 20, 12)
    crop = (29, 33, 22)
    loader = NNUNetPatchLoader(folder, ids, 2, crop, final, seed=2)
    for _ in range(50):
        batch = next(loader)
        seg = batch["seg"][1:2].astype(np.float32)
        assert seg[0, 0][tuple(c // 2 for c in crop)] in (1, 2)
        _, cropped = center_crop(batch["data"][1:2], final, seg)
        assert cropped[0, 0][tuple(p // 2 for p in final)] in (1, 2)


def test_2d_patches_are_slices_of_the_3d_volume(dataset):
    folder, ids = dataset
    loader = NNUNetPatchLoader(folder, ids, 4, (24, 20), (16, 16), seed=3)
    slices_seen = set()
    for _ in range(10):
        batch = next(loader)
        assert batch["data"].shape == (4, 1, 24, 20) and batch["seg"].shape == (4, 1, 24, 20)
        for d in batch["data"][:, 0]:
            v = d[d > 0].astype(np.int64) - 1
            x = v // 10000
            assert len(np.unique(x)) == 1  # one slice along axis 0
            slices_seen.add(int(x[0]))
            assert np.all(np.diff(d[d[:, 0] > 0][:, 0]) == 100)  # consecutive y along the patch's axis 0
    assert len(slices_seen) > 3


def test_2d_forced_foreground_slice(dataset):
    folder, ids = dataset
    loader = NNUNetPatchLoader(folder, ids, 2, (12, 10), (12, 10), seed=4)
    for _ in range(100):
        seg = next(loader)["seg"][1, 0]
        assert seg[6, 5] in (1, 2)


def test_same_seed_same_batches_and_worker_ids_differ(dataset):
    folder, ids = dataset
    kw = dict(batch_size=4, crop_size=(24, 28, 20), final_patch=(16, 20, 12), seed=11)
    a, b = NNUNetPatchLoader(folder, ids, **kw), NNUNetPatchLoader(folder, ids, **kw)
    for _ in range(3):
        ba, bb = next(a), next(b)
        assert ba["keys"] == bb["keys"] and np.array_equal(ba["data"], bb["data"])
    w0, w1 = NNUNetPatchLoader(folder, ids, **kw), NNUNetPatchLoader(folder, ids, **kw)
    for w, t in ((w0, 0), (w1, 1)):
        w.set_workers(2)
        w.set_thread_id(t)
    d0 = [next(w0) for _ in range(3)]
    d1 = [next(w1) for _ in range(3)]
    assert not any(np.array_equal(x["data"], y["data"]) for x, y in zip(d0, d1))
    # two workers read round robin make the one-process stream: batch k is a function of (seed, k) alone
    stream = NNUNetPatchLoader(folder, ids, **kw)
    one = [next(stream) for _ in range(6)]
    for k, got in enumerate(x for pair in zip(d0, d1) for x in pair):
        assert got["batch_index"] == k and got["keys"] == one[k]["keys"] and np.array_equal(got["data"], one[k]["data"])
    # a stream started at batch 4 (a resumed training) continues the uninterrupted one
    late = NNUNetPatchLoader(folder, ids, first_batch=4, **kw)
    for k in (4, 5):
        got = next(late)
        assert got["batch_index"] == k and np.array_equal(got["data"], one[k]["data"])


def test_loader_rejects_bad_arguments(dataset):
    folder, ids = dataset
    with pytest.raises(ValueError):
        NNUNetPatchLoader(folder, [], 2, (8, 8, 8), (8, 8, 8))
    with pytest.raises(ValueError):
        NNUNetPatchLoader(folder, ids, 2, (8, 8, 8), (8, 8))


def test_probabilistic_oversampling_forces_any_sample_with_the_probability(dataset):
    """upstream's probabilistic_oversampling: each sample forced with p, not the last ones of the batch."""
    folder, ids = dataset
    crop = (20, 22, 16)
    centre = tuple(c // 2 for c in crop)
    loader = NNUNetPatchLoader(folder, ids, 3, crop, crop, oversample=0.5, seed=6, probabilistic=True)
    hits_2 = np.zeros(3)  # label 2 (one voxel per case) at the centre ⇔ practically only when forced
    n = 200
    for _ in range(n):
        batch = next(loader)
        hits_2 += [int(batch["seg"][j, 0][centre]) == 2 for j in range(3)]
    # forced with p 0.5, then label 2 chosen with p 0.5: about a quarter of the draws, for every sample index
    assert np.all((hits_2 / n > 0.15) & (hits_2 / n < 0.35)), hits_2 / n
