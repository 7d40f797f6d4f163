"""The fused InstanceNorm → LeakyReLU of CPU training (issue 16): Paddle's results to float32 rounding
(checked against a float64 reference), one full-size activation fewer kept per ConvNormAct block, and
the cases where it must not apply."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from pnnunet.runtime import network as network_module
from pnnunet.runtime.network import ConvNormAct, save_activation_memory, saving_activation_memory_pays
from pnnunet.runtime.norm_act import MIN_ABS_SCALE, fused_applies, instance_norm_leaky_relu
from pnnunet.runtime.recompute import _sharing_buffer, recomputed


def _reference64(x, scale, shift, dz, eps=1e-5, slope=0.01):
    """Instance norm + LeakyReLU and their gradients in float64 numpy."""
    x = x.astype(np.float64)
    axes = tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    g, b = scale.astype(np.float64).reshape(shape), shift.astype(np.float64).reshape(shape)
    mu = x.mean(axes, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(axes, keepdims=True) + eps)
    xh = (x - mu) * rstd
    y = xh * g + b
    z = np.where(y >= 0, y, slope * y)
    dy = np.where(y >= 0, dz, slope * dz)
    s1, s2 = dy.mean(axes, keepdims=True), (dy * xh).mean(axes, keepdims=True)
    dx = rstd * g * (dy - s1 - xh * s2)
    red = (0,) + axes
    return z, dx, (dy * xh).sum(red), dy.sum(red)


def _run(x, scale, shift, dz, fused):
    x, g, b = (paddle.to_tensor(a, stop_gradient=False) for a in (x, scale, shift))
    if fused:
        z = instance_norm_leaky_relu(x, g, b, 1e-5, 0.01)
    else:
        z = F.leaky_relu(F.instance_norm(x, weight=g, bias=b, eps=1e-5), 0.01)
    z.backward(paddle.to_tensor(dz))
    return z.numpy(), x.grad.numpy(), g.grad.numpy(), b.grad.numpy()


def _max_rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 7), (1, 4, 24, 40, 32), (3, 5, 48, 40)])
def test_fused_norm_leaky_relu_matches_a_float64_reference_as_closely_as_paddle(shape):
    rng = np.random.default_rng(sum(shape))
    c = shape[1]
    x = (3 * rng.standard_normal(shape) + 1).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    shift = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    dz = rng.standard_normal(shape).astype(np.float32)
    ref = _reference64(x, scale, shift, dz)
    ours, paddles = _run(x, scale, shift, dz, True), _run(x, scale, shift, dz, False)
    for name, a, p, r in zip(("output", "input gradient", "scale gradient", "shift gradient"), ours, paddles, ref):
        # float32 rounding: within 1e-5 of float64, and never much worse than Paddle's own kernels
        err, paddle_err = _max_rel(a, r), _max_rel(p, r)
        assert err < max(1e-5, 3 * paddle_err), (name, err, paddle_err)


def test_fused_block_keeps_one_full_size_activation_fewer():
    # what autograd keeps for the backward pass, as seen by saved_tensors_hooks
    paddle.seed(0)
    block = ConvNormAct(3, 4, 8, [3, 3, 3], [1, 1, 1], True)
    block.save_memory = True
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 4, 6, 7, 5)).astype(np.float32),
                         stop_gradient=False)
    full = 2 * 8 * 6 * 7 * 5  # the conv output / block output size

    def saved_sizes(forward):
        sizes = []
        # (unpacking into a tensor of its own: Paddle 2.6 moves the buffer out of what the hook returns)
        with paddle.autograd.saved_tensors_hooks(lambda t: sizes.append(int(np.prod(t.shape))) or t, _sharing_buffer):
            forward().sum().backward()
        return sorted(s for s in sizes if s >= full)

    fused = saved_sizes(lambda: block(x))
    unfused = saved_sizes(lambda: network_module.leaky_relu_saving_output(block.norm(block.conv(x)), 0.01))
    assert len(fused) == len(unfused) - 1, (fused, unfused)


def test_conv_norm_act_trains_with_the_fused_norm_and_agrees_with_paddle(monkeypatch):
    calls = []
    real = network_module.instance_norm_leaky_relu
    monkeypatch.setattr(network_module, "instance_norm_leaky_relu", lambda *a: calls.append(1) or real(*a))
    paddle.seed(0)
    block = ConvNormAct(3, 2, 4, [3, 3, 3], [1, 1, 1], True)
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((2, 2, 5, 6, 4)).astype(np.float32))
    block(x)
    assert not calls  # off by default
    assert save_activation_memory(block) == 1
    y = block(x)
    assert len(calls) == 1
    reference = F.leaky_relu(block.norm(block.conv(x)), 0.01)
    np.testing.assert_allclose(y.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
    params = [block.conv.weight, block.conv.bias, block.norm.scale, block.norm.bias]
    dz = paddle.to_tensor(np.random.default_rng(3).standard_normal(y.shape).astype(np.float32))
    got, want = paddle.grad([y], params, [dz]), paddle.grad([reference], params, [dz])
    scale = max(float(w.abs().max()) for w in want)  # the conv bias's gradient is ~0 (the norm removes it)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-5 * scale)
    with paddle.no_grad():
        block(x)  # inference: Paddle's norm and the in-place LeakyReLU
    assert len(calls) == 1


def test_fused_norm_inside_a_recomputed_stage_gives_the_same_gradients():
    paddle.seed(0)
    blocks = paddle.nn.Sequential(ConvNormAct(3, 2, 4, [3, 3, 3], [1, 1, 1], True),
                                  ConvNormAct(3, 4, 4, [3, 3, 3], [1, 1, 1], True))
    assert save_activation_memory(blocks) == 2
    x = paddle.to_tensor(np.random.default_rng(4).standard_normal((2, 2, 6, 5, 4)).astype(np.float32))
    grads = []
    for fn in (blocks, lambda t: recomputed(blocks, t)):
        grads.append([g.numpy() for g in paddle.grad([fn(x).square().sum()], blocks.parameters())])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_fused_path_applies_only_where_it_is_exact_enough():
    norm = paddle.nn.InstanceNorm3D(3)
    x = paddle.ones([1, 3, 2, 2, 2])
    assert fused_applies(x, norm)
    with paddle.no_grad():
        assert not fused_applies(x, norm)  # inference: Paddle's kernel
    assert not fused_applies(x.astype("float64"), norm)
    with paddle.no_grad():
        norm.scale.set_value(paddle.to_tensor([1.0, -MIN_ABS_SCALE / 2, 1.0]))
    assert not fused_applies(x, norm)  # a near-zero scale: x̂ cannot be recovered from the output
    with paddle.no_grad():
        norm.scale.set_value(paddle.to_tensor([1.0, -2 * MIN_ABS_SCALE, 1.0]))
    assert fused_applies(x, norm)  # negative scales are fine
    assert not fused_applies(x, paddle.nn.InstanceNorm3D(3, weight_attr=False, bias_attr=False))


def test_negative_scale_and_non_positive_slope():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    scale = np.array([-1.2, 0.7, -0.05], np.float32)
    shift = np.array([0.3, -0.2, 0.0], np.float32)
    dz = rng.standard_normal(x.shape).astype(np.float32)
    for a, r in zip(_run(x, scale, shift, dz, True), _reference64(x, scale, shift, dz)):
        assert _max_rel(a, r) < 1e-5
    with pytest.raises(ValueError, match="positive slope"):
        instance_norm_leaky_relu(paddle.ones([1, 1, 2, 2]), paddle.ones([1]), paddle.zeros([1]), 1e-5, 0.0)


def test_activation_memory_is_saved_by_default_only_for_large_activations():
    # a CT 3d_lowres plan (batch 2, 32 features, 80x192x160: 629 MB per activation) and the upstream
    # Hippocampus plan (batch 8, 32 features, 40x56x40: 92 MB), 2D CT (batch 12, 32 features, 512x512)
    assert saving_activation_memory_pays(2, 32, [80, 192, 160])
    assert saving_activation_memory_pays(12, 32, [512, 512])
    assert not saving_activation_memory_pays(8, 32, [40, 56, 40])
    assert not saving_activation_memory_pays(2, 32, [48, 96, 96])
