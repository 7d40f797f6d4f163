"""Deep-supervision scales, weights and target downsampling (§5.5, §12.5, Appendix B)."""

import numpy as np
import pytest

from pnnunet.training.deep_supervision import downsample_seg_for_ds, ds_scales, ds_weights, nearest_exact_indices

# Appendix B, rounded to 4 decimals there
APPENDIX_B_WEIGHTS = {3: [1, 0], 4: [0.6667, 0.3333, 0], 5: [0.5714, 0.2857, 0.1429, 0],
                      6: [0.5333, 0.2667, 0.1333, 0.0667, 0], 7: [0.5161, 0.2581, 0.1290, 0.0645, 0.0323, 0]}


@pytest.mark.parametrize("n_stages", sorted(APPENDIX_B_WEIGHTS))
def test_ds_weights_appendix_b(n_stages):
    w = ds_weights(n_stages)
    np.testing.assert_allclose(w, APPENDIX_B_WEIGHTS[n_stages], atol=5e-5)
    assert w.sum() == pytest.approx(1.0) and w[-1] == 0


def test_ds_weights_two_stages_is_finite():
    np.testing.assert_array_equal(ds_weights(2), [1.0])  # DEVIATION: upstream gives NaN here


def test_ds_scales():
    # §5.5: strides [1,2,2,2] → 1, 1/2, 1/4
    assert ds_scales([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]) == [[1, 1, 1], [0.5] * 3, [0.25] * 3]
    # anisotropic (Appendix B prostate-like strides)
    strides = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert ds_scales(strides) == [[1, 1, 1], [1, 0.5, 0.5], [1, 0.25, 0.25], [0.5, 0.125, 0.125],
                                  [0.25, 0.0625, 0.0625], [0.25, 0.03125, 0.03125]]


def test_nearest_exact_indices():
    # ×2 downsampling picks the odd voxels (§12.5)
    np.testing.assert_array_equal(nearest_exact_indices(8, 4), [1, 3, 5, 7])
    np.testing.assert_array_equal(nearest_exact_indices(5, 2), [1, 3])      # floor((i+0.5)·2.5)
    np.testing.assert_array_equal(nearest_exact_indices(7, 7), np.arange(7))
    # 26 → 11: (5 + 0.5)·26/11 is exactly 13, but torch evaluates it in float32 and gets 12.99… → 12.
    # Expected list = torch.nn.functional.interpolate(arange(26.)[None, None], size=11, mode='nearest-exact')
    # in the upstream venv (torch 2.x CPU); exact integer arithmetic would give 13 at i = 5.
    assert nearest_exact_indices(26, 11).tolist() == [1, 3, 5, 8, 10, 12, 15, 17, 20, 22, 24]


def test_downsample_seg_for_ds():
    seg = np.arange(2 * 8 * 6 * 4, dtype=np.int16).reshape(2, 8, 6, 4)  # (C, X, Y, Z)
    scales = [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.5, 0.25]]
    full, half, mixed = downsample_seg_for_ds(seg, scales)
    assert full is seg
    np.testing.assert_array_equal(half, seg[:, 1::2, 1::2, 1::2])
    np.testing.assert_array_equal(mixed, seg[:, [2, 6]][:, :, 1::2][:, :, :, [2]])  # Z: round(4·0.25)=1 → index 2
    assert half.dtype == seg.dtype and mixed.shape == (2, 2, 3, 1)


def test_downsample_uses_python_round():
    seg = np.arange(5 * 6).reshape(1, 5, 6)
    (out,) = downsample_seg_for_ds(seg, [[0.5, 0.5]])
    assert out.shape == (1, 2, 3)  # round(2.5) == 2 (banker's rounding, as upstream)


def test_ds_weights_data_parallel_keeps_the_lowest_output():  # upstream: 1e-6 under DDP instead of 0
    w = ds_weights(4, ddp=True)
    assert w[-1] > 0 and w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w[:-1], ds_weights(4)[:-1], rtol=1e-5)
    np.testing.assert_array_equal(ds_weights(2, ddp=True), [1.0])
