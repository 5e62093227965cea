"""Shared fixtures: the real-speech folder and small helpers."""

from __future__ import annotations

import os
import signal
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


def pytest_configure(config: pytest.Config) -> None:
    # started in the background (`cmd &` in a script), pytest inherits SIGINT ignored: Python then installs
    # no Ctrl-C handler, and the scripts the tests start inherit the ignoring; the Ctrl-C tests need both
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
