"""Predicting preprocessed cases (a fold's final validation): mirroring and step size reach the sliding
window, and every case logs its tiles, mirrorings and the estimated remaining time."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pnnunet.inference import case_predictor, preprocessed
from pnnunet.inference.case_predictor import CasePredictor
from pnnunet.inference.preprocessed import predict_preprocessed_cases
from tests.training.jobs import DATASET_JSON, small_job


@pytest.fixture
def two_cases(tmp_path, monkeypatch):
    job = small_job(tmp_path, 2, 0, shape=(40, 20, 20))
    plan = job.plan
    assert list(plan.patch_size) == [20, 20, 20]  # 40 along axis 0: 3 tiles at step 0.5, 2 at step 1
    exported = []
    monkeypatch.setattr(preprocessed, "export_prediction", lambda logits, props, *a, **kw: exported.append(a[-2]))
    return job, plan, exported


def _run(job, plan, tmp_path, monkeypatch, **kw):
    passes = []

    def predict(x):
        passes.append(x.shape[0])
        return np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32)

    monkeypatch.setattr(case_predictor, "make_predict_fn", lambda *a, **kw: (predict, "stub"))
    fold = CasePredictor(lambda: None, tmp_path / "checkpoint_final.pdparams", 1, plan.patch_size, 2)
    predict_preprocessed_cases(fold, ["c0", "c1"], job.preprocessed_dataset_dir / plan.data_identifier, job.plans,
                               "3d_fullres", DATASET_JSON, tmp_path / "out", None, progress=False, **kw)
    return sum(passes)


@pytest.mark.parametrize("mirror_axes, step_size, tiles, mirrorings", [
    ((0, 1, 2), 0.5, 3, 8), (None, 0.5, 3, 1), ((), 1.0, 2, 1), ((0, 1), 1.0, 2, 4)])
def test_mirroring_and_step_size_reach_the_sliding_window(two_cases, tmp_path, caplog, monkeypatch, mirror_axes,
                                                          step_size, tiles, mirrorings):
    job, plan, exported = two_cases
    with caplog.at_level(logging.INFO, logger="pnnunet.inference.case_progress"):
        passes = _run(job, plan, tmp_path, monkeypatch, mirror_axes=mirror_axes, step_size=step_size)
    assert passes == 2 * tiles * mirrorings  # network passes over both cases
    assert [p.name for p in exported] == ["c0", "c1"]
    lines = [r.getMessage() for r in caplog.records]
    work = f"{tiles} tiles × {mirrorings} mirrorings" if mirrorings > 1 else f"{tiles} tiles, no mirroring"
    assert lines[0].startswith(f"case 1/2 c0: {work} in ") and "; estimated remaining " in lines[0]
    assert lines[1].startswith(f"case 2/2 c1: {work} in ") and "estimated" not in lines[1]
