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
    Outcome,
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
    "zero-width space in the name": ("ali\u200bce", "invisible or text-direction characters"),
    "bidi override (admin\\u202egnp.exe)": ("admin\u202egnp.exe", "invisible or text-direction characters"),
    "byte-order mark in the name": ("\ufeffalice", "invisible or text-direction characters"),
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


# what the library owns: only its speakers, only their recordings; all-or-nothing changes


def _register(db: Path, name: str, *paths: Path) -> Outcome:
    return run_cli(["infer_recognition.py", "--register", name, "--audio_path", *map(str, paths), "--audio_db", str(db),
                    "--model_path", str(MODEL), "--device", "cpu"])  # fmt: skip


def test_library_remove_touches_only_speakers_and_their_recordings(embedder, speech, tmp_path: Path) -> None:
    from utils.speaker_db import SpeakerDB, SpeakerDBError

    home = tmp_path / "fakehome"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "notes.txt").write_text("my notes")
    db = SpeakerDB(home, embedder)
    with pytest.raises(SpeakerDBError, match="Documents is not an enrolled speaker: .* holds no recordings"):
        db.remove("Documents")
    assert (home / "Documents" / "notes.txt").read_text() == "my notes"
    db.register("alice", [speech])
    (home / "alice" / "notes.txt").write_text("alice's notes")
    (home / "alice" / "photos").mkdir()
    assert db.remove("alice") == ["notes.txt", "photos"]
    assert "alice" not in db.names() and not list((home / "alice").glob("*.wav"))
    assert (home / "alice" / "notes.txt").read_text() == "alice's notes" and (home / "alice" / "photos").is_dir()
    record(
        "library",
        "--remove a folder that is not a speaker",
        "infer_recognition.py --audio_db ~ --remove Documents",
        "error: Documents is not an enrolled speaker: fakehome/Documents holds no recordings (nothing removed)",
    )


def test_library_names_are_one_speaker_in_any_unicode_form_or_case(embedder, speech, tmp_path: Path) -> None:
    import unicodedata

    from utils.speaker_db import SpeakerDB, SpeakerDBError

    root = tmp_path / "db"
    nfd = unicodedata.normalize("NFD", "André")
    (root / nfd).mkdir(parents=True)
    import soundfile as sf

    sf.write(root / nfd / "take1.wav", speech, 16000)
    db = SpeakerDB(root, embedder)
    assert db.names() == ["André"]  # NFC everywhere, whatever form the folder has on disk
    db.register("André", [speech[: 16000 * 2]])  # typed in NFC: the same speaker, the same folder
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [nfd] and db.counts() == {"André": 2}
    with pytest.raises(SpeakerDBError, match="differs from the registered 'André' only in letter case"):
        db.register("andré", [speech])
    assert db.remove("André") == [] and not root.joinpath(nfd).exists() and len(db) == 0
    record(
        "library",
        "case-twin of a registered name",
        "infer_recognition.py --register andré (André exists)",
        "error: speaker name 'andré' differs from the registered 'André' only in letter case: use 'André' ...",
    )


def test_library_ignores_symlinks_out_and_duplicate_content(embedder, speech, tmp_path: Path) -> None:
    from utils.speaker_db import LibraryWarning, SpeakerDB, SpeakerDBError

    root = tmp_path / "db"
    db = SpeakerDB(root, embedder)
    db.register("alice", [speech])
    outside = tmp_path / "outside.wav"
    outside.write_bytes((root / "alice").glob("*.wav").__next__().read_bytes())
    (root / "alice" / "passwd.wav").symlink_to("/etc/passwd")
    (root / "alice" / "outside.wav").symlink_to(outside)
    (root / "mallory").symlink_to(tmp_path)  # a speaker folder that is a link out of the library
    with pytest.warns(LibraryWarning, match="symlink leading outside the library"):
        again = SpeakerDB(root, embedder)
    assert again.counts() == {"alice": 1}
    # the same take twice in one call, and again later: counted once
    enrolment = again.enrol("bob", [speech[:48000], speech[:48000]])
    assert enrolment.count == 1 and "identical to one already enrolled" in enrolment.warnings[0]
    with pytest.raises(SpeakerDBError, match="already enrolled for bob: nothing added"):
        again.enrol("bob", [speech[:48000]])
    assert again.counts() == {"alice": 1, "bob": 1}


def test_library_kill_at_any_moment_leaves_old_or_new_state(speech, tmp_path: Path) -> None:
    """SIGKILL a 3-recording registration, then a removal, at moments spread over their run: each time the
    library holds all three recordings or none, and opening it finishes or forgets the change."""
    import signal
    import time

    import soundfile as sf

    clips = []
    for k in range(3):
        clips.append(tmp_path / f"take{k}.wav")
        sf.write(clips[-1], speech[k * 8000 :], 16000)
    db = tmp_path / "db"
    unbroken = time.monotonic()
    assert _register(db, "carol", *clips).code == 0
    duration = time.monotonic() - unbroken
    run = ["infer_recognition.py", "--audio_db", str(db), "--model_path", str(MODEL), "--device", "cpu"]
    seen = set()
    for fraction in (0.5, 0.7, 0.8, 0.9, 0.95):
        counts = run_cli([*run, "--list", "--json_path", str(tmp_path / "l.json")])
        assert counts.code == 0
        before = len(list((db / "carol").glob("*.wav"))) if (db / "carol").exists() else 0
        args = ["--remove", "carol"] if before else ["--register", "carol", "--audio_path", *map(str, clips)]
        child = subprocess.Popen([sys.executable, *run, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(duration * fraction)
        child.send_signal(signal.SIGKILL)
        child.wait()
        listed = run_cli([*run, "--list"])
        after = len(list((db / "carol").glob("*.wav"))) if (db / "carol").exists() else 0
        assert after in (0, 3), (fraction, after, listed.out)
        assert not list(db.glob(".staging/*")) or after in (0, 3)
        seen.add((before, after))
    assert not (db / ".voiceprint_journal.json").exists()


def test_library_finishes_a_committed_change_and_forgets_an_uncommitted_one(embedder, speech, tmp_path: Path) -> None:
    """What a process killed just after / just before its commit leaves on disk, opened again."""
    import json
    import shutil

    from utils.speaker_db import JOURNAL_NAME, STAGING_NAME, SpeakerDB

    root = tmp_path / "db"
    SpeakerDB(root, embedder).register("dave", [speech])
    take = next((root / "dave").glob("*.wav"))
    # killed after the commit: staged files and the journal, nothing moved yet -> the new state
    (root / STAGING_NAME).mkdir(exist_ok=True)
    for k in range(2):
        shutil.copy(take, root / STAGING_NAME / f"new{k}.wav")
    moves = [[f"{STAGING_NAME}/new{k}.wav", f"dave/new{k}.wav"] for k in range(2)]
    (root / JOURNAL_NAME).write_text(json.dumps({"add": moves}))
    assert SpeakerDB(root, embedder).counts() == {"dave": 3}
    assert not (root / JOURNAL_NAME).exists() and not list((root / STAGING_NAME).iterdir())
    # killed before the commit: staged files only -> the old state, and the next write cleans them
    shutil.copy(take, root / STAGING_NAME / "orphan.wav")
    db = SpeakerDB(root, embedder)
    assert db.counts() == {"dave": 3}
    db.register("erin", [speech[:40000]])
    assert not (root / STAGING_NAME / "orphan.wav").exists()
    # a removal killed half-way through its deletes: finished on the next open
    (root / JOURNAL_NAME).write_text(
        json.dumps({"delete": ["dave/new0.wav", "dave/new1.wav", take.relative_to(root).as_posix()], "rmdir": ["dave"]})
    )
    (root / "dave" / "new0.wav").unlink()
    assert SpeakerDB(root, embedder).counts() == {"erin": 1} and not (root / "dave").exists()
    # a journal that points outside the library is not obeyed
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (root / JOURNAL_NAME).write_text(json.dumps({"delete": ["../victim.txt"]}))
    with pytest.warns(UserWarning, match="leaves the library"):
        SpeakerDB(root, embedder)
    assert victim.read_text() == "keep me"


def test_library_broken_paths_and_a_full_disk_are_one_line(good: Path, tmp_path: Path) -> None:
    import resource
    import signal

    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "db")
    outcome = _register(dangling, "bob", good)
    line = assert_error(outcome, f"speaker library {dangling} is a symlink to {tmp_path / 'nowhere' / 'db'}")
    record("library", "--audio_db is a dangling symlink", "infer_recognition.py --audio_db LINK --register", line)
    (tmp_path / "db" / ".lock").mkdir(parents=True)
    line = assert_error(_register(tmp_path / "db", "bob", good), "/.lock is a folder, not the library's lock file")
    record("library", "the lock file is a folder", "infer_recognition.py --register", line)

    def small_disk() -> None:  # every file this process writes stops at 20 KB, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    full = tmp_path / "full"
    outcome = run_cli(["infer_recognition.py", "--register", "bob", "--audio_path", str(good), "--audio_db", str(full),
                       "--model_path", str(MODEL), "--device", "cpu"], preexec_fn=small_disk)  # fmt: skip
    line = assert_error(outcome, "File too large")
    assert str(full) in line
    assert not (full / "bob").exists() and not list(full.rglob("*.wav")) and not list(full.rglob("*.tmp"))
    assert not (full / ".voiceprint_journal.json").exists()  # nothing half-written: no speaker, no staged take
    record("library", "the disk fills up while registering", "infer_recognition.py --register", line)
