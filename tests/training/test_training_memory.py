"""The final validation runs after training in the same process (issue 16): before it, the trainer drops
its network, gradients and optimizer, the cached oneDNN primitives, and trims the heap."""

import pytest

from pnnunet.errors import PnnunetError
from pnnunet.training import trainer as trainer_module
from pnnunet.training.trainer import Trainer
from tests.training.jobs import small_job


def test_release_training_state_drops_optimizer_network_primitives_and_trims(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "release_plans", lambda: calls.append("plans"))
    monkeypatch.setattr(trainer_module, "trim_heap", lambda: calls.append("trim"))
    trainer = Trainer(small_job(tmp_path, 3, 0))
    trainer._build()
    params = trainer.network.parameters()
    for p in params:
        p.grad = p * 0 + 1  # as after a backward pass
    assert all(p.grad is not None for p in params)
    trainer.release_training_state()
    assert trainer.network is None and trainer.optimizer is None and trainer.loss is None
    assert all(p.grad is None for p in params)
    assert calls == ["plans", "trim"]
    trainer.release_training_state()  # nothing built: still fine


def test_final_validation_releases_the_training_state_first(tmp_path, monkeypatch):
    released = []
    monkeypatch.setattr(Trainer, "release_training_state", lambda self: released.append(self))
    trainer = Trainer(small_job(tmp_path, 3, 0))
    with pytest.raises(PnnunetError, match="not found"):  # no checkpoint: stops before building
        trainer.final_validation()
    assert released == [trainer]


def _three_steps(tmp, recompute_stages: int):
    import paddle

    from tests.training.synthetic import fixed_batches, make_trainer

    with paddle.utils.unique_name.guard():
        paddle.seed(1234)
        trainer = make_trainer(tmp)
        trainer.cfg = trainer.cfg.replace(cpu_recompute_stages=recompute_stages)
        trainer.build()
        stages = [s.recompute for s in trainer.network.encoder.stages]
        losses = [trainer.train_step(b) for b in fixed_batches(3)]
        return stages, losses, {k: v.numpy() for k, v in trainer.network.state_dict().items()}


def test_cpu_trainer_recomputes_encoder_stages_with_the_same_training(tmp_path):
    """TrainConfig.cpu_recompute_stages (default 2) switches the CPU network's highest-resolution encoder
    stages to recomputation; three optimizer steps give the same losses and weights bit for bit."""
    import numpy as np

    from pnnunet.training.config import TrainConfig

    assert TrainConfig().cpu_recompute_stages == 2
    stages, losses, weights = _three_steps(tmp_path / "a", 2)
    plain_stages, plain_losses, plain_weights = _three_steps(tmp_path / "b", 0)
    assert stages == [True, True, False] and plain_stages == [False, False, False]
    assert losses == plain_losses
    for k in plain_weights:
        np.testing.assert_array_equal(weights[k], plain_weights[k])


def _three_steps_saving(tmp, save):
    import paddle

    from pnnunet.runtime.network import ConvNormAct
    from tests.training.synthetic import fixed_batches, make_trainer

    with paddle.utils.unique_name.guard():
        paddle.seed(1234)
        trainer = make_trainer(tmp)
        trainer.cfg = trainer.cfg.replace(cpu_save_activation_memory=save)
        trainer.build()
        flags = {b.save_memory for b in trainer.network.sublayers() if isinstance(b, ConvNormAct)}
        losses = [trainer.train_step(b) for b in fixed_batches(3)]
        return flags, losses, {k: v.numpy() for k, v in trainer.network.state_dict().items()}


def test_cpu_trainer_saves_activation_memory_where_asked_with_the_same_training(tmp_path):
    """TrainConfig.cpu_save_activation_memory: True switches every ConvNormAct block to the fused norm +
    LeakyReLU and the unconcatenated decoder convolution, False and the default (None: the tiny plan's
    activations are far below 256 MiB) do not; three steps give the same losses and weights up to float32
    rounding."""
    import numpy as np

    from pnnunet.training.config import TrainConfig

    assert TrainConfig().cpu_save_activation_memory is None
    on, on_losses, on_weights = _three_steps_saving(tmp_path / "a", True)
    off, off_losses, off_weights = _three_steps_saving(tmp_path / "b", False)
    auto, auto_losses, _ = _three_steps_saving(tmp_path / "c", None)
    assert (on, off, auto) == ({True}, {False}, {False})
    assert auto_losses == off_losses
    np.testing.assert_allclose(on_losses, off_losses, rtol=1e-4)
    for k in off_weights:
        np.testing.assert_allclose(on_weights[k], off_weights[k], rtol=1e-3, atol=1e-5)


def test_cpu_train_steps_trim_the_heap_with_the_same_losses(tmp_path, monkeypatch):
    """Inside the CPU heap policy each training step gives its freed heap chunks back (trim_heap) so they
    are not resident during the next step, and after the first step the policy is decided once; the losses
    are those of steps without any heap policy."""
    import paddle

    from pnnunet import heap
    from tests.training.synthetic import fixed_batches, make_trainer

    def losses(tmp, policy: bool):
        with paddle.utils.unique_name.guard():
            paddle.seed(1234)
            trainer = make_trainer(tmp)
            trainer.build()
            if not policy:
                return [trainer.train_step(b) for b in fixed_batches(3)], None
            with trainer._training_heap():
                return [trainer.train_step(b) for b in fixed_batches(3)], trainer.heap.decision

    calls = []
    real_trim = heap.trim_heap
    monkeypatch.setattr(heap, "trim_heap", lambda: calls.append(1) or real_trim())
    trimmed, decision = losses(tmp_path / "a", True)
    assert len(calls) >= 3  # once per step (and on entering the policy)
    assert decision in ("reuse", "return")
    assert trimmed == losses(tmp_path / "b", False)[0]


def test_cpu_training_heap_policy_is_entered_on_cpu_only(tmp_path, monkeypatch):
    import contextlib

    from pnnunet import heap

    entered = []

    @contextlib.contextmanager
    def policy():
        entered.append(1)
        yield True

    monkeypatch.setattr(heap, "return_freed_memory", policy)
    trainer = Trainer(small_job(tmp_path, 3, 0))
    with trainer._training_heap():
        assert isinstance(trainer.heap, heap.TrainingHeap)
    assert entered == [1] and trainer.heap is None
    trainer.job.device = "gpu:0"  # host memory is not the limit there: glibc's defaults stay
    with trainer._training_heap():
        assert trainer.heap is None
    assert entered == [1]
