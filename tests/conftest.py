"""Shared fixtures: where the reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The shared reference folder sits next to the repository (../shared), in CI and in sessions alike.
SHARED = Path(os.environ.get("QUOTEHELPER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TESTDATA = SHARED / "dcap-testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.fail(f"reference data not found at {TESTDATA} (set QUOTEHELPER_SHARED)")
    return TESTDATA
