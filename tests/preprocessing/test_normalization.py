"""Normalization schemes (reference §1.2, §4.4)."""

import numpy as np
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.preprocessing.normalization import SCHEMES, normalize, scheme_for_channel_name

CT_PROPS = {"mean": 20.0, "std": 50.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0,
            "median": 0.0, "min": -1000.0, "max": 3000.0}


@pytest.mark.parametrize("name, scheme", [
    ("CT", "CTNormalization"), ("ct", "CTNormalization"), ("noNorm", "NoNormalization"),
    ("NONORM", "NoNormalization"), ("zscore", "ZScoreNormalization"), ("rescale_to_0_1", "RescaleTo01Normalization"),
    ("RGB_to_0_1", "RGBTo01Normalization"), ("MRI", "ZScoreNormalization"), ("T2", "ZScoreNormalization"),
    ("computed tomography", "ZScoreNormalization")])
def test_channel_name_mapping(name, scheme):
    assert scheme_for_channel_name(name) == scheme


def test_ct_clips_to_percentiles_then_standardizes():
    x = np.array([[[-1000.0, 0.0, 50.0, 3000.0]]], np.float32)
    out = SCHEMES["CTNormalization"](x, None, True, CT_PROPS)  # the mask is never used
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-2.4, -0.4, 0.6, 3.6], rtol=1e-6)
    assert x[0, 0, 0] == -1000.0, "input must not be modified"


def test_ct_arithmetic_is_float32_step_by_step():
    x = np.random.RandomState(0).uniform(-500, 500, (4, 5, 6)).astype(np.float32)
    props = dict(CT_PROPS, mean=21727.087890625 / 1000, std=60054.8984375 / 1000)
    expected = np.clip(x, np.float32(-100.0), np.float32(200.0))
    expected = (expected - np.float32(props["mean"])) / np.float32(props["std"])
    assert np.array_equal(SCHEMES["CTNormalization"](x, None, False, props), expected)


def test_zscore_with_mask_only_touches_inside():
    x = np.zeros((2, 3, 4), np.float32)
    x[0] = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    x[1] = 7.0  # outside
    seg = np.zeros_like(x)
    seg[1] = -1
    out = SCHEMES["ZScoreNormalization"](x, seg, True, None)
    inside = out[0]
    assert abs(inside.mean()) < 1e-6 and abs(inside.std() - 1) < 1e-6
    assert np.all(out[1] == 7.0)


def test_zscore_without_mask_uses_whole_image():
    x = np.array([[[0.0, 2.0, 4.0, 6.0]]], np.float32)
    out = SCHEMES["ZScoreNormalization"](x, np.full_like(x, -1), False, None)
    np.testing.assert_allclose(out.ravel(), (np.array([0, 2, 4, 6]) - 3) / np.sqrt(5), rtol=1e-6)


def test_zscore_constant_image_divides_by_eps_not_zero():
    out = SCHEMES["ZScoreNormalization"](np.full((2, 2, 2), 3.0, np.float32), None, False, None)
    assert np.all(out == 0) and np.all(np.isfinite(out))


def test_rescale_and_rgb():
    x = np.array([[[2.0, 4.0, 6.0]]], np.float32)
    np.testing.assert_allclose(SCHEMES["RescaleTo01Normalization"](x, None, False, None).ravel(), [0, 0.5, 1])
    np.testing.assert_allclose(SCHEMES["RGBTo01Normalization"](x * 10, None, False, None).ravel(),
                               np.float32([20, 40, 60]) / np.float32(255))
    with pytest.raises(PnnunetError):
        SCHEMES["RGBTo01Normalization"](x * 100, None, False, None)
    assert SCHEMES["NoNormalization"](x.astype(np.float64), None, False, None).dtype == np.float32


def test_normalize_per_channel_and_validation():
    data = np.stack([np.array([[[-1000.0, 0.0, 50.0, 3000.0]]]), np.array([[[0.0, 2.0, 4.0, 6.0]]])]).astype(np.float32)
    out = normalize(data, None, ["CTNormalization", "ZScoreNormalization"], [False, False], {"0": CT_PROPS})
    np.testing.assert_allclose(out[0].ravel(), [-2.4, -0.4, 0.6, 3.6], rtol=1e-6)
    np.testing.assert_allclose(out[1].ravel(), (np.array([0, 2, 4, 6]) - 3) / np.sqrt(5), rtol=1e-6)
    with pytest.raises(PnnunetError, match="channel"):
        normalize(data, None, ["ZScoreNormalization"], [False], None)
    with pytest.raises(PnnunetError, match="unknown"):
        normalize(data, None, ["Foo", "ZScoreNormalization"], [False, False], None)


def test_normalize_in_place_equals_new_array():
    data = np.random.RandomState(1).gamma(2, 50, (2, 5, 6, 7)).astype(np.float32).transpose(0, 3, 1, 2)[:, 1:6]
    expected = normalize(data, None, ["ZScoreNormalization", "CTNormalization"], [False, False], {"1": CT_PROPS})
    work = data.copy(order="K")
    out = normalize(work, None, ["ZScoreNormalization", "CTNormalization"], [False, False], {"1": CT_PROPS}, out=work)
    assert out is work and np.array_equal(out, expected)
