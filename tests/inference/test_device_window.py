"""Sliding window on Paddle's device (pnnunet.inference.device_window) against the numpy implementation.

The device path runs on CPU tensors here (the same code that runs on a GPU, autocast off): with a
real network its logits must equal those of :func:`predict_sliding_window` with the same network,
for 3D, 2D-on-3D, mirroring, tile batching and both accumulator dtypes; out-of-memory falls back to
host accumulators and, if even that fails, is a clear error.
"""

import numpy as np
import paddle
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.inference import device_window
from pnnunet.inference.sliding_window import predict_sliding_window
from pnnunet.inference.static_graph import eager_predict_fn
from pnnunet.runtime.amp import autocast_kwargs
from pnnunet.runtime.architectures import build_network
from pnnunet.runtime.device import is_out_of_memory


def _plan(dim: int) -> dict:
    return {"architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {"n_stages": 2, "features_per_stage": [4, 8], "conv_op":
                                             f"torch.nn.modules.conv.Conv{dim}d", "kernel_sizes": [[3] * dim] * 2,
                                             "strides": [[1] * dim, [2] * dim], "n_conv_per_stage": [1, 1],
                                             "n_conv_per_stage_decoder": [1], "conv_bias": True,
                                             "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                                             "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                                             "dropout_op_kwargs": None,
                                             "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}


@pytest.fixture(scope="module")
def networks():
    paddle.seed(5)
    return {dim: build_network(_plan(dim), 2, 3, deep_supervision=False) for dim in (2, 3)}


CASES = [  # (patch, data shape, mirror axes, tile batch)
    ((8, 12, 8), (2, 13, 20, 9), (0, 1, 2), 3),
    ((8, 12, 8), (2, 6, 12, 11), None, 1),      # smaller than the patch along x: padded
    ((12, 8), (2, 3, 20, 13), (0, 1), 2),        # 2D configuration on 3D data
]


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float16, 2e-2)])
@pytest.mark.parametrize("patch, shape, mirror, batch", CASES)
def test_device_window_equals_host_window(networks, patch, shape, mirror, batch, dtype, tol):
    net = networks[len(patch)]
    net.eval()
    data = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    host = predict_sliding_window(eager_predict_fn(net), data, patch, 3, 0.5, mirror, True, batch, dtype=dtype)
    dev = device_window.predict_sliding_window_on_device(net, data, patch, 3, 0.5, mirror, batch, dtype=dtype)
    assert dev.dtype == host.dtype == dtype and dev.shape == host.shape == (3, *shape[1:])
    dev32, host32 = dev.astype(np.float32), host.astype(np.float32)
    if dtype == np.float32:
        np.testing.assert_allclose(dev32, host32, rtol=tol, atol=tol)
    else:
        # float16 sums of the faint Gaussian edge are ill-conditioned (weights near float16's smallest values):
        # Paddle 3.3 rounds them exactly as numpy does, Paddle 2.6.2 differs on about 1.5 % of voxels, at the border
        off = ~np.isclose(dev32, host32, rtol=tol, atol=tol)
        assert off.mean() < 0.03 and np.median(np.abs(dev32 - host32)) < 1e-3, off.mean()


def test_out_of_memory_falls_back_to_host_accumulators(networks, monkeypatch):
    net = networks[3]
    data = np.random.default_rng(2).standard_normal((2, 10, 14, 9)).astype(np.float32)
    expected = predict_sliding_window(eager_predict_fn(net), data, (8, 12, 8), 3, 0.5, None, True, 1)

    def no_room(*args, **kwargs):
        raise MemoryError("ResourceExhaustedError: Out of memory error on GPU 0")

    monkeypatch.setattr(device_window, "predict_sliding_window_on_device", no_room)
    got = device_window.predict_case_on_device(net, data, (8, 12, 8), 3)
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_out_of_memory_on_the_host_path_names_the_fix(networks, monkeypatch):
    def no_room(*args, **kwargs):
        raise RuntimeError("(ResourceExhausted) Out of memory error on GPU 0. Cannot allocate 2.0GB")

    monkeypatch.setattr(device_window, "predict_sliding_window_on_device", no_room)
    monkeypatch.setattr(device_window, "predict_sliding_window", no_room)
    with pytest.raises(PnnunetError, match="--tile_batch_size 1"):
        device_window.predict_case_on_device(networks[3], np.zeros((2, 8, 12, 8), np.float32), (8, 12, 8), 3)


def test_other_errors_are_not_swallowed(networks, monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("a real bug")

    monkeypatch.setattr(device_window, "predict_sliding_window_on_device", bug)
    with pytest.raises(ValueError, match="a real bug"):
        device_window.predict_case_on_device(networks[3], np.zeros((2, 8, 12, 8), np.float32), (8, 12, 8), 3)


def test_is_out_of_memory():
    assert is_out_of_memory(MemoryError("Out of memory error on GPU 0"))
    assert is_out_of_memory(RuntimeError("ResourceExhaustedError: Out of memory error on GPU 0, 11.2 GB used"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("the memory map is read-only"))


def test_autocast_reaches_3d_convolutions():
    """The autocast configuration casts every convolution (2D and 3D, transposed too) to float16 on a GPU
    and keeps normalization, softmax and cross-entropy in float32; off on a CPU."""
    on = autocast_kwargs("gpu:0")
    assert on["enable"] and on["dtype"] == "float16" and on["level"] == "O1"
    assert {"conv3d", "conv3d_transpose", "conv2d", "conv2d_transpose"} <= on["custom_white_list"]
    assert {"instance_norm", "softmax", "softmax_with_cross_entropy"} <= on["custom_black_list"]
    assert not on["custom_white_list"] & on["custom_black_list"]
    assert not autocast_kwargs("cpu")["enable"] and not autocast_kwargs("gpu", enabled=False)["enable"]
    # Paddle's own O1 list misses the 3D convolutions: this is why the custom list exists
    from paddle.amp import amp_lists

    default = getattr(amp_lists, "FP16_WHITE_LIST", None) or amp_lists.white_list()["float16"]["O1"]
    assert "conv3d" not in default and "conv2d" in default
