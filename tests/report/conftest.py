"""Fixtures for the renderer tests: the report.json fixtures, loaded fresh for each test."""

from __future__ import annotations

from typing import Any

import pytest
from report_checks import load_fixture, make_malicious


@pytest.fixture
def report_three() -> dict[str, Any]:
    """text (3 members), dna-kmer (3 members, tied Fisher), dna-bpe (1 member), a failed gate."""
    return load_fixture("report_three.json")


@pytest.fixture
def report_minimal() -> dict[str, Any]:
    """One ensemble with the predictions analysis only (no rank profile), gate null."""
    return load_fixture("report_minimal.json")


@pytest.fixture
def report_malicious(report_three: dict[str, Any]) -> dict[str, Any]:
    return make_malicious(report_three)
