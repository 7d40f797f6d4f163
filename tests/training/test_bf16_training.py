"""bfloat16 mixed-precision training on CPU (``--bf16``, issue 15): float32 master weights and optimizer
state, exact resume, and the float32 fallback on a CPU without native bfloat16."""

import dataclasses
import logging

import numpy as np
import paddle
import pytest

from pnnunet.runtime import amp
from pnnunet.runtime import checkpoints as ck
from pnnunet.runtime.onednn.layers import FastConv3D
from pnnunet.runtime.onednn.primitives import bf16_supported
from pnnunet.training.deep_supervision import downsample_seg_for_ds, ds_scales
from pnnunet.training.trainer import Trainer
from tests.training.jobs import small_job

needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16 convolutions")


def _job(tmp_path, bf16=True, **cfg):
    job = small_job(tmp_path, 3, 0, epochs=4)
    job.config = dataclasses.replace(job.config, cpu_bf16=bf16, num_workers=0, **cfg)
    return job


def _batches(trainer, n, seed=0):
    rng = np.random.default_rng(seed)
    shape = [trainer.plan.batch_size, 1, *trainer.plan.patch_size]
    out = []
    for _ in range(n):
        seg = (rng.random(shape) > 0.6).astype(np.int16)
        out.append({"data": rng.standard_normal(shape).astype(np.float32) + seg,
                    "target": downsample_seg_for_ds(seg, ds_scales(trainer.plan.arch_kwargs["strides"]))})
    return out


def _built(job):
    trainer = Trainer(job)
    paddle.seed(job.config.seed)
    trainer.build()
    return trainer


def _weights(trainer):
    return {k: v.numpy().copy() for k, v in trainer.network.state_dict().items()}


def test_training_precision_choice():
    assert amp.training_precision("cpu", False, True, True) == ("float32", None)
    assert amp.training_precision("cpu", True, True, True) == (amp.CPU_BF16, None)
    precision, why = amp.training_precision("cpu", True, True, False)
    assert precision == "float32" and "no native bfloat16" in why and "float32" in why
    precision, why = amp.training_precision("cpu", True, False, True)
    assert precision == "float32" and "--no_fast_cpu" in why
    assert amp.training_precision("gpu", True, True, True)[0] == "float16 AMP"
    # None, the default: bfloat16 where it is native and oneDNN runs the convolutions, float32 silently elsewhere
    assert amp.training_precision("cpu", None, True, True) == (amp.CPU_BF16, None)
    assert amp.training_precision("cpu", None, True, False) == ("float32", None)
    assert amp.training_precision("cpu", None, False, True) == ("float32", None)
    assert amp.training_precision("gpu", None, True, True) == ("float16 AMP", None)


def test_default_is_bf16_where_native_and_fp32_turns_it_off(tmp_path, monkeypatch):
    """The trainer's default config asks for nothing: it uses bfloat16 exactly when the CPU has it;
    ``cpu_bf16=False`` (``--fp32``) keeps float32 on such a CPU."""
    import pnnunet.training.trainer as trainer_module

    job = small_job(tmp_path, 3, 0, epochs=1)
    assert job.config.cpu_bf16 is None
    for native in (True, False):
        monkeypatch.setattr(trainer_module, "bf16_supported", lambda native=native: native)
        assert Trainer(job).precision == (amp.CPU_BF16 if native else "float32")
        assert Trainer(job).precision_fallback is None
        off = dataclasses.replace(job, config=dataclasses.replace(job.config, cpu_bf16=False))
        assert Trainer(off).precision == "float32"


@needs_bf16
def test_bf16_steps_keep_float32_master_weights_and_optimizer_state(tmp_path):
    with paddle.utils.unique_name.guard():
        trainer = _built(_job(tmp_path))
        assert trainer.precision == amp.CPU_BF16
        convs = [m for m in trainer.network.sublayers() if isinstance(m, FastConv3D)]
        assert convs and all(m._training_precision == "bf16" for m in convs)
        before = _weights(trainer)
        losses = [trainer.train_step(b) for b in _batches(trainer, 2)]
    assert all(np.isfinite(losses))
    params = trainer.network.parameters()
    assert all(p.dtype == paddle.float32 for p in params)
    assert all(p.grad is None or p.grad.dtype == paddle.float32 for p in params)
    accumulators = [v for k, v in trainer.optimizer.state_dict().items() if isinstance(v, paddle.Tensor)]
    assert accumulators and all(v.dtype == paddle.float32 for v in accumulators)
    after = _weights(trainer)
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # the steps did update
    assert all(after[k].dtype == np.float32 for k in after)


@needs_bf16
def test_bf16_differs_from_float32_but_stays_close(tmp_path):
    losses = {}
    for bf16 in (False, True):
        with paddle.utils.unique_name.guard():
            trainer = _built(_job(tmp_path / str(bf16), bf16=bf16))
            losses[bf16] = [trainer.train_step(b) for b in _batches(trainer, 2)]
    assert losses[True] != losses[False]  # the convolutions really ran in bfloat16
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2)


@needs_bf16
def test_bf16_resume_is_exact(tmp_path):
    """Two steps, checkpoint, restore into a new trainer, two more steps == four uninterrupted steps."""
    job = _job(tmp_path)
    with paddle.utils.unique_name.guard():
        straight = _built(job)
        batches = _batches(straight, 4)
        for b in batches:
            straight.train_step(b)
        expected = _weights(straight)
    with paddle.utils.unique_name.guard():
        first = _built(job)
        for b in batches[:2]:
            first.train_step(b)
        first.current_epoch = 1
        first._save("checkpoint_latest")
    assert ck.load_checkpoint(ck.checkpoint_path(job.fold_dir, "checkpoint_latest"))["precision"] == amp.CPU_BF16
    with paddle.utils.unique_name.guard():
        resumed = _built(job)
        resumed._restore(ck.checkpoint_path(job.fold_dir, "checkpoint_latest"))
        for b in batches[2:]:
            resumed.train_step(b)
    got = _weights(resumed)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_cpu_without_native_bf16_falls_back_to_float32_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("pnnunet.training.trainer.bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pnnunet"):
        trainer = Trainer(_job(tmp_path))
    assert trainer.precision == "float32"
    assert "no native bfloat16" in caplog.text and "falling back to float32" in caplog.text
    with paddle.utils.unique_name.guard():
        paddle.seed(0)
        trainer.build()
    convs = [m for m in trainer.network.sublayers() if isinstance(m, FastConv3D)]
    assert convs and all(m._training_precision == "f32" for m in convs)
    assert trainer._payload()["precision"] == "float32"


@needs_bf16
def test_bf16_training_is_deterministic_and_finite_down_to_a_depth_2_bottleneck(tmp_path):
    """The tiny synthetic plan (patch 8x12x8, bottleneck 2x3x2) trained with bfloat16 gave NaN losses or
    run-to-run differences before ``primitives.shallow_input_bug``: three steps, twice, give the same finite
    losses, close to float32's."""
    from tests.training.synthetic import DATASET_JSON, fixed_batches, tiny_plans
    from pnnunet.training.config import make_train_config
    from pnnunet.training.trainer import TrainingJob

    def losses(bf16, run):
        with paddle.utils.unique_name.guard():
            paddle.seed(1234)
            cfg = make_train_config(num_workers=0, cpu_bf16=bf16)
            job = TrainingJob(tmp_path / f"{bf16}{run}" / "pre", tmp_path / f"{bf16}{run}" / "res", tiny_plans(4, True),
                              "3d_fullres", 0, DATASET_JSON, "pnnunetTrainer", cfg, "cpu", progress_bar=False)
            trainer = Trainer(job)
            trainer.build()
            assert trainer.precision == (amp.CPU_BF16 if bf16 else "float32")
            return [trainer.train_step(b) for b in fixed_batches(3, 4)]

    first, second, fp32 = losses(True, 0), losses(True, 1), losses(False, 0)
    assert np.all(np.isfinite(first)) and first == second
    np.testing.assert_allclose(first, fp32, rtol=2e-3)
