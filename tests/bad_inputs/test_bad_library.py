"""Bad input: the speaker library. Rows, expectations and speed rules: helpers.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bad_inputs.helpers import (
    MODEL,
    ROOT,
    assert_error,
    record,
    run_cli,
    run_main,
)

# the speaker library


NAME_ROWS = {
    "name with /": ("alice/../../etc", "must not contain '/' or '\\'"),
    "name with \\": ("alice\\bob", "must not contain '/' or '\\'"),
    "name ..": ("..", "must not start with '.'"),
    "name .": (".", "must not start with '.'"),
    "hidden name (.cache)": (".voiceprint_cache", "must not start with '.'"),
    "empty name": ("", "speaker name is empty"),
    "blank name": ("   ", "speaker name is empty"),
    "1 KB long name": ("x" * 1024, "speaker name is too long: 1024 characters"),
    "newline in the name": ("alice\nbob", "contains control characters"),
}


@pytest.mark.parametrize("row_id", list(NAME_ROWS))
def test_library_bad_names(row_id: str, good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, expected = NAME_ROWS[row_id]
    db = tmp_path / "db"
    outcome = run_main("infer_recognition", ["--register", name, "--audio_path", str(good), "--audio_db", str(db),
                                             "--model_path", str(MODEL), "--device", "cpu"], capsys)  # fmt: skip
    line = assert_error(outcome, expected)
    assert not db.exists() or not any(db.rglob("*.wav")), "a refused name wrote something"
    assert not (tmp_path / "etc").exists()
    record("library", row_id, "infer_recognition.py --register NAME --audio_path F", line, tmp_path)


def test_library_bad_name_subprocess(good: Path, tmp_path: Path) -> None:
    outcome = run_cli(["infer_recognition.py", "--register", "..", "--audio_path", str(good), "--audio_db",
                       str(tmp_path / "db")])  # fmt: skip
    assert_error(outcome, "must not start with '.'")


@pytest.mark.parametrize("name", ["a\0b", "\0", "alice\0/../x"])
def test_library_nul_in_name_api(name: str, embedder, good: Path, tmp_path: Path) -> None:
    """NUL cannot travel through argv: the Python API must refuse it before touching the disk."""
    from utils.speaker_db import SpeakerDB, SpeakerDBError, validate_name

    refused = "contains control characters|must not contain '/'"
    with pytest.raises(SpeakerDBError, match=refused):
        validate_name(name)
    db = SpeakerDB(tmp_path / "db", embedder)
    with pytest.raises(SpeakerDBError, match=refused) as info:
        db.register(name, [str(good)])
    assert not any((tmp_path / "db").rglob("*.wav"))
    if name == "a\0b":
        record("library", "NUL in the name (Python API)", "SpeakerDB.register / validate_name", str(info.value))


@pytest.mark.parametrize("name", ["李达康", "Mary Ann", "o'neil-2"], ids=["Chinese", "space", "quote-dash"])
def test_library_good_names_work(
    name: str, good: Path, tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "db"
    outcome = run_main("infer_recognition", ["--register", name, "--audio_path", str(good), "--audio_db", str(db),
                                             "--model_path", str(MODEL), "--device", "cpu"], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    line = outcome.out.strip().splitlines()[0]  # the answer first
    assert line == f"Registered {name}: 1 recording (1 new)."
    assert len(list((db / name).glob("*.wav"))) == 1
    record("library", f"ordinary name: {name!r}", "infer_recognition.py --register NAME --audio_path F", line)


def test_library_corrupted_cache_is_rebuilt(
    embedder, good: Path, tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    from utils.speaker_db import CACHE_NAME, CacheWarning, SpeakerDB

    db = tmp_path / "db"
    SpeakerDB(db, embedder).register("alice", [str(good)])
    (db / CACHE_NAME).write_bytes(b"PK\x03\x04 this is not a zip any more")
    with pytest.warns(CacheWarning, match="is unreadable") as caught:
        outcome = run_main("infer_recognition", ["--recognize", str(good), "--audio_db", str(db), "--model_path",
                                                 str(MODEL), "--device", "cpu"], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    assert "Recognised: alice" in outcome.out
    assert "1 new recording embedded" in outcome.out  # rebuilt from the WAVs
    reopened = SpeakerDB(db, embedder)
    assert reopened.embedded_at_load == 0 and reopened.names() == ["alice"]  # the rewritten cache is good
    message = "warning: " + str(caught[0].message)
    record("library", "corrupted cache file", "infer_recognition.py --recognize F", message, tmp_path)


def test_library_two_processes_enrol_at_once(embedder, shared_data: Path, tmp_path: Path) -> None:
    from utils.speaker_db import SpeakerDB

    db = tmp_path / "db"
    seed = shared_data / "seed_samples"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "infer_recognition.py",
                "--register",
                name,
                "--audio_path",
                str(seed / f"{name}_1.wav"),
                str(seed / f"{name}_2.wav"),
                "--audio_db",
                str(db),
                "--device",
                "cpu",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for name in ("a", "b")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    library = SpeakerDB(db, embedder)
    assert library.counts() == {"a": 2, "b": 2}
    assert library.embedded_at_load == 0, "the cache lost one process's embeddings"
    record(
        "library",
        "two processes enrol at once",
        "2 x infer_recognition.py --register",
        f"both kept: {library.counts()}",
    )
