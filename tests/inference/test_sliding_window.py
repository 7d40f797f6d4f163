"""Sliding-window prediction (pnnunet.inference.sliding_window; reference §7.3, §7.4, Appendix B).

The "networks" here are small numpy functions whose sliding-window result can be worked out by
hand: a per-voxel linear map (flip and translation equivariant, so every tiling and mirroring
must reproduce it exactly) and the same map plus a fixed position-dependent bias (not
equivariant: the result is a Gaussian-weighted mean of the bias over tiles and flips).
"""

import numpy as np
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.inference.case_progress import CaseProgress, format_duration
from pnnunet.inference.sliding_window import (check_step_size, compute_gaussian, compute_steps, count_tiles, iter_tiles,
                                              mirror_combinations, pad_to_patch, predict_sliding_window)

RNG_SEED = 20261123


# ---------------------------------------------------------------------------------------------
# Appendix B vectors
@pytest.mark.parametrize("size, patch, expected", [
    (110, 64, [0, 23, 46]), (128, 128, [0]), (200, 128, [0, 36, 72]),
    (512, 160, [0, 70, 141, 211, 282, 352]), (300, 192, [0, 54, 108]), (41, 40, [0, 1]),
])  # reference Appendix B, "sliding-window starts (step 0.5)"
def test_steps_appendix_b(size, patch, expected):
    assert compute_steps([size], [patch], 0.5) == [expected]


def test_steps_per_axis_and_step_size():
    assert compute_steps([110, 128, 41], [64, 128, 40]) == [[0, 23, 46], [0], [0, 1]]
    # step 1: n = ceil((S - p) / p) + 1
    assert compute_steps([100], [40], 1.0) == [[0, 30, 60]]


def test_steps_reject_bad_input():
    with pytest.raises(ValueError, match="smaller than the patch"):
        compute_steps([30], [40])
    with pytest.raises(ValueError, match="step_size"):
        compute_steps([50], [40], 0)


def test_gaussian_3d_appendix_b():
    # reference Appendix B: patch [40,56,40]: centre 10.0; float64 corner 3.78e-10; after the fp16
    # cast 411 voxels are 0 and are set to 5.96e-08 (Appendix G.7)
    g64 = compute_gaussian([40, 56, 40], dtype=np.float64)
    assert g64[20, 28, 20] == pytest.approx(10.0, abs=1e-12)
    assert g64.max() == pytest.approx(10.0, abs=1e-12)
    assert g64[0, 0, 0] == pytest.approx(3.78e-10, rel=1e-3)
    underflow = g64.astype(np.float32).astype(np.float16) == 0
    assert int(underflow.sum()) == 411
    g16 = compute_gaussian([40, 56, 40])
    assert g16.dtype == np.float16 and g16.shape == (40, 56, 40)
    assert g16[20, 28, 20] == 10.0
    assert not np.any(g16 == 0)
    assert float(g16.min()) == pytest.approx(5.96e-08, rel=1e-3)
    assert np.all(g16[underflow] == g16.min())


def test_gaussian_2d_appendix_b():
    g = compute_gaussian([56, 40])
    assert float(g[0, 0]) == pytest.approx(1.13e-06, rel=1e-2)
    assert not np.any(compute_gaussian([56, 40], dtype=np.float64).astype(np.float16) == 0)
    assert g[28, 20] == 10.0


def test_gaussian_is_cached_and_read_only():
    a = compute_gaussian((8, 10, 12))
    assert compute_gaussian([8, 10, 12]) is a
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1


# ---------------------------------------------------------------------------------------------
# padding and tiles
def test_pad_centred_odd_remainder_at_end():
    data = np.arange(1 * 3 * 5 * 7, dtype=np.float32).reshape(1, 3, 5, 7) + 1
    padded, slicer = pad_to_patch(data, (6, 8, 4))
    assert padded.shape == (1, 6, 8, 7)
    # axis 1: 3 → 6 pads (1, 2); axis 2: 5 → 8 pads (1, 2); axis 3 unchanged
    assert slicer == (slice(0, 1), slice(1, 4), slice(1, 6), slice(0, 7))
    assert np.array_equal(padded[slicer], data)
    assert padded.sum() == data.sum()


def test_pad_2d_patch_pads_last_two_axes_only():
    data = np.ones((2, 4, 3, 9), dtype=np.float32)
    padded, slicer = pad_to_patch(data, (6, 6))
    assert padded.shape == (2, 4, 6, 9)
    assert np.array_equal(padded[slicer], data)


def test_pad_not_needed_returns_input():
    data = np.zeros((1, 8, 8, 8), dtype=np.float32)
    padded, _ = pad_to_patch(data, (8, 4, 2))
    assert padded is data


def test_tiles_3d_and_2d_on_3d():
    tiles = list(iter_tiles((110, 40, 41), (64, 40, 40)))
    assert len(tiles) == 3 * 1 * 2
    assert tiles[0] == (slice(0, 64), slice(0, 40), slice(0, 40))
    assert tiles[-1] == (slice(46, 110), slice(0, 40), slice(1, 41))
    tiles2d = list(iter_tiles((3, 110, 40), (64, 40)))
    assert len(tiles2d) == 3 * 3
    assert tiles2d[0] == (0, slice(0, 64), slice(0, 40))
    assert tiles2d[-1] == (2, slice(46, 110), slice(0, 40))


def test_mirror_combinations_order():
    assert mirror_combinations((0, 1, 2)) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mirror_combinations((0, 1)) == [(), (0,), (1,), (0, 1)]
    assert mirror_combinations(None) == [()]


# ---------------------------------------------------------------------------------------------
# prediction with hand-computable "networks"
F32 = np.float32  # exact-sum tests accumulate in float32; the default is float16 as upstream


class LinearNet:
    """y[n, k] = sum_c W[k, c] x[n, c] + b[k] (+ bias[k] at each patch position): per-sample, elementwise."""

    def __init__(self, n_in, n_out, patch=None, seed=RNG_SEED):
        rng = np.random.default_rng(seed)
        self.W = rng.normal(size=(n_out, n_in)).astype(np.float32)
        self.b = rng.normal(size=n_out).astype(np.float32)
        self.bias = None if patch is None else rng.normal(size=(n_out, *patch)).astype(np.float32)
        self.batch_sizes = []

    def pointwise(self, x):  # x (C, *S) → (K, *S), in float64 for the expected values
        return np.einsum("kc,c...->k...", self.W.astype(np.float64), x.astype(np.float64)) + \
            self.b.astype(np.float64).reshape(-1, *([1] * (x.ndim - 1)))

    def __call__(self, x):
        assert x.dtype == np.float32
        self.batch_sizes.append(x.shape[0])
        y = np.zeros((x.shape[0], self.W.shape[0], *x.shape[2:]), dtype=np.float32)
        for k in range(self.W.shape[0]):
            for c in range(self.W.shape[1]):
                y[:, k] += self.W[k, c] * x[:, c]
            y[:, k] += self.b[k]
        if self.bias is not None:
            y += self.bias
        return y


@pytest.mark.parametrize("shape, patch, mirror", [
    ((2, 13, 17, 11), (8, 10, 6), (0, 1, 2)),      # 3D, several tiles per axis
    ((2, 5, 6, 4), (8, 10, 6), (0, 1, 2)),         # input smaller than the patch on every axis
    ((1, 4, 23, 19), (12, 8), (0, 1)),             # 2D configuration on 3D data
    ((1, 1, 30, 9), (16, 12), (0, 1)),             # 2D data (C, 1, X, Y), smaller on one axis
    ((3, 21, 14), (8, 8), None),                   # pure 2D array, no mirroring
])
def test_equivariant_network_is_reproduced_exactly(shape, patch, mirror):
    rng = np.random.default_rng(RNG_SEED)
    data = rng.normal(size=shape).astype(np.float32)
    net = LinearNet(shape[0], 3)
    out = predict_sliding_window(net, data, patch, 3, mirror_axes=mirror, dtype=F32)
    assert out.dtype == F32 and out.shape == (3, *shape[1:])
    np.testing.assert_allclose(out, net.pointwise(data), rtol=1e-5, atol=1e-5)


def test_mirroring_single_tile_not_equivariant():
    # image == patch: one tile. Prediction = W x + b + mean over the 8 flips of flip(bias)
    patch = (4, 6, 5)
    rng = np.random.default_rng(RNG_SEED)
    data = rng.normal(size=(2, *patch)).astype(np.float32)
    net = LinearNet(2, 2, patch)
    out = predict_sliding_window(net, data, patch, 2, mirror_axes=(0, 1, 2), dtype=F32)
    flips = [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]  # axes of the (K, *P) bias
    mean_bias = np.mean([np.flip(net.bias.astype(np.float64), f) if f else net.bias for f in flips], axis=0)
    np.testing.assert_allclose(out, net.pointwise(data) + mean_bias, rtol=1e-5, atol=1e-5)
    assert sum(net.batch_sizes) == 8
    # without mirroring the bias is not averaged
    out_plain = predict_sliding_window(net, data, patch, 2, dtype=F32)
    np.testing.assert_allclose(out_plain, net.pointwise(data) + net.bias, rtol=1e-5, atol=1e-5)
    # mirroring only axis 1 of the patch: mean of bias and its flip along that axis
    out_one = predict_sliding_window(net, data, patch, 2, mirror_axes=(1,), dtype=F32)
    expected = net.pointwise(data) + (net.bias.astype(np.float64) + np.flip(net.bias, 2)) / 2
    np.testing.assert_allclose(out_one, expected, rtol=1e-5, atol=1e-5)


def _expected_weighted_bias(image, patch, starts, bias, weight):
    """Sum of weight*bias over tiles at ``starts`` / sum of weight, written out with explicit loops."""
    num = np.zeros((bias.shape[0], *image), dtype=np.float64)
    den = np.zeros(image, dtype=np.float64)
    for s0 in starts[0]:
        for s1 in starts[1]:
            for s2 in starts[2]:
                sl = (slice(s0, s0 + patch[0]), slice(s1, s1 + patch[1]), slice(s2, s2 + patch[2]))
                num[(slice(None), *sl)] += bias * weight
                den[sl] += weight
    return num / den


def test_gaussian_weighted_tiles_not_equivariant():
    image, patch = (6, 9, 5), (4, 6, 5)
    starts = ([0, 2], [0, 3], [0])  # n = ceil((S-p)/(p/2)) + 1 = 2, 2, 1 (reference §7.3)
    rng = np.random.default_rng(RNG_SEED)
    data = rng.normal(size=(1, *image)).astype(np.float32)
    net = LinearNet(1, 2, patch)
    g = compute_gaussian(patch).astype(np.float64)
    out = predict_sliding_window(net, data, patch, 2, dtype=F32)
    expected = net.pointwise(data) + _expected_weighted_bias(image, patch, starts, net.bias, g)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    out_flat = predict_sliding_window(net, data, patch, 2, use_gaussian=False, dtype=F32)
    expected_flat = net.pointwise(data) + _expected_weighted_bias(image, patch, starts, net.bias, np.ones(patch))
    np.testing.assert_allclose(out_flat, expected_flat, rtol=1e-5, atol=1e-5)


def test_input_smaller_than_patch_not_equivariant():
    # (1, 3, 4, 5) padded to the patch (4, 6, 5): pads (0,1), (1,1), (0,0); result = the centre crop
    patch = (4, 6, 5)
    rng = np.random.default_rng(RNG_SEED)
    data = rng.normal(size=(1, 3, 4, 5)).astype(np.float32)
    net = LinearNet(1, 2, patch)
    out = predict_sliding_window(net, data, patch, 2, dtype=F32)
    expected = net.pointwise(data) + net.bias[:, 0:3, 1:5, 0:5]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_2d_config_on_3d_data_predicts_each_slice():
    patch = (6, 5)
    rng = np.random.default_rng(RNG_SEED)
    data = rng.normal(size=(1, 3, 6, 5)).astype(np.float32)
    net = LinearNet(1, 2, patch)
    out = predict_sliding_window(net, data, patch, 2, mirror_axes=(0, 1), dtype=F32)
    flips = [(), (1,), (2,), (1, 2)]
    mean_bias = np.mean([np.flip(net.bias.astype(np.float64), f) if f else net.bias for f in flips], axis=0)
    expected = net.pointwise(data) + mean_bias[:, None]  # the same 2D result on every slice
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert sum(net.batch_sizes) == 3 * 4  # 3 slices × 4 mirror passes


@pytest.mark.parametrize("shape, patch, mirror", [
    ((2, 13, 17, 11), (6, 8, 6), (0, 1, 2)),
    ((2, 13, 17, 11), (6, 8, 6), None),
    ((1, 5, 23, 19), (12, 8), (0, 1)),
])
@pytest.mark.parametrize("batch", [2, 3, 8, 13, 40])
def test_tile_batching_is_identical(shape, patch, mirror, batch):
    rng = np.random.default_rng(RNG_SEED)
    data = rng.normal(size=shape).astype(np.float32)
    ref_net = LinearNet(shape[0], 3, patch)
    reference = predict_sliding_window(ref_net, data, patch, 3, mirror_axes=mirror, tile_batch_size=1)
    assert max(ref_net.batch_sizes) == 1
    net = LinearNet(shape[0], 3, patch)
    out = predict_sliding_window(net, data, patch, 3, mirror_axes=mirror, tile_batch_size=batch)
    assert np.array_equal(out, reference)
    assert max(net.batch_sizes) <= batch
    assert sum(net.batch_sizes) == sum(ref_net.batch_sizes)
    assert len(net.batch_sizes) < len(ref_net.batch_sizes)


def test_memory_map_input_and_no_modification(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    arr = rng.normal(size=(1, 9, 10, 7)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    net = LinearNet(1, 2)
    out = predict_sliding_window(net, mm, (4, 6, 4), 2, mirror_axes=(0, 1, 2), dtype=F32)
    np.testing.assert_allclose(out, net.pointwise(arr), rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.asarray(mm), arr)


def test_bad_network_output_is_a_clear_error():
    data = np.zeros((1, 8, 8, 8), dtype=np.float32)
    with pytest.raises(PnnunetError, match="expected"):
        predict_sliding_window(lambda x: np.zeros((x.shape[0], 2, 4, 4, 4), np.float32), data, (4, 4, 4), 3)
    with pytest.raises(ValueError, match="mirror axes"):
        predict_sliding_window(LinearNet(1, 2), data, (4, 4), 2, mirror_axes=(0, 2))
    with pytest.raises(PnnunetError, match="inf or NaN"):
        predict_sliding_window(lambda x: np.full((x.shape[0], 1, 4, 4, 4), np.inf, np.float32), data, (4, 4, 4), 1)


def test_default_accumulates_in_float16_as_upstream():
    """float16 accumulators (upstream's): the result is float16 and equals the float32 computation up
    to half-precision rounding; every step of the sums is rounded to float16, as torch does."""
    image, patch = (9, 12, 7), (4, 6, 5)
    rng = np.random.default_rng(RNG_SEED)
    data = (rng.normal(size=(1, *image)) * 5).astype(np.float32)
    net = LinearNet(1, 3, patch)
    out16 = predict_sliding_window(net, data, patch, 3, mirror_axes=(0, 1))
    out32 = predict_sliding_window(net, data, patch, 3, mirror_axes=(0, 1), dtype=np.float32)
    assert out16.dtype == np.float16 and out32.dtype == np.float32
    assert not np.array_equal(out16.astype(np.float32), out32)  # really rounded
    # by hand: mirrored predictions averaged in float32, weighted, then summed tile by tile into float16
    # arrays (rounded at every addition, as torch's half tensors), weights likewise, divided in float16
    g = compute_gaussian(patch).astype(np.float32)
    num = np.zeros((3, *image), np.float16)
    den = np.zeros(image, np.float16)
    for t in iter_tiles(image, patch):
        x = data[(slice(None), *t)][None]
        y = np.zeros((3, *patch), np.float32)
        for axes in [(), (2,), (3,), (2, 3)]:  # combinations of patch axes 0 and 1 (batch axis first)
            y += np.flip(net(np.flip(x, axes))[0], tuple(a - 1 for a in axes)) if axes else net(x)[0]
        y = y / np.float32(4) * g
        num[(slice(None), *t)] = (num[(slice(None), *t)].astype(np.float32) + y).astype(np.float16)
        den[t] = (den[t].astype(np.float32) + g).astype(np.float16)
    assert np.array_equal(out16, num / den)
    # close to the exact sums wherever the summed weight is not in float16's subnormal range (as upstream,
    # the faint Gaussian edge at the image border loses precision: tests/inference/test_upstream_agreement.py)
    well_covered = den >= 1e-2
    assert well_covered.mean() > 0.6
    np.testing.assert_allclose(out16[:, well_covered].astype(np.float32), out32[:, well_covered], rtol=4e-3, atol=4e-3)
    with pytest.raises(ValueError, match="float16 or float32"):
        predict_sliding_window(net, data, patch, 3, dtype=np.float64)


@pytest.mark.parametrize("image, patch, step", [((40, 20, 20), (20, 20, 20), 0.5), ((40, 20, 20), (20, 20, 20), 1.0),
                                                ((7, 50, 61), (16, 32, 32), 0.5), ((5, 30, 33), (16, 16), 0.5),
                                                ((9, 9, 9), (16, 16, 16), 0.5)])
def test_count_tiles_counts_what_the_sliding_window_predicts(image, patch, step):
    padded = [*image[:len(image) - len(patch)], *(max(s, p) for s, p in zip(image[len(image) - len(patch):], patch))]
    assert count_tiles(image, patch, step) == len(list(iter_tiles(padded, patch, step)))


def test_case_progress_estimates_from_the_passes_left():
    progress = CaseProgress([10, 10, 20], mirrorings=8)
    assert progress.case_done(0, "a", 80.0) == "case 1/3 a: 10 tiles × 8 mirrorings in 80.0 s; estimated remaining " \
                                               "4 min 00 s"  # 240 passes left at 1 s each
    assert progress.case_done(1, "b", 40.0).endswith("estimated remaining 2 min 00 s")  # 0.75 s per pass
    assert progress.case_done(2, "c", 1.0) == "case 3/3 c: 20 tiles × 8 mirrorings in 1.0 s"
    assert CaseProgress([1], 1).case_done(0, "d", 0.5) == "case 1/1 d: 1 tile, no mirroring in 0.5 s"
    assert [format_duration(s) for s in (4.4, 61, 3 * 3600 + 5 * 60 + 1)] == ["4 s", "1 min 01 s", "3 h 05 min"]


def test_step_size_outside_0_1_names_the_flag():
    assert check_step_size(1) == 1.0
    for bad in (0, -0.5, 1.5):
        with pytest.raises(PnnunetError, match=r"--val_step_size .*\(0, 1\].*\n.*fix: use e.g. --val_step_size 0.5"):
            check_step_size(bad, "--val_step_size")


@pytest.mark.parametrize("batch", [1, 3])
def test_on_tile_reports_every_tile_group_in_order(batch):
    """The front end's progress hook (pnnunet_app shows "tile i/N"): called after each group of tiles."""
    data = np.random.default_rng(RNG_SEED).normal(size=(1, 13, 17, 11)).astype(np.float32)
    calls = []
    net = LinearNet(1, 3, (6, 8, 6))
    with_hook = predict_sliding_window(net, data, (6, 8, 6), 3, tile_batch_size=batch,
                                       on_tile=lambda done, total: calls.append((done, total)))
    n = count_tiles(data.shape[1:], (6, 8, 6), 0.5)
    assert calls[-1] == (n, n) and all(total == n for _, total in calls)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})  # strictly increasing
    assert len(calls) == -(-n // batch)
    assert np.array_equal(with_hook, predict_sliding_window(LinearNet(1, 3, (6, 8, 6)), data, (6, 8, 6), 3,
                                                            tile_batch_size=batch))


def test_heap_policy_skipped_for_predict_fns_that_keep_their_buffers(monkeypatch):
    """A predict function with ``keeps_buffers`` (Paddle Inference) runs without the reuse-freed-memory heap
    policy (its fragmentation only raised the peak); every other one runs inside it; results are the same."""
    import contextlib

    from pnnunet.inference import sliding_window as sw

    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append(True)
        yield True

    monkeypatch.setattr(sw, "reuse_freed_memory", recording)

    def plain(x):
        return np.repeat(x[:, :1] * 2, 2, axis=1)

    class Keeping:
        keeps_buffers = True

        def __call__(self, x):
            return plain(x)

    data = np.random.default_rng(0).standard_normal((1, 10, 12)).astype(np.float32)
    y_plain = sw.predict_sliding_window(plain, data, (6, 8), 2, dtype=np.float32)
    assert entered == [True]
    y_keeping = sw.predict_sliding_window(Keeping(), data, (6, 8), 2, dtype=np.float32)
    assert entered == [True]
    np.testing.assert_array_equal(y_plain, y_keeping)
