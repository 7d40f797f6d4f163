"""The final validation's options (reference §5.10): --val_disable_tta predicts without mirroring and
--val_step_size sets the tile step; both are recorded in validation/validation_settings.json."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.inference import case_predictor, preprocessed
from pnnunet.training import validation
from tests.training.jobs import small_job


@pytest.fixture
def stubbed(tmp_path, monkeypatch):
    """A fold with two 40x20x20 cases (3 tiles at step 0.5, 2 at step 1), a network stub counting its passes."""
    job = small_job(tmp_path, 2, 0, shape=(40, 20, 20))
    passes = []

    def predict(x):
        passes.append(x.shape[0])
        return np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32)

    monkeypatch.setattr(case_predictor, "make_predict_fn", lambda *a, **kw: (predict, "stub"))
    monkeypatch.setattr(preprocessed, "export_prediction", lambda *a, **kw: None)
    monkeypatch.setattr(validation, "compute_metrics_on_folder",
                        lambda *a, **kw: {"foreground_mean": {"Dice": 1.0}, "mean": {}})
    network = types.SimpleNamespace(deep_supervision=True, eval=lambda: None)

    def run(**kw):
        passes.clear()
        validation.validate_fold(network, job, job.plan, ["c0", "c1"], [0, 1, 2], tmp_path / "checkpoint_final.pdparams",
                                 **kw)
        settings = json.loads((job.fold_dir / "validation" / "validation_settings.json").read_text())
        return sum(passes), settings

    return run


def test_default_validation_mirrors_like_upstream(stubbed):
    passes, settings = stubbed()
    assert passes == 2 * 3 * 8
    assert settings == {"checkpoint": "checkpoint_final.pdparams", "disable_tta": False, "mirror_axes": [0, 1, 2],
                        "step_size": 0.5, "deviations": []}


def test_disable_tta_and_step_size_reach_the_sliding_window(stubbed):
    passes, settings = stubbed(disable_tta=True, step_size=1.0)
    assert passes == 2 * 2 * 1  # mirror_axes None: one pass per tile; step 1: 2 tiles per case
    assert settings["disable_tta"] is True and settings["mirror_axes"] == [] and settings["step_size"] == 1.0
    assert len(settings["deviations"]) == 2 and "--val_disable_tta" in settings["deviations"][0]


def test_bad_step_size_is_refused_before_predicting(stubbed):
    with pytest.raises(PnnunetError, match="--val_step_size 0"):
        stubbed(step_size=0)
