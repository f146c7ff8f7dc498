"""Fixtures for the pass tests.

Property tests take their settings from tests/passes/helpers.py (PROPERTY_SETTINGS: 60
examples, no deadline); ``QIR_HYPOTHESIS_EXAMPLES=500`` runs more, e.g. before a release.
Golden tests rewrite their expected files with ``QIR_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def golden_dir() -> Path:
    """tests/passes/golden: the before/after .qir files of the golden tests."""
    return Path(__file__).parent / "golden"
