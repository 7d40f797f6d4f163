"""The planned oneDNN U-Net forward (pnnunet.runtime.unet_inference) against the eager network."""

import copy
import tracemalloc

import numpy as np
import paddle
import pytest

from pnnunet.heap import populated_empty
from pnnunet.runtime.architectures import build_network
from pnnunet.runtime.network import recompute_encoder_stages
from pnnunet.runtime.onednn import layers as fast_cpu
from pnnunet.runtime.onednn.primitives import NormActPlan, Workspace, bf16_supported
from pnnunet.runtime.resenc_network import ResidualEncoderUNet
from pnnunet.runtime.unet_inference import PlannedUNet, _ConvStep, held_bytes, release_buffers, unsupported_reason

pytestmark = pytest.mark.skipif(not fast_cpu.onednn_available(), reason="oneDNN library not in this Paddle build")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def plan(dim: int, features=(4, 8, 16), n_conv=(2, 2, 2), n_dec=(2, 2), bias=True) -> dict:
    n = len(features)
    op = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    kernels = [[3] * dim] + [[1] + [3] * (dim - 1)] + [[3] * dim] * (n - 2)  # one anisotropic stage
    strides = [[1] * dim] + [[2] * dim] * (n - 1)
    return {"architecture": {"network_class_name": "PlainConvUNet",
                             "arch_kwargs": {"n_stages": n, "features_per_stage": list(features), "conv_op": op,
                                             "kernel_sizes": kernels, "strides": strides,
                                             "n_conv_per_stage": list(n_conv), "n_conv_per_stage_decoder": list(n_dec),
                                             "conv_bias": bias}}}


def network(plan_cfg: dict, seed: int = 0, input_channels: int = 1, classes: int = 3):
    """A built network in eval mode with random weights, and norms with random (non-trivial) scale and shift."""
    paddle.seed(seed)
    net = build_network(plan_cfg, input_channels, classes, deep_supervision=False)
    rng = np.random.default_rng(seed)
    for name, p in net.named_parameters():
        if ".norm." in name:
            base = 1.0 if name.endswith("scale") else 0.0
            p.set_value((base + 0.3 * rng.standard_normal(p.shape)).astype(np.float32))
        elif name.endswith("bias"):
            p.set_value((0.1 * rng.standard_normal(p.shape)).astype(np.float32))
    net.eval()
    return net


def eager(net, x: np.ndarray) -> np.ndarray:
    """The stock network (Paddle's own kernels) on ``x``, without gradients."""
    with paddle.no_grad():
        return net(paddle.to_tensor(x)).numpy()


@pytest.mark.parametrize("shape", [(1, 5, 6, 7, 9), (1, 3, 11, 13)])
@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_norm_act_plan_equals_paddle_instance_norm_and_leaky_relu(shape, slope):
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 2 + 1.5).astype(np.float32)
    scale = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
    shift = rng.standard_normal(shape[1]).astype(np.float32)
    ref = paddle.nn.functional.leaky_relu(paddle.nn.functional.instance_norm(
        paddle.to_tensor(x), weight=paddle.to_tensor(scale), bias=paddle.to_tensor(shift), eps=1e-5), slope).numpy()
    y = x.copy()
    plan_ = NormActPlan(shape, 1e-5, slope)
    plan_.run(y.ctypes.data, scale.ctypes.data, shift.ctypes.data, Workspace())
    assert rel_err(y, ref) < 1e-5
    plan_.release()


def test_norm_act_plan_takes_one_sample():
    with pytest.raises(ValueError, match="one sample"):
        NormActPlan((2, 4, 5, 5), 1e-5, 0.01)


CONFIGS = {  # name: (plan, tile shape (N, C, *spatial))
    "3d": (plan(3), (2, 1, 8, 12, 16)),
    "2d": (plan(2), (2, 1, 16, 24)),
    "3d_one_or_three_convs_no_bias": (plan(3, n_conv=(1, 3, 2), n_dec=(3, 1), bias=False), (1, 1, 8, 8, 8)),
    "3d_four_stages_wide": (plan(3, features=(16, 32, 48, 64), n_conv=(2, 2, 2, 2), n_dec=(2, 2, 2)),
                            (1, 1, 8, 16, 16)),
}


@pytest.mark.parametrize("overwrite", [True, False])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_planned_float32_equals_the_eager_network(name, overwrite, monkeypatch):
    """``overwrite=False``: as if no convolution read or wrote a reordered copy (oneDNN chooses the
    layouts), so the decoder cannot write over its inputs and takes the other buffer layout."""
    if not overwrite:
        monkeypatch.setattr(_ConvStep, "may_overwrite_input", property(lambda self: False))
    plan_cfg, shape = CONFIGS[name]
    net = network(plan_cfg, seed=len(name), input_channels=shape[1])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref = eager(net, x)
    out = PlannedUNet(net, "fp32")(x)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert rel_err(out, ref) < 1e-4
    # each sample of the batch on its own, as the eager network does it
    assert rel_err(PlannedUNet(net, "fp32")(x[-1:]), ref[-1:]) < 1e-4


@pytest.mark.parametrize("name", ["3d", "3d_four_stages_wide"])
def test_planned_bf16_is_close_to_float32(name):
    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16 convolutions")
    plan_cfg, shape = CONFIGS[name]
    net = network(plan_cfg, seed=5)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    ref = eager(net, x)
    out = PlannedUNet(net, "bf16")(x)
    assert 0 < rel_err(out, ref) < 5e-2  # really rounded to bfloat16, and still close
    # and as close as the eager network with bfloat16 convolutions is
    fast = copy.deepcopy(net)
    fast_cpu.accelerate_convolutions(fast, inference_precision="bf16")
    assert rel_err(out, eager(fast, x)) < 5e-2


def test_buffers_are_laid_out_once_and_shared_by_the_folds():
    plan_cfg, shape = CONFIGS["3d_four_stages_wide"]
    net = network(plan_cfg)
    release_buffers()
    fn = PlannedUNet(net, "fp32")
    assert fn.keeps_buffers and held_bytes() == 0
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    first = fn(x)
    program, held = fn._program, held_bytes()
    # the activations: at least the concatenation buffer of the highest resolution (2 x 16 features)
    assert held >= 2 * 16 * 8 * 16 * 16 * 4
    tracemalloc.start()
    try:
        second = fn(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fn._program is program and held_bytes() == held
    assert peak < second.nbytes + 64 * 1024  # the tile's output, nothing activation-sized
    np.testing.assert_array_equal(first, second)
    # another fold (same network, other weights) uses the same buffers, and gets its own results
    other = network(plan_cfg, seed=9)
    assert rel_err(PlannedUNet(other, "fp32")(x), eager(other, x)) < 1e-4
    assert held_bytes() == held
    np.testing.assert_array_equal(fn(x), first)
    # another tile shape: laid out again (the buffers grow to the larger need), and still right
    y = rng.standard_normal((1, 1, 16, 16, 16)).astype(np.float32)
    assert rel_err(fn(y), eager(net, y)) < 1e-4
    assert fn._program is not program and held_bytes() > held
    release_buffers()
    assert held_bytes() == 0
    assert rel_err(fn(x), eager(net, x)) < 1e-4  # laid out again on the next call


def test_a_tile_that_does_not_fit_the_strides_is_refused():
    net = network(plan(3))
    with pytest.raises(ValueError, match="does not fit the network's strides"):
        PlannedUNet(net, "fp32")(np.zeros((1, 1, 7, 8, 8), np.float32))


def test_networks_of_other_structure_are_named():
    assert unsupported_reason(network(plan(3))) is None
    res = ResidualEncoderUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_dim=3,
                              kernel_sizes=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                              n_blocks_per_stage=[1, 1, 1], num_classes=2, n_conv_per_stage_decoder=[1, 1],
                              conv_bias=True)
    assert "not a plain convolutional U-Net" in unsupported_reason(res)
    recomputed = network(plan(3))
    recompute_encoder_stages(recomputed, 1)  # a training setting: the forward pass is the same
    assert unsupported_reason(recomputed) is None
    batch_norm = network(plan(3))
    batch_norm.encoder.stages[1].convs[0].norm = paddle.nn.BatchNorm3D(8)
    assert "not an affine instance norm" in unsupported_reason(batch_norm)
    with pytest.raises(ValueError, match="cannot run as a planned U-Net"):
        PlannedUNet(res)


def test_bf16_predict_function_plans_plain_networks_only():
    from pnnunet.inference.static_graph import bf16_predict_fn

    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16 convolutions")
    assert isinstance(bf16_predict_fn(network(plan(3))), PlannedUNet)
    res = ResidualEncoderUNet(input_channels=1, n_stages=2, features_per_stage=[4, 8], conv_dim=3,
                              kernel_sizes=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]], n_blocks_per_stage=[1, 1],
                              num_classes=2, n_conv_per_stage_decoder=[1], conv_bias=True)
    fn = bf16_predict_fn(res)
    assert not isinstance(fn, PlannedUNet) and fn.backend == "bf16"


def test_workspace_keeps_one_aligned_buffer_per_role():
    ws = Workspace()
    a = ws.pointer("src", 1000)
    assert a % Workspace.ALIGN == 0
    assert ws.pointer("src", 500) == a  # a smaller request reuses the buffer
    b = ws.pointer("dst", 1000)
    assert b != a and ws.nbytes == 2 * (1000 + Workspace.ALIGN)
    ws.pointer("src", 10_000)  # grown: the old buffer is dropped
    assert ws.nbytes == (10_000 + Workspace.ALIGN) + (1000 + Workspace.ALIGN)


def test_populated_arrays_are_writable_and_sized():
    a = populated_empty(1000, np.float32)
    assert a.shape == (1000,) and a.dtype == np.float32 and a.flags.writeable
    a[:] = 2.0
    assert float(a.sum()) == 2000.0
    assert populated_empty(0, np.uint8).size == 0
