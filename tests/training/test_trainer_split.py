"""The trainer's split (fold all needs none; made and logged once per run) and its checkpoint check
(resuming needs the same epoch count, validating does not)."""

from __future__ import annotations

import json
import logging

import pytest

from pnnunet.errors import PnnunetError
from pnnunet.training.trainer import Trainer, _check_compatible
from tests.training.jobs import small_job as _job


def test_fold_all_trains_and_validates_on_every_case_without_a_split(tmp_path):
    trainer = Trainer(_job(tmp_path, 1, "all"))  # one case: no 5-fold split is possible, none is needed
    assert trainer.check_inputs() == (["c0"], ["c0"])
    assert trainer.split() == (["c0"], ["c0"])
    assert not (tmp_path / "pre" / "splits_final.json").exists()  # as upstream: fold all writes no split


def test_numbered_fold_of_a_too_small_dataset_is_refused(tmp_path):
    with pytest.raises(PnnunetError, match="cannot be split into 5 folds.*fold 'all'"):
        Trainer(_job(tmp_path, 1, 0)).check_inputs()


def _split_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "split" in r.getMessage()]


def test_split_is_made_and_logged_once_per_run(tmp_path, caplog):
    job = _job(tmp_path, 6, 0)
    with caplog.at_level(logging.INFO, logger="pnnunet.training.splits"):
        trainer = Trainer(job)
        first = trainer.check_inputs()  # the CLI's early check, then fit() and final_validation()
        assert trainer.check_inputs() == first and trainer.split() == first
    lines = _split_lines(caplog)
    assert len(lines) == 1 and "created a new 5-fold cross-validation split" in lines[0], lines
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pnnunet.training.splits"):
        trainer = Trainer(job)
        for _ in range(3):
            assert trainer.split() == first
    lines = _split_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("using 5 split(s) from"), lines
    assert len(json.loads((tmp_path / "pre" / "splits_final.json").read_text())) == 5


def test_resume_needs_the_same_epochs_but_validation_does_not(tmp_path):
    job = _job(tmp_path, 1, "all", epochs=1000)  # pnnunet_train ... --val without --epochs
    ckpt = {"init_args": {"plans": job.plans, "configuration": "3d_fullres", "num_epochs": 1}}
    path = tmp_path / "checkpoint_final.pdparams"
    _check_compatible(ckpt, job, path, check_schedule=False)  # --val / --val_best
    with pytest.raises(PnnunetError, match=r"trained for 1 epochs, now 1000.*\n.*--epochs 1"):
        _check_compatible(ckpt, job, path)  # --c
