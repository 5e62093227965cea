"""Shared argument handling: every script documents every option and shows its default once."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPTS = ("create_data", "train", "eval", "infer_contrast", "infer_recognition", "infer_server", "export_onnx")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_option_has_a_help_text_and_one_default(name: str) -> None:
    parser = importlib.import_module(name).build_parser()
    undocumented = [a.option_strings[0] for a in parser._actions if a.option_strings and not (a.help or "").strip()]
    assert not undocumented, f"{name}.py options without help: {undocumented}"
    assert "(default: None)" not in parser.format_help()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.nargs != 0 and action.default is not None and action.dest != "help":
            entry = formatter._expand_help(action)
            assert entry.count("default") == 1, f"{name}.py {action.option_strings[0]}: {entry!r}"


def test_help_runs_as_a_user_types_it() -> None:
    result = subprocess.run(
        [sys.executable, "infer_recognition.py", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "--record_seconds" in result.stdout and "(default: 3.0)" in result.stdout
    assert "--verbose" in result.stdout
