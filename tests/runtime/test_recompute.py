"""Recomputed encoder stages (issue 16, training memory): the same outputs and gradients as without
recomputation, with and without the oneDNN convolutions; the stage's activations are not kept after the
forward pass, and nothing of the recomputation stays after the backward pass."""

import numpy as np
import paddle
import pytest

from pnnunet.runtime import recompute as recompute_module
from pnnunet.runtime.network import PlainConvUNet, StackedConvs, recompute_encoder_stages
from pnnunet.runtime.onednn import layers as fast_cpu


def _net(accelerate: bool) -> PlainConvUNet:
    paddle.seed(0)
    net = PlainConvUNet(1, 3, [4, 8, 16], 3, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [2, 2, 2], 3,
                        [2, 2], conv_bias=True, deep_supervision=True)
    if accelerate:
        fast_cpu.accelerate_convolutions(net)
    return net


def _outputs_and_grads(stages: int, accelerate: bool, steps: int = 2):
    net = _net(accelerate)
    assert recompute_encoder_stages(net, stages) == stages
    rng = np.random.default_rng(4)
    results = []
    for _ in range(steps):  # the second step reuses the network: nothing left over from the first
        x = paddle.to_tensor(rng.standard_normal((2, 1, 12, 8, 8)).astype(np.float32))
        outputs = net(x)
        sum((o * o).mean() for o in outputs).backward()
        results += [o.numpy() for o in outputs] + [p.grad.numpy() for p in net.parameters()]
        net.clear_gradients()
    return results


@pytest.mark.parametrize("accelerate", [False, True])
def test_recomputed_stages_give_the_same_outputs_and_gradients(accelerate):
    if accelerate and not fast_cpu.onednn_available():
        pytest.skip("oneDNN library not in this Paddle build")
    plain = _outputs_and_grads(0, accelerate)
    for stages in (1, 2):
        again = _outputs_and_grads(stages, accelerate)
        assert len(plain) == len(again)
        for a, b in zip(plain, again):  # same kernels on the same inputs: bit for bit
            np.testing.assert_array_equal(a, b)


def test_recomputed_stage_keeps_nothing_and_hands_out_every_tensor_once(monkeypatch):
    segments = []

    class Recording(recompute_module._Segment):
        def __init__(self, fn, x):
            super().__init__(fn, x)
            segments.append(self)

    monkeypatch.setattr(recompute_module, "_Segment", Recording)
    net = _net(accelerate=False)
    recompute_encoder_stages(net, 1)
    x = paddle.to_tensor(np.random.default_rng(5).standard_normal((1, 1, 12, 8, 8)).astype(np.float32))
    outputs = net(x)
    (segment,) = segments
    assert segment.storage is None and segment.packed > 0  # forward: indices only, no recomputation yet
    sum((o * o).mean() for o in outputs).backward()
    assert segment.storage == {}, {k: v.shape for k, v in segment.storage.items()}
    assert segment.x is None  # recomputed once, every tensor taken, input dropped
    assert all(p.grad is not None for p in net.encoder.stages[0].parameters())


def test_without_grad_recording_the_stage_runs_plainly(monkeypatch):
    monkeypatch.setattr(recompute_module, "_Segment", lambda *a: pytest.fail("no segment without autograd"))
    paddle.seed(0)
    stage = StackedConvs(2, 3, 1, 4, [3, 3, 3], [1, 1, 1], True)
    stage.recompute = True
    x = paddle.to_tensor(np.ones((1, 1, 4, 4, 4), np.float32))
    with paddle.no_grad():
        y = stage(x)
    stage.recompute = False
    with paddle.no_grad():
        np.testing.assert_array_equal(y.numpy(), stage(x).numpy())


def test_recomputation_that_records_differently_is_an_error():
    calls = []

    def fn(x):  # records one multiplication the first time, two the second
        calls.append(1)
        y = x * x
        return y * y if len(calls) > 1 else y

    x = paddle.to_tensor(np.ones((3,), np.float32), stop_gradient=False)
    y = recompute_module.recomputed(fn, x)
    try:
        with pytest.raises((RuntimeError, OSError), match="not deterministic"):  # Paddle wraps it in OSError
            y.sum().backward()
    finally:
        paddle.set_grad_enabled(True)  # a backward pass that raised leaves grad recording off


def test_residual_encoder_stages_are_not_switched():
    from pnnunet.runtime.resenc_network import ResidualEncoderUNet

    paddle.seed(0)
    net = ResidualEncoderUNet(1, 3, [4, 8, 16], 3, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [1, 1, 1],
                              3, [1, 1], conv_bias=True, deep_supervision=True)
    assert recompute_encoder_stages(net, 2) == 0
    assert recompute_encoder_stages(_net(accelerate=False), 2) == 2
