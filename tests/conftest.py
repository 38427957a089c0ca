"""Shared fixtures. Expensive artifacts (worlds, tiny models, the hub server) are session-scoped."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def vlkeb_fixture_dir() -> Path:
    """The tiny directory in the exact public release layout (copied from shared/fixtures)."""
    return FIXTURES / "vlkeb-format"
