"""Issue 14: a training stopped after an epoch's checkpoint and resumed with ``--c`` ends with the same final
checkpoint as the uninterrupted run, bit for bit: batches are drawn and augmented from (seed, batch index)
(dataloading.py), so the resumed run continues the uninterrupted run's batch stream (the full kill -9 trials:
benchmarks/kill_resume.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pnnunet.preprocessing.storage import save_preprocessed_case
from pnnunet.runtime import checkpoints as ck
from pnnunet.training.config import TrainConfig
from pnnunet.training.trainer import Trainer, TrainingJob
from tests.training.synthetic import DATASET_JSON, tiny_plans

pytest.importorskip("paddle")
EPOCHS = 3


def _job(tmp_path, name: str) -> TrainingJob:
    plans = tiny_plans(batch_size=2)
    pre = tmp_path / "pre"
    folder = pre / plans["configurations"]["3d_fullres"]["data_identifier"]
    if not folder.exists():
        rng = np.random.default_rng(0)
        for i in range(3):
            seg = rng.integers(0, 3, size=(1, 12, 16, 12)).astype(np.int16)
            save_preprocessed_case(folder, f"c{i}", rng.normal(size=(1, 12, 16, 12)).astype(np.float32) + seg, seg,
                                   {})
    cfg = TrainConfig(num_epochs=EPOCHS, iterations_per_epoch=2, val_iterations_per_epoch=1, num_workers=0)
    return TrainingJob(pre, tmp_path / name, plans, "3d_fullres", "all", DATASET_JSON, "pnnunetTrainer", cfg,
                       progress_bar=False)


class _Killed(Exception):
    pass


def test_resumed_training_equals_the_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
    straight = _job(tmp_path, "straight")
    Trainer(straight).fit()

    cut = _job(tmp_path, "cut")
    original = Trainer._run_epoch

    def stop_after_two_epochs(self, epoch, train_iter, val_iter):
        original(self, epoch, train_iter, val_iter)
        if self.current_epoch == 2:  # checkpoint_latest of epoch 2 written, then the process "dies"
            raise _Killed

    monkeypatch.setattr(Trainer, "_run_epoch", stop_after_two_epochs)
    with pytest.raises(_Killed):
        Trainer(cut).fit()
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    assert ck.latest_existing(cut.fold_dir).name == "checkpoint_latest.pdparams"
    Trainer(cut).fit(resume=True)

    a, b = (ck.load_checkpoint(j.fold_dir / "checkpoint_final.pdparams") for j in (straight, cut))
    assert a["current_epoch"] == b["current_epoch"] == EPOCHS
    assert a["logging"]["lrs"] == b["logging"]["lrs"]
    for key in ("train_losses", "val_losses", "dice_per_class", "ema_fg_dice", "best_ema"):
        assert a["logging"][key] == b["logging"][key], key
    for k in a["network_weights"]:
        np.testing.assert_array_equal(np.asarray(b["network_weights"][k]), np.asarray(a["network_weights"][k]), k)


def test_an_inference_only_checkpoint_validates_but_is_not_resumed(tmp_path, monkeypatch):
    """A compact model (``inference_checkpoint``: float16 weights, no optimizer state), e.g. the bundled
    pretrained model installed as a fold: ``--val`` predicts with its weights (as float32); ``--c`` refuses it
    with the fix."""
    import pnnunet.training.trainer as trainer_module
    from pnnunet.errors import PnnunetError

    job = _job(tmp_path, "res")
    trainer = Trainer(job)
    trainer.build()
    job.fold_dir.mkdir(parents=True)
    final = ck.checkpoint_path(job.fold_dir, "checkpoint_final")
    ck.save_checkpoint(final, ck.inference_checkpoint(trainer._payload(), "test"))
    assert ck.load_checkpoint(final)["weights_dtype"] == "float16"
    with pytest.raises(PnnunetError, match="--pretrained_weights") as err:
        Trainer(job).fit(resume=True)
    assert str(final) in str(err.value) and "no optimizer state" in str(err.value)
    stored = ck.load_checkpoint(final)["network_weights"]
    seen = {}
    monkeypatch.setattr(trainer_module, "validate_fold", lambda network, *a, **kw: seen.update(
        {k: v.numpy() for k, v in network.state_dict().items()}))
    Trainer(job).final_validation(disable_tta=True)
    assert set(seen) == set(stored)
    for k, v in seen.items():
        assert v.dtype == np.float32 and np.array_equal(v, np.asarray(stored[k]).astype(np.float32)), k
