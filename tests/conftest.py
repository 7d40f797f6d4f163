"""Shared test helpers: where the optional reference material lives."""

from __future__ import annotations

from pathlib import Path

import pytest

import pnnunet  # noqa: F401  before any test module imports paddle (see pnnunet/__init__.py)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
UPSTREAM_HIPPO = REPO / "tests" / "data" / "upstream_hippocampus_220"  # copied from ../shared/reference
SHARED_DATA = SHARED / "data"
BUNDLED_SAMPLE = REPO / "tests" / "data" / "Task04_Hippocampus_sample"


def require(path: Path) -> Path:
    """Skip the test when optional reference material (../shared) is absent."""
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """raw/pre/res of the bundled sample, tiny plans, fold 0 of 3d_fullres trained for one short epoch: made
    once per session (~1 min on 2 cores) for the bad-input table and the concurrency/disk tests; never modified
    (tests copy it)."""
    pytest.importorskip("paddle")
    from tests.inference.test_predictor import make_trained_workspace

    root = tmp_path_factory.mktemp("trained_3d_fullres_fold0")
    make_trained_workspace(root, trained=(("3d_fullres", (0,)),))
    return root
