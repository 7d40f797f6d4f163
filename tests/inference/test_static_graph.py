"""Static-graph export + Paddle Inference vs the eager network (pnnunet/inference/static_graph.py)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from pnnunet.inference import static_graph as sg
from pnnunet.runtime.architectures import build_network


def _plan(dim: int, strides, features=(4, 8, 8), resenc: bool = False) -> dict:
    n = len(features)
    depth = {"n_blocks_per_stage": [1, 2, 2][:n]} if resenc else {"n_conv_per_stage": [1] * n}
    return {"architecture": {"network_class_name": "ResidualEncoderUNet" if resenc else "PlainConvUNet",
                             "arch_kwargs": {
        "n_stages": n, "features_per_stage": list(features), "conv_op": f"Conv{dim}d",
        "kernel_sizes": [[3] * dim] * n, "strides": strides, **depth,
        "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True}}}


# odd sizes along the axes that are not downsampled; 2 input channels, 3 outputs
CASES = {
    "3d": (_plan(3, [[1, 1, 1], [1, 2, 2], [1, 2, 2]]), (2, 2, 5, 12, 20)),
    "2d": (_plan(2, [[1, 1], [2, 1], [2, 1]]), (3, 2, 16, 7)),
    # residual blocks: avg-pool + projection skip (stage 1) and avg-pool only (stage 2, 8 -> 8 channels)
    "3d_resenc": (_plan(3, [[1, 1, 1], [1, 2, 2], [1, 2, 2]], resenc=True), (2, 2, 5, 12, 20)),
    "2d_resenc": (_plan(2, [[1, 1], [2, 1], [2, 1]], resenc=True), (3, 2, 16, 7)),
}


def _network(plan: dict, seed: int = 0):
    paddle.seed(seed)
    with paddle.utils.unique_name.guard():
        net = build_network(plan, 2, 3, deep_supervision=True)
    # non-trivial norm affine parameters, so the export must carry every weight
    rng = np.random.default_rng(seed)
    net.set_state_dict({k: (v.numpy() + rng.normal(0, 0.1, v.shape)).astype(np.float32)
                        for k, v in net.state_dict().items()})
    net.eval()
    return net


@pytest.mark.parametrize("name", sorted(CASES))
def test_static_predictor_equals_eager(name, tmp_path):
    plan, shape = CASES[name]
    net = _network(plan)
    dim = len(shape) - 2
    graph, params = sg.export_network(net, tmp_path / "model", 2, dim)
    assert graph.suffix in sg.GRAPH_SUFFIXES and params.suffix == ".pdiparams"
    predictor = sg.InferencePredictor(graph, params, "cpu", num_threads=1)
    assert predictor.keeps_buffers and not getattr(sg.eager_predict_fn(net), "keeps_buffers", False)
    eager = sg.eager_predict_fn(net)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    y_static, y_eager = predictor(x), eager(x)
    assert y_static.shape == (shape[0], 3, *shape[2:])
    assert np.abs(y_static - y_eager).max() < 1e-3
    # dynamic batch and spatial sizes: one export serves other shapes too; a flipped (non-contiguous) view works
    x2 = np.flip(rng.standard_normal((1, 2, *[s * 2 if i else s for i, s in enumerate(shape[2:])]))
                 .astype(np.float32), axis=-1)
    assert np.abs(predictor(x2) - eager(x2)).max() < 1e-3


def test_inference_config_uses_onednn(tmp_path):
    # (enable_memory_optim would make create_predictor fail on Paddle 3.3.1; the predictor tests cover that)
    graph, params = sg.export_network(_network(CASES["2d"][0]), tmp_path / "model", 2, 2)
    cfg = sg.inference_config(graph, params, "cpu", num_threads=2)
    enabled = getattr(cfg, "onednn_enabled", None) or cfg.mkldnn_enabled
    assert enabled()
    assert not cfg.use_gpu()
    assert cfg.ir_optim()
    assert cfg.cpu_math_library_num_threads() == 2


def test_exported_model_files_accepts_json_and_pdmodel(tmp_path):
    assert sg.exported_model_files(tmp_path / "model") is None
    (tmp_path / "model.pdiparams").write_bytes(b"")
    assert sg.exported_model_files(tmp_path / "model") is None  # params without a graph
    (tmp_path / "model.pdmodel").write_bytes(b"")  # Paddle 2.6 export
    assert sg.exported_model_files(tmp_path / "model") == (tmp_path / "model.pdmodel", tmp_path / "model.pdiparams")
    (tmp_path / "model.json").write_text("{}")  # Paddle 3.x export is preferred when both exist
    assert sg.exported_model_files(tmp_path / "model")[0] == tmp_path / "model.json"


def test_cached_export_reuses_and_reexports_a_newer_checkpoint(tmp_path):
    plan, _ = CASES["2d"]
    ckpt = tmp_path / "fold_0" / "checkpoint_final.pdparams"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights v1")
    calls = []

    def build():
        calls.append(1)
        return _network(plan)

    graph, params = sg.cached_export(ckpt, build, 2, 2)
    assert graph.parent == tmp_path / "fold_0" / "inference" / "checkpoint_final"
    assert (graph.parent / sg.META_FILE).is_file()
    assert sg.cached_export(ckpt, build, 2, 2) == (graph, params)
    assert len(calls) == 1  # cached
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the checkpoint was replaced later
    sg.cached_export(ckpt, build, 2, 2)
    assert len(calls) == 2
    assert not [p for p in graph.parent.parent.iterdir() if p.name.startswith(".tmp")]  # no leftovers


def test_make_predict_fn_falls_back_to_eager_when_export_fails(tmp_path, monkeypatch, caplog):
    plan, shape = CASES["3d"]
    net = _network(plan)
    ckpt = tmp_path / "checkpoint_final.pdparams"
    ckpt.write_bytes(b"x")

    def broken(*args, **kwargs):
        raise RuntimeError("export exploded")

    monkeypatch.setattr(sg, "cached_export", broken)
    with caplog.at_level(logging.WARNING):
        fn, backend = sg.make_predict_fn(lambda: net, ckpt, 2, 3, "cpu")
    assert backend == "eager"
    assert "export exploded" in caplog.text
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(fn(x), sg.eager_predict_fn(net)(x))


def test_static_predict_fn_switches_to_eager_when_a_run_fails(caplog):
    plan, shape = CASES["2d"]
    net = _network(plan)

    def failing(x):
        raise RuntimeError("predictor run failed")

    failing.keeps_buffers = True  # as an InferencePredictor: the sliding window leaves the heap alone
    fn = sg._FallbackPredictFn(failing, lambda: net, "fold_0/checkpoint_final.pdparams")
    assert fn.keeps_buffers
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        y = fn(x)
    assert fn.backend == "eager" and "predictor run failed" in caplog.text
    assert not fn.keeps_buffers  # the eager network frees its activations: the heap policy applies again
    np.testing.assert_array_equal(y, sg.eager_predict_fn(net)(x))


def test_resolve_precision():
    from pnnunet.inference.static_graph import resolve_precision
    from pnnunet.runtime.onednn.primitives import bf16_supported

    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "gpu") == resolve_precision("bf16", "gpu:1") == "fp16"  # autocast, as upstream
    assert resolve_precision("fp32", "gpu") == "fp32"
    assert resolve_precision("auto", "cpu") == ("bf16" if bf16_supported() else "fp32")
    assert resolve_precision("bf16", "cpu") == ("bf16" if bf16_supported() else "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
