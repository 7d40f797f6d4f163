"""A tiny trained model shared by the tests that run the real worker (test_worker.py, test_browser.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import BUNDLED_SAMPLE

CASE = BUNDLED_SAMPLE / "imagesTs" / "hippocampus_045.nii.gz"
TINY_MODEL = "Dataset004_Hippocampus_sample/pnnunetTrainer__pnnunetTinyPlans__3d_fullres"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A results root with the tiny 3d_fullres model of the bundled sample, fold 0, one short epoch (~1 min)."""
    pytest.importorskip("paddle")
    from tests.inference.test_predictor import make_trained_workspace

    root = tmp_path_factory.mktemp("app_models")
    make_trained_workspace(root, trained=(("3d_fullres", (0,)),))
    return root / "res"
