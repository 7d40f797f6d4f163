"""Training memory (issue 16): the LeakyReLU that keeps its output instead of its input gives Paddle's
gradients bit for bit, and the training path of a ConvNormAct block uses it where the fused norm +
LeakyReLU does not apply; dropping the cached oneDNN
primitives does not break a convolution whose backward is still to come."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from pnnunet.runtime import network as network_module
from pnnunet.runtime import norm_act
from pnnunet.runtime.network import ConvNormAct, leaky_relu_saving_output
from pnnunet.runtime.onednn import layers as fast_cpu
from pnnunet.runtime.onednn import primitives


def _input(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[:7] = [0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 0.0]  # zeros and tiny values decide the branch
    return x


def test_leaky_relu_saving_output_equals_paddle_bit_for_bit():
    rng = np.random.default_rng(0)
    x, dy = _input(rng, (2, 3, 5, 6, 7)), rng.standard_normal((2, 3, 5, 6, 7)).astype(np.float32)
    results = []
    for fn in (F.leaky_relu, leaky_relu_saving_output):
        t = paddle.to_tensor(x, stop_gradient=False)
        y = fn(t * 1.0, 0.01)
        (g,) = paddle.grad([y], [t], [paddle.to_tensor(dy)])
        results.append((y.numpy(), g.numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_fallback_gradient_formula_equals_the_kernel(monkeypatch):  # Paddle builds without the grad op
    rng = np.random.default_rng(1)
    y = paddle.to_tensor(F.leaky_relu(paddle.to_tensor(_input(rng, (4, 50))), 0.01).numpy())
    dy = paddle.to_tensor(rng.standard_normal((4, 50)).astype(np.float32))
    if not hasattr(paddle._C_ops, "leaky_relu_grad"):
        pytest.skip("this Paddle has no leaky_relu_grad op: the fallback is the only path")
    kernel = paddle._C_ops.leaky_relu_grad(y, dy, 0.01).numpy()
    monkeypatch.delattr(paddle._C_ops, "leaky_relu_grad")
    np.testing.assert_array_equal(norm_act.leaky_relu_grad(y, dy, 0.01).numpy(), kernel)


def test_non_positive_slope_is_refused():
    with pytest.raises(ValueError, match="positive slope"):
        leaky_relu_saving_output(paddle.ones([2]), 0.0)


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: calls.append(1) or real(*a))
    return calls


def test_conv_norm_act_with_a_near_zero_norm_scale_trains_with_the_output_saving_leaky_relu(monkeypatch):
    # the fused norm + LeakyReLU (tests/runtime/test_norm_act.py) cannot recover its input through a zero
    # scale: the block falls back to Paddle's norm and the LeakyReLU that keeps its output, bit for bit
    calls = _count_calls(monkeypatch, network_module, "leaky_relu_saving_output")
    fused = _count_calls(monkeypatch, network_module, "instance_norm_leaky_relu")
    paddle.seed(0)
    block = ConvNormAct(3, 2, 4, [3, 3, 3], [1, 1, 1], True)
    block.save_memory = True
    with paddle.no_grad():
        block.norm.scale.set_value(paddle.to_tensor([1.0, 0.5, 1e-4, 2.0]))
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((2, 2, 5, 6, 4)).astype(np.float32))
    y = block(x)
    assert (len(calls), len(fused)) == (1, 0)
    reference = F.leaky_relu(block.norm(block.conv(x)), 0.01)
    np.testing.assert_array_equal(y.numpy(), reference.numpy())
    grads = paddle.grad([y.sum()], [block.conv.weight])[0].numpy()
    ref_grads = paddle.grad([reference.sum()], [block.conv.weight])[0].numpy()
    np.testing.assert_array_equal(grads, ref_grads)
    with paddle.no_grad():
        block(x)  # inference: in place, not the autograd layers
    assert (len(calls), len(fused)) == (1, 0)


@pytest.mark.skipif(not fast_cpu.onednn_available(), reason="oneDNN library not in this Paddle build")
def test_released_plans_are_recreated_for_a_pending_backward():
    rng = np.random.default_rng(3)
    x = paddle.to_tensor(rng.standard_normal((2, 3, 6, 5, 4)).astype(np.float32), stop_gradient=False)
    w = paddle.to_tensor((0.2 * rng.standard_normal((4, 3, 3, 3, 3))).astype(np.float32), stop_gradient=False)
    dy = paddle.to_tensor(rng.standard_normal((2, 4, 6, 5, 4)).astype(np.float32))
    kept = paddle.grad([fast_cpu.onednn_conv(x, w, None, [1] * 3, [1] * 3)], [x, w], [dy])
    y = fast_cpu.onednn_conv(x, w, None, [1] * 3, [1] * 3)
    assert primitives.release_plans() >= 1
    assert not primitives._PLANS
    again = paddle.grad([y], [x, w], [dy])  # its plan's primitives were destroyed: created again
    for a, b in zip(kept, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(fast_cpu.onednn_conv(x, w, None, [1] * 3, [1] * 3).numpy(), y.numpy())


@pytest.mark.skipif(not fast_cpu.onednn_available(), reason="oneDNN library not in this Paddle build")
@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_decoder_block_convolves_the_parts_without_concatenating_them(precision):
    if precision == "bf16" and not primitives.bf16_supported():
        pytest.skip("no native bfloat16 on this CPU")
    from pnnunet.runtime.recompute import _sharing_buffer

    paddle.seed(0)
    block = ConvNormAct(3, 6, 4, [3, 3, 3], [1, 1, 1], True)
    block.save_memory = True
    fast_cpu.accelerate_convolutions(block, training_precision=precision)
    rng = np.random.default_rng(7)
    up, skip = (paddle.to_tensor(rng.standard_normal((2, c, 6, 5, 4)).astype(np.float32), stop_gradient=False)
                for c in (4, 2))
    dz = paddle.to_tensor(rng.standard_normal((2, 4, 6, 5, 4)).astype(np.float32))
    params = [up, skip, block.conv.weight, block.conv.bias, block.norm.scale, block.norm.bias]
    results = []
    for split in (False, True):
        saved = []
        with paddle.autograd.saved_tensors_hooks(lambda t: saved.append(list(t.shape)) or t, _sharing_buffer):
            z = block.forward_concatenated([up, skip]) if split else block(paddle.concat([up, skip], axis=1))
        results.append([z] + list(paddle.grad([z], params, [dz])))
        # what autograd keeps: the parts (which exist anyway) instead of their 6-channel concatenation
        assert ([2, 6, 6, 5, 4] in saved) != split, saved
    tol = 1e-5 if precision == "f32" else 2e-2
    scale = max(float(b.abs().max()) for b in results[1])  # (the conv bias's gradient is ~0: the norm removes it)
    for a, b in zip(*results):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol * scale)
    with paddle.no_grad():  # inference: the concatenation, exactly as before
        np.testing.assert_array_equal(block.forward_concatenated([up, skip]).numpy(),
                                      block(paddle.concat([up, skip], axis=1)).numpy())


@pytest.mark.skipif(not fast_cpu.onednn_available(), reason="oneDNN library not in this Paddle build")
def test_convolution_primitives_hold_no_scratch_memory_between_calls():
    # oneDNN's bfloat16 backward-weights kernels need scratch memory (0.3-0.45 GB per CT-sized layer);
    # with the library managing it, every primitive kept its own for its lifetime. Now the primitive
    # holds none (its memory consumption is 0) and each run passes one, freed afterwards.
    import ctypes

    precision = "bf16" if primitives.bf16_supported() else "f32"
    plan = primitives._ConvPlan(False, [2, 16, 12, 20, 16], [16, 16, 3, 3, 3], [2, 16, 12, 20, 16], [1, 1, 1],
                                [1, 1, 1], True, precision, training=True)
    pd = plan._primitive_desc("backward_weights", plan._forward_pd(), with_bias=True)
    held = ctypes.c_int64(-1)
    try:
        plan.lib.lib.dnnl_primitive_desc_query(pd, 6, 0, ctypes.byref(held))  # dnnl_query_memory_consumption_s64
    finally:
        plan.lib.lib.dnnl_primitive_desc_destroy(pd)
    assert held.value == 0
    if precision == "bf16":
        assert plan.backward_weights().scratchpad_md is not None  # it does need one, passed per run
    rng = np.random.default_rng(8)
    x = paddle.to_tensor(rng.standard_normal((2, 16, 12, 20, 16)).astype(np.float32), stop_gradient=False)
    w = paddle.to_tensor((0.1 * rng.standard_normal((16, 16, 3, 3, 3))).astype(np.float32), stop_gradient=False)
    dy = paddle.to_tensor(rng.standard_normal((2, 16, 12, 20, 16)).astype(np.float32))
    got = paddle.grad([fast_cpu.onednn_conv(x, w, None, [1] * 3, [1] * 3, precision=precision)], [x, w], [dy])[1]
    want = paddle.grad([F.conv3d(x, w, padding=1)], [x, w], [dy])[1]
    tol = 2e-2 if precision == "bf16" else 1e-4
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tol, atol=tol * float(want.abs().max()))
