"""Shared by the bad-input matrix (tests/bad_inputs/test_bad_*.py; fixtures in conftest.py), row by row: every script answers it with one clear line, never a traceback.

One row per kind of bad (or merely unusual) input. What each row must produce:

- single-file commands (infer_contrast.py, train.py, eval.py, infer_recognition.py --register): a non-zero
  exit whose stderr ends in one line starting with `error:` (and no `Traceback` anywhere), or, for the
  must-work rows, exit 0 and the normal result (a similarity, an EER, "Registered ...");
- batch commands (create_data.py folder mode, eval.py on a list or trials file, train.py on its list): the
  bad file is skipped with a reason (a `skipped.txt` line or a `warning:` line) and the run goes on.

Speed (CI has 2 cores): rows run in-process through each script's `main(argv)` (SystemExit caught, stderr
captured) with one shared Embedder for the bundled model, and torch on one thread. At least one row per script
runs as a real subprocess, to prove that nothing escapes at the process level. The one-hour recording is
embedded in a background subprocess started with the first audio row, so its ~30 s of CPU overlap the
other rows (tests/test_bad_inputs_audio.py).

Set VOICEPRINT_MATRIX_MD=/path/file.md to have the matrix write a Markdown table of every row and the exact
line the user sees.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "voiceprint_resnet34.pt"
SHARED_DATA = Path(os.environ.get("VOICEPRINT_SHARED_DATA", ROOT.parent / "shared" / "data"))  # as in conftest.py

TINY_TRAIN = ["--model", "resnet18", "--width", "8", "--embedding_dim", "32", "--crop_seconds", "1.0",
              "--batch_size", "4", "--epoch_size", "4", "--num_workers", "0", "--device", "cpu", "--threads", "1",
              "--max_steps", "1", "--valid_speakers", "0", "--noise_prob", "0", "--reverb_prob", "0"]  # fmt: skip
HOUR_RSS_LIMIT_MB = 1500

# what the user saw for every row: (area, row, command, outcome); written as Markdown when asked (see docstring)
MATRIX: list[tuple[str, str, str, str]] = []


def record(area: str, row: str, command: str, seen: str, tmp: Path | None = None) -> None:
    if tmp is not None:
        seen = seen.replace(str(tmp), "<tmp>")
    seen = seen.replace(str(SHARED_DATA.resolve()), "<shared>").replace(str(ROOT) + os.sep, "")
    MATRIX.append((area, row, command, seen))


# running scripts


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def last_err(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def warnings(self) -> list[str]:
        return [line for line in (self.out + "\n" + self.err).splitlines() if line.startswith("warning:")]


def run_main(script: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """`<script>.main(argv)` in this process: exit code, stdout, stderr (any other exception fails the test)."""
    module = importlib.import_module(script)
    capsys.readouterr()
    try:
        result = module.main(argv)
        code = int(result or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def run_cli(args: list[str], timeout: float = 300, **kwargs) -> Outcome:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, encoding="utf-8", timeout=timeout, env=env, **kwargs
    )
    return Outcome(result.returncode, result.stdout, result.stderr)


def assert_error(outcome: Outcome, expected: str) -> str:
    """A failed run that told the user why in one last `error:` line; returns that line."""
    assert "Traceback" not in outcome.err, outcome.err[-3000:]
    assert outcome.code != 0, f"expected a failure, got exit 0\n{outcome.out[-1500:]}"
    line = outcome.last_err
    assert line.startswith("error: "), f"last stderr line is not an error line: {line!r}\n{outcome.err[-1500:]}"
    assert expected in line, f"{expected!r} not in {line!r}"
    return line


def assert_similarity(outcome: Outcome) -> str:
    assert "Traceback" not in outcome.err, outcome.err[-3000:]
    assert outcome.code == 0, outcome.err[-2000:]
    line = next((x for x in outcome.out.splitlines() if "similarity: " in x), "")  # the answer
    match = re.search(r"similarity: (-?\d+\.\d+)", line)
    assert match, line
    assert -1.0 <= float(match.group(1)) <= 1.0
    return line


# list and trials files


def list_text(items: list[tuple[str, int]]) -> str:
    return "".join(f"{path}\t{label}\n" for path, label in items)


def messy(items: list[tuple[str, int]]) -> bytes:
    """The same list with a UTF-8 BOM, CRLF line ends and blank lines (Windows editors write this)."""
    body = "\r\n\r\n".join(f"{path}\t{label}" for path, label in items)
    return b"\xef\xbb\xbf" + ("\r\n" + body + "\r\n\r\n  \r\n").encode("utf-8")


def with_label(items: list[tuple[str, int]], label: str, row: int = 2) -> bytes:
    return "".join(f"{path}\t{label if n == row else lab}\n" for n, (path, lab) in enumerate(items)).encode()


LIST_ROWS = {
    # id: (how to build the list from the four good items, expected error text or None = must work)
    "blank lines, CRLF and UTF-8 BOM": (messy, None),
    "missing tab": (
        lambda it: list_text(it).replace("\t", " ", 1).encode(),
        ":1: expected '<audio path>\\t<label>', found no tab",
    ),
    "non-integer label": (lambda it: with_label(it, "zero"), ":3: label 'zero' is not an integer"),
    "negative label": (lambda it: with_label(it, "-1"), ":3: label -1 is negative"),
    "not UTF-8": (lambda it: list_text(it).encode("utf-8") + b"\xff\xfe\xfa\t1\n", "is not UTF-8 text"),
    "only blank lines": (lambda it: b"\n\r\n  \n", "the list is empty"),
}
EVAL_LIST_ERRORS = {"only blank lines": "has fewer than 2 speakers: no different-speaker trials"}
