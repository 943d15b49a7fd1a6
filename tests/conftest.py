"""Shared fixtures: where the test data lives (in the repository, so a fresh clone is self-contained)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
TESTDATA = DATA / "dcap-testdata"  # real Intel-signed quotes and collateral (tests/data/README.md)
FIELD_CASES = DATA / "field-cases"
RATLS_TESTDATA = DATA / "ratls-testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    return TESTDATA
