"""Running out of memory in a training step is a PnnunetError naming the batch and the fix."""

import paddle
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.runtime.device import is_out_of_memory
from pnnunet.training.trainer import Trainer
from tests.training.synthetic import fixed_batches, make_trainer

GPU_OOM = ("(ResourceExhausted) Out of memory error on GPU 0. Cannot allocate 1.50GB memory on GPU 0, 23.40GB memory "
           "has been allocated and available memory is only 120.00MB.")


def test_paddle_allocation_failure_is_recognised():
    try:  # a real allocation failure of this Paddle version (MemoryError "(ResourceExhausted) ..." on 2.6 and 3.x)
        paddle.empty([1 << 42], dtype="float32")
    except Exception as e:  # noqa: BLE001
        assert is_out_of_memory(e), repr(e)
    else:
        pytest.skip("the allocation succeeded")
    assert is_out_of_memory(RuntimeError("ResourceExhaustedError: " + GPU_OOM))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.parametrize("error", [MemoryError(GPU_OOM), RuntimeError("ResourceExhaustedError: " + GPU_OOM)])
def test_oom_in_training_step_is_a_clear_error(tmp_path, monkeypatch, error):
    def raise_oom(self, batch):
        raise error

    monkeypatch.setattr(Trainer, "_forward_backward_step", raise_oom)
    trainer = make_trainer(tmp_path, batch_size=2, device="gpu:0")
    with pytest.raises(PnnunetError) as info:
        trainer.train_step(fixed_batches(1, batch_size=2)[0])
    msg = str(info.value)
    assert "out of memory in the GPU (gpu:0) during a training step" in msg
    assert "batch of shape [2, 1, 8, 12, 8]" in msg and "Out of memory error on GPU 0" in msg
    assert "fix: plan for less memory, e.g. pnnunet_plan_and_preprocess -d Dataset999_Tiny -gpu_memory_target 6" in msg
    assert "-num_gpus 2" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("bf16", [True, False])
def test_oom_in_a_cpu_training_step_suggests_fp32_only_when_training_in_bf16(tmp_path, monkeypatch, bf16):
    import pnnunet.training.trainer as trainer_module

    def raise_oom(self, batch):
        raise MemoryError("(ResourceExhausted) Fail to alloc memory of 1 GB on CPU")

    monkeypatch.setattr(Trainer, "_forward_backward_step", raise_oom)
    monkeypatch.setattr(trainer_module, "bf16_supported", lambda: True)  # as on a CPU with native bfloat16
    trainer = make_trainer(tmp_path, batch_size=2, cpu_bf16=None if bf16 else False)
    with pytest.raises(PnnunetError) as info:
        trainer.train_step(fixed_batches(1, batch_size=2)[0])
    msg = str(info.value)
    assert "out of memory in host memory (CPU) during a training step" in msg
    assert ("bfloat16 mixed" in msg) == bf16
    # no --fp32 hint any more: with per-call oneDNN scratchpads bf16 peaks no higher than float32 (RESULTS.md)
    assert "--fp32" not in msg


def test_other_errors_are_not_swallowed(tmp_path, monkeypatch):
    def fail(self, batch):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Trainer, "_forward_backward_step", fail)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        make_trainer(tmp_path, batch_size=2).train_step(fixed_batches(1, batch_size=2)[0])


def test_oom_in_validation_step_is_a_clear_error(tmp_path, monkeypatch):
    def raise_oom(self, batch):
        raise MemoryError(GPU_OOM)

    monkeypatch.setattr(Trainer, "_validation_batch", raise_oom)
    with pytest.raises(PnnunetError, match="during a validation step of the epoch"):
        make_trainer(tmp_path, batch_size=2, device="gpu")._val_step(fixed_batches(1, batch_size=2)[0])
