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
