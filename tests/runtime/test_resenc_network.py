"""ResidualEncoderUNet against upstream dynamic_network_architectures (models_and_scale §2-3).

Fixtures in tests/data/upstream_resenc (made by benchmarks/upstream/make_resenc_fixtures.py in the
upstream venv, see the README there).
"""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.plans import resolve_configuration
from pnnunet.runtime.architectures import build_network, network_kind
from pnnunet.runtime.resenc_network import BasicBlockD, ResidualEncoderUNet

DATA = Path(__file__).resolve().parents[1] / "data" / "upstream_resenc"
PLANS = Path(__file__).resolve().parents[1] / "planning" / "expected_resenc"
TINY = json.loads((DATA / "tiny_networks.json").read_text())["networks"]
COUNTS = json.loads((DATA / "param_counts.json").read_text())["counts"] if (DATA / "param_counts.json").is_file() else []


def n_params(net) -> int:
    return sum(int(np.prod(p.shape)) for p in net.parameters())


def tiny(name: str, **extra) -> ResidualEncoderUNet:
    kw = dict(TINY[name]["kwargs"])
    kw["conv_dim"] = 3 if kw.pop("conv_op") == "Conv3d" else 2
    return ResidualEncoderUNet(**kw, **extra)


def upstream_name(paddle_name: str) -> str:
    """Paddle's InstanceNorm calls its weight ``scale``; everything else is named as upstream."""
    return paddle_name.replace(".norm.scale", ".norm.weight")


@pytest.mark.parametrize("name", sorted(TINY))
def test_state_dict_names_order_and_shapes_equal_upstream(name):
    """Each upstream tensor (aliases dropped) has the same name, shape and position here, so a state_dict
    maps by name; tiny_3d has every skip kind (pool + projection, projection only, pool only)."""
    net = tiny(name)
    ours = [[upstream_name(k), list(v.shape)] for k, v in net.state_dict().items()]
    assert ours == TINY[name]["state_dict"]
    assert n_params(net) == TINY[name]["n_params"]


def test_skip_paths_follow_stride_and_channels():
    blocks = tiny("tiny_3d").encoder.stages
    kinds = [[type(layer).__name__ for layer in stage.blocks[0].skip] if stage.blocks[0].skip is not None else []
             for stage in blocks]
    assert kinds == [[], ["AvgPool3D", "ConvNorm"], ["ConvNorm"], ["AvgPool3D"]]
    assert blocks[1].blocks[0].skip[1].conv.bias is None  # the 1×1 projection has no bias, as upstream


def _fill_like_upstream_script(net):
    for k, p in enumerate(net.parameters()):
        n = int(np.prod(p.shape))
        p.set_value((0.5 * np.sin(0.37 * np.arange(n) + 1.3 * k)).reshape(list(p.shape)).astype(np.float32))


def _probe(out) -> list[float]:
    o = out.numpy().astype(np.float64)
    w = np.cos(0.5 * np.arange(o.size)).reshape(o.shape)
    return [o.sum(), (o * o).sum(), (o * w).sum()]


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_equals_upstream_with_same_weights(name):
    """Same deterministic weights and input as upstream's run: residual add, avg-pool skip, projection,
    stem, decoder concat order and heads all take part."""
    net = tiny(name, deep_supervision=True)
    _fill_like_upstream_script(net)
    shape = TINY[name]["x_shape"]
    x = paddle.to_tensor(np.cos(0.11 * np.arange(np.prod(shape))).reshape(shape).astype(np.float32))
    expected = TINY[name]["probes"]
    with paddle.no_grad():
        outs = net(x)
        assert len(outs) == len(expected)
        for out, ref in zip(outs, expected):
            np.testing.assert_allclose(_probe(out), ref, rtol=1e-5, atol=1e-4)
    net.train()
    np.testing.assert_allclose(_probe(net(x)[0]), expected[0], rtol=1e-5, atol=1e-4)  # training-mode activations


@pytest.mark.parametrize("name", sorted(TINY))
def test_second_norm_of_every_block_starts_at_zero(name):
    paddle.seed(0)
    net = tiny(name)
    zero = sorted(upstream_name(k) for k, v in net.state_dict().items()
                  if k.endswith(".norm.scale") and not np.abs(v.numpy()).sum())
    assert zero == TINY[name]["zero_initialised"]  # the norms upstream's init zeroes, and only those
    blocks = [layer for layer in net.sublayers() if isinstance(layer, BasicBlockD)]
    assert len(blocks) == sum(TINY[name]["kwargs"]["n_blocks_per_stage"])
    assert len(zero) == len(blocks)
    for b in blocks:
        assert not b.conv2.norm.scale.numpy().any() and not b.conv2.norm.bias.numpy().any()
        assert (b.conv1.norm.scale.numpy() == 1).all()


def test_fresh_block_is_its_skip_path():
    """With conv2's norm at zero a new block computes LeakyReLU(skip(x)) whatever conv1/conv2 hold."""
    paddle.seed(1)
    block = BasicBlockD(3, 4, 8, [3, 3, 3], [2, 2, 2], True)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 4, 6, 6, 6)).astype(np.float32))
    with paddle.no_grad():
        np.testing.assert_allclose(block(x).numpy(), paddle.nn.functional.leaky_relu(block.skip(x), 0.01).numpy(),
                                   atol=1e-6)


def _config(name: str, conv_op: str) -> dict:
    kw = dict(TINY[name]["kwargs"])
    kw["conv_op"] = conv_op
    kw.pop("input_channels"), kw.pop("num_classes")
    return {"architecture": {"network_class_name": "ResidualEncoderUNet", "arch_kwargs": kw}}


@pytest.mark.parametrize("class_name", ["dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                                        "pnnunet.runtime.resenc_network.ResidualEncoderUNet"])
@pytest.mark.parametrize("name, conv_op", [("tiny_2d", "torch.nn.modules.conv.Conv2d"), ("tiny_3d", "paddle.nn.Conv3D")])
def test_forward_shapes_from_plans(class_name, name, conv_op):
    cfg = _config(name, conv_op)
    cfg["architecture"]["network_class_name"] = class_name
    net = build_network(cfg, input_channels=TINY[name]["kwargs"]["input_channels"], num_classes=5,
                        deep_supervision=True)
    assert isinstance(net, ResidualEncoderUNet)
    shape = TINY[name]["x_shape"]
    strides = np.array(TINY[name]["kwargs"]["strides"])
    with paddle.no_grad():
        outs = net(paddle.zeros(shape, dtype="float32"))
        spatial = np.array(shape[2:])
        expected = []
        for s in range(len(strides) - 1):  # one head per decoder stage, at the resolution of skip s
            spatial = spatial // strides[s]
            expected.append([shape[0], 5, *spatial.tolist()])
        assert [list(o.shape) for o in outs] == expected
        net.deep_supervision = False
        assert list(net(paddle.zeros(shape, dtype="float32")).shape) == expected[0]


def test_network_kind_dispatch():
    assert network_kind("dynamic_network_architectures.architectures.unet.PlainConvUNet") == "PlainConvUNet"
    assert network_kind("pnnunet.runtime.network.PlainConvUNet") == "PlainConvUNet"
    assert network_kind("ResidualEncoderUNet") == "ResidualEncoderUNet"
    with pytest.raises(PnnunetError, match="not supported"):
        network_kind("my.own.UMambaBot")
    cfg = _config("tiny_2d", "Conv2d")
    cfg["architecture"]["network_class_name"] = "ResidualEncoderUNet"
    del cfg["architecture"]["arch_kwargs"]["n_blocks_per_stage"]
    with pytest.raises(PnnunetError, match="n_blocks_per_stage"):
        build_network(cfg, 1, 2)


def _count_cases():
    """A spread of upstream-planned configurations: every scenario's M 3d_fullres and 2d, L and XL of CT."""
    picked = [c for c in COUNTS if (c["plans"] == "nnUNetResEncUNetMPlans" and c["configuration"] in ("2d", "3d_fullres"))
              or (c["scenario"] in ("ct_abdomen_lowres", "kits_like", "hippocampus_sample"))]
    return [pytest.param(c, id=f"{c['scenario']}-{c['plans']}-{c['configuration']}") for c in picked]


@pytest.mark.parametrize("case", _count_cases())
def test_parameter_count_equals_upstream(case):
    plans = json.loads((PLANS / case["scenario"] / f"{case['plans']}.json").read_text())
    cfg = resolve_configuration(plans, case["configuration"])
    with paddle.LazyGuard():  # shapes only: no 100 M-parameter He draws
        net = build_network(cfg, case["input_channels"], case["num_classes"], deep_supervision=True)
    assert isinstance(net, ResidualEncoderUNet)
    assert n_params(net) == case["n_params"]


def test_count_fixture_covers_the_scenarios():
    if not COUNTS:
        pytest.skip("param_counts.json not made yet")
    scenarios = {c["scenario"] for c in COUNTS}
    assert {"hippocampus_sample", "hippocampus_220", "ct_abdomen_lowres", "kits_like"} <= scenarios
    assert {c["plans"] for c in COUNTS} == {f"nnUNetResEncUNet{s}Plans" for s in ("M", "L", "XL")}
