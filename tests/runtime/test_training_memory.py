"""Training memory (issue 16): the LeakyReLU that keeps its output instead of its input gives Paddle's
gradients bit for bit, and the training path of a ConvNormAct block uses it; dropping the cached oneDNN
primitives does not break a convolution whose backward is still to come."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from pnnunet.runtime import network as network_module
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
    np.testing.assert_array_equal(network_module._leaky_relu_grad(y, dy, 0.01).numpy(), kernel)


def test_non_positive_slope_is_refused():
    with pytest.raises(ValueError, match="positive slope"):
        leaky_relu_saving_output(paddle.ones([2]), 0.0)


def test_conv_norm_act_trains_with_the_output_saving_leaky_relu(monkeypatch):
    calls = []
    real = network_module.leaky_relu_saving_output
    monkeypatch.setattr(network_module, "leaky_relu_saving_output", lambda x, s: calls.append(1) or real(x, s))
    paddle.seed(0)
    block = ConvNormAct(3, 2, 4, [3, 3, 3], [1, 1, 1], True)
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((2, 2, 5, 6, 4)).astype(np.float32))
    y = block(x)
    assert len(calls) == 1
    reference = F.leaky_relu(block.norm(block.conv(x)), 0.01)
    np.testing.assert_array_equal(y.numpy(), reference.numpy())
    grads = paddle.grad([y.sum()], [block.conv.weight])[0].numpy()
    ref_grads = paddle.grad([reference.sum()], [block.conv.weight])[0].numpy()
    np.testing.assert_array_equal(grads, ref_grads)
    with paddle.no_grad():
        block(x)  # inference: in place, not the autograd layer
    assert len(calls) == 1


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
