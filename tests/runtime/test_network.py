"""PlainConvUNet against upstream dynamic_network_architectures (reference §6.1, §12.3, §12.4)."""

import json
import math

import numpy as np
import paddle
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.runtime.architectures import build_network
from pnnunet.runtime.network import PlainConvUNet, conv_dim_from_op, he_std
from tests.conftest import UPSTREAM_HIPPO, require
from tests.runtime.upstream_probes import fill_like_upstream_script, probe


def n_params(net) -> int:
    return sum(int(np.prod(p.shape)) for p in net.parameters())


def tiny_config(conv_op: str, kernels, strides, features, n_enc, n_dec) -> dict:
    return {"architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {"n_stages": len(features), "features_per_stage": features,
                                             "conv_op": conv_op, "kernel_sizes": kernels, "strides": strides,
                                             "n_conv_per_stage": n_enc, "n_conv_per_stage_decoder": n_dec,
                                             "conv_bias": True}}}


# Upstream counts: sum(p.numel() for p in net.parameters()) of the network built by nnunetv2 2.8.1's
# get_network_from_plans(arch_class_name, arch_kwargs, _kw_requires_import, 1, 3, deep_supervision=True)
# (dynamic_network_architectures 0.4.x, upstream venv, scratch script upstream_params.py) on
# shared/reference/upstream_hippocampus_220/nnUNetPlans.json. The reference says ≈5.60 M for 3d_fullres.
@pytest.mark.parametrize("configuration, expected", [("3d_fullres", 5_603_177), ("2d", 1_928_489)])
def test_hippocampus_parameter_count_equals_upstream(configuration, expected):
    plans = json.loads((require(UPSTREAM_HIPPO) / "nnUNetPlans.json").read_text())
    net = build_network(plans["configurations"][configuration], input_channels=1, num_classes=3)
    assert n_params(net) == expected


def test_anisotropic_seven_stage_parameter_count_equals_upstream():
    # Appendix B prostate-like topology, F = min(32·2^s, 320), 2 input channels, 3 classes. Upstream:
    # dynamic_network_architectures PlainConvUNet(**same kwargs, conv_op=nn.Conv3d, InstanceNorm3d(eps 1e-5,
    # affine), LeakyReLU) → 44,578,770 parameters (scratch script upstream_params2.py).
    cfg = tiny_config("torch.nn.modules.conv.Conv3d", [[1, 3, 3]] * 2 + [[3, 3, 3]] * 5,
                      [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
                      [32, 64, 128, 256, 320, 320, 320], [2] * 7, [2] * 6)
    assert n_params(build_network(cfg, input_channels=2, num_classes=3)) == 44_578_770


# Same filled weights and input x = cos(0.11·j) run through upstream's PlainConvUNet (torch, upstream venv,
# scratch script upstream_forward.py); numbers are [sum, sum of squares, sum(out·cos(0.5·j))] per DS output.
# Checks wiring beyond shapes: concat order [up, skip], strided first conv, padding, heads, InstanceNorm.
FORWARD_CASES = {
    "2d": (dict(input_channels=2, n_stages=3, features_per_stage=[4, 8, 16], conv_dim=2, kernel_sizes=[[3, 3]] * 3,
                strides=[[1, 1], [2, 2], [2, 2]], n_conv_per_stage=[1, 2, 2], num_classes=3,
                n_conv_per_stage_decoder=[2, 1]), (2, 2, 8, 12),
           [[262.8209566802834, 191.00593195816614, -8.151339574137932],
            [-74.1912921690382, 44.212088569143404, -0.572587923578492]]),
    "3d": (dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 8], conv_dim=3,
                kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                n_conv_per_stage=[2, 2, 2], num_classes=2, n_conv_per_stage_decoder=[2, 2]), (1, 1, 4, 8, 8),
           [[-528.3359756469727, 566.4810569441187, 2.6123847380306198],
            [55.783635321073234, 39.89216327809898, 0.626196021270318]]),
}


@pytest.mark.parametrize("name", sorted(FORWARD_CASES))
def test_forward_equals_upstream_with_same_weights(name):
    kwargs, x_shape, expected = FORWARD_CASES[name]
    net = PlainConvUNet(**kwargs, deep_supervision=True)
    fill_like_upstream_script(net)
    x = paddle.to_tensor(np.cos(0.11 * np.arange(np.prod(x_shape))).reshape(x_shape).astype(np.float32))
    with paddle.no_grad():
        outs = net(x)
        assert len(outs) == len(expected)
        for out, ref in zip(outs, expected):
            np.testing.assert_allclose(probe(out), ref, rtol=1e-5, atol=1e-4)
        net.deep_supervision = False
        np.testing.assert_allclose(probe(net(x)), expected[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("conv_op, x_shape, strides", [
    ("torch.nn.modules.conv.Conv2d", (2, 1, 16, 12), [[1, 1], [2, 2], [2, 1]]),
    ("paddle.nn.Conv3D", (1, 1, 8, 16, 12), [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
])
def test_output_shapes_with_and_without_deep_supervision(conv_op, x_shape, strides):
    dim = len(x_shape) - 2
    cfg = tiny_config(conv_op, [[3] * dim] * 3, strides, [4, 8, 16], [2, 2, 2], [2, 2])
    net = build_network(cfg, input_channels=1, num_classes=3, deep_supervision=True)
    x = paddle.zeros(x_shape, dtype="float32")
    with paddle.no_grad():
        outs = net(x)
        spatial = np.array(x_shape[2:])
        expected = [[x_shape[0], 3, *spatial], [x_shape[0], 3, *(spatial // np.array(strides[1]))]]
        assert [list(o.shape) for o in outs] == expected
        net.deep_supervision = False
        assert list(net(x).shape) == expected[0]


def test_he_std_uses_torch_fan_in_convention():
    gain = math.sqrt(2 / (1 + 0.01**2))
    assert he_std([32, 16, 3, 3, 3]) == pytest.approx(gain / math.sqrt(16 * 27))
    # transposed conv weight [in=64, out=32, 2, 2, 2]: torch fan_in = 32·8 (§12.4)
    assert he_std([64, 32, 2, 2, 2]) == pytest.approx(gain / math.sqrt(32 * 8))


def test_init_statistics():
    paddle.seed(1234)
    cfg = tiny_config("Conv3d", [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [32, 64, 128], [2, 2, 2], [2, 2])
    net = build_network(cfg, input_channels=1, num_classes=3)
    gain = math.sqrt(2 / (1 + 0.01**2))
    w = net.encoder.stages[2].convs[1].conv.weight.numpy()  # 128·128·27 = 442,368 samples
    assert w.mean() == pytest.approx(0.0, abs=2e-4)
    assert w.std() == pytest.approx(gain / math.sqrt(128 * 27), rel=0.01)
    wt = net.decoder.transpconvs[0].weight.numpy()  # [128, 64, 2, 2, 2]: fan_in 64·8
    assert wt.std() == pytest.approx(gain / math.sqrt(64 * 8), rel=0.02)
    for name, p in net.named_parameters():
        if name.endswith(".bias"):
            assert not p.numpy().any(), name
        if name.endswith("norm.scale"):
            assert (p.numpy() == 1).all(), name


def test_instance_norm_same_in_train_and_eval():
    cfg = tiny_config("Conv2d", [[3, 3]] * 2, [[1, 1], [2, 2]], [4, 8], [1, 1], [1])
    net = build_network(cfg, input_channels=1, num_classes=2, deep_supervision=False)
    x = paddle.to_tensor(np.random.default_rng(0).normal(5.0, 3.0, (2, 1, 8, 8)).astype(np.float32))
    net.train()
    a = net(x).numpy()
    net.eval()
    with paddle.no_grad():
        b = net(x).numpy()
    np.testing.assert_array_equal(a, b)
    # and it is a per-sample, per-channel normalisation (§12.3)
    norm = net.encoder.stages[0].convs[0].norm
    y = np.random.default_rng(1).normal(2.0, 4.0, (2, 4, 6, 5)).astype(np.float32)
    ref = (y - y.mean((2, 3), keepdims=True)) / np.sqrt(y.var((2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(norm(paddle.to_tensor(y)).numpy(), ref, atol=1e-5)


def test_conv_op_strings():
    assert conv_dim_from_op("torch.nn.modules.conv.Conv2d") == 2
    assert conv_dim_from_op("paddle.nn.Conv3D") == 3
    with pytest.raises(PnnunetError):
        conv_dim_from_op("torch.nn.Conv1d")


def test_bad_plans_raise_clear_errors():
    with pytest.raises(PnnunetError, match="arch_kwargs"):
        build_network({"patch_size": [8, 8]}, 1, 2)
    cfg = tiny_config("Conv2d", [[3, 3]] * 2, [[1, 1], [2, 2]], [4, 8], [1, 1], [1])
    cfg["architecture"]["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualUNet"
    with pytest.raises(PnnunetError, match="'dynamic_network_architectures.architectures.unet.ResidualUNet' is not "
                                           "supported: pnnunet builds PlainConvUNet and ResidualEncoderUNet"):
        build_network(cfg, 1, 2)
    cfg = tiny_config("Conv2d", [[3, 3]] * 2, [[1, 1], [2, 2]], [4, 8], [1, 1, 1], [1])
    with pytest.raises(PnnunetError, match="n_conv_per_stage"):
        build_network(cfg, 1, 2)


def test_inference_mode_equals_training_mode_forward():
    """Without gradients the nonlinearity runs in place; the output must not change."""
    import paddle

    from pnnunet.runtime.architectures import build_network

    plan = {"patch_size": [16, 16, 16], "architecture": {"network_class_name": "PlainConvUNet", "arch_kwargs": {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2], "conv_bias": True}}}
    paddle.seed(3)
    net = build_network(plan, 1, 3, deep_supervision=False)
    net.eval()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 1, 16, 16, 16)).astype(np.float32))
    with_grad = net(x).numpy()
    with paddle.no_grad():
        without = net(x).numpy()
    np.testing.assert_array_equal(with_grad, without)
    assert (with_grad < 0).any()  # leaky part exercised
