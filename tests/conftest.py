"""Shared fixtures: the real-speech folder and small helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VOICEPRINT_SHARED_DATA", ROOT.parent / "shared" / "data"))

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (real recorded speech); skips the test when it is absent."""
    if not (SHARED_DATA / "librispeech").is_dir():
        pytest.skip(f"real speech not found at {SHARED_DATA} (set VOICEPRINT_SHARED_DATA or add ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
