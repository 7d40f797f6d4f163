"""Topology and memory-estimate rules against the reference's test vectors (Appendix B, §3.6)."""

import pytest

from pnnunet.planning.topology import conv_feature_map_size, get_pool_and_conv_props, pad_to_divisible


def test_hippocampus_topology():  # Appendix B: spacing (1,1,1), patch (36,50,35)
    t = get_pool_and_conv_props((1, 1, 1), (36, 50, 35))
    assert t.num_pool_per_axis == (3, 3, 3)
    assert t.patch_size == (40, 56, 40)
    assert t.n_stages == 4
    assert all(k == (3, 3, 3) for k in t.kernel_sizes)


def test_prostate_anisotropic_topology():  # Appendix B / §3.11 prostate-like
    t = get_pool_and_conv_props((3.6, 0.62, 0.62), (20, 320, 256))
    assert t.patch_size == (20, 320, 256)
    assert [list(s) for s in t.strides] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert [list(k) for k in t.kernel_sizes] == [[1, 3, 3], [1, 3, 3]] + [[3, 3, 3]] * 5


def test_single_axis_needs_12_voxels():
    # After axis 0 stops (edge < 8), a lone axis is pooled only while its edge is ≥ 12 (§3.5 step 4).
    t = get_pool_and_conv_props((1.0, 1.0), (4, 11))
    assert t.n_stages == 1
    t = get_pool_and_conv_props((1.0, 1.0), (4, 12))
    assert t.strides == ((1, 1), (1, 2))


@pytest.mark.parametrize("shape, div, expected", [((40, 56, 40), (8, 8, 8), (40, 56, 40)),
                                                   ((36, 50, 35), (8, 8, 8), (40, 56, 40)),
                                                   ((35.5, 17), (8, 4), (40, 20))])
def test_pad_to_divisible(shape, div, expected):
    assert pad_to_divisible(shape, div) == expected


def test_feature_map_estimates():  # §3.6.4 worked examples
    hippo = conv_feature_map_size((40, 56, 40), [32, 64, 128, 256], [[1, 1, 1]] + [[2, 2, 2]] * 3,
                                  [2] * 4, [2] * 3, 3)
    assert hippo == 19_174_400
    heart = conv_feature_map_size((80, 192, 160), [32, 64, 128, 256, 320, 320],
                                  [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[1, 2, 2]], [2] * 6, [2] * 5, 2)
    assert heart == 528_211_200
