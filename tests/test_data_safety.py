"""Data safety: nothing the user would hate to lose is ever written half, loaded unsafely, or deleted unasked.

- Every write of a list, checkpoint, inference model, library cache or enrolment goes through
  utils.checkpoint's atomic helpers (temp file, fsync, rename, fsync of the folder): a source scan proves
  there is no other writer outside a short, justified allow-list, and SIGKILLed writers prove a target file
  is never left half-written.
- `torch.load(` appears once in the project: utils/checkpoint.py's weights-only loader.
- infer_recognition.py --register killed at random moments leaves a library that loads with every earlier
  enrolment intact.
- create_data.py never changes or deletes source audio unless --delete_source says so, and then only the
  sources whose WAV conversion was written and verified.
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "voiceprint_resnet34.pt"
# folders that are not project code: the venv, tests, caches, generated data and run outputs
SKIP_DIRS = {".venv", "tests", ".git", ".gpu", ".whl", "runs", "test_artifacts", "work_dirs", "dataset", "__pycache__"}

# Every file write outside utils/checkpoint.py's atomic helpers, with the reason it may stay:
# (file, enclosing function, kind of write) -> why.
ALLOWED_WRITES = {
    (
        "utils/fileio.py",
        "_write_temp",
        "os.fdopen(w)",
    ): "the atomic helpers' temp file (temp file + fsync, then atomic_write_files renames it)",
    ("create_data.py", "convert", "os.fdopen(w)"): "create_data's own atomic WAV writer: mkstemp + fsync + rename, "
    "and it never replaces an existing file (os.replace only when the target is still absent)",
    ("create_data.py", "convert", "sf.write"): "writes into the fdopen'ed temp file of the same atomic WAV writer",
    ("utils/speaker_db.py", "_open_lock", "os.open(w)"): "the library's .lock file for flock: it never holds data",
    ("utils/audio.py", "quiet_c_stderr", "os.open(w)"): "opens /dev/null to hide C libraries' stderr noise",
    ("create_data.py", "_quiet_worker", "open(w)"): "opens /dev/null as a pool worker's stderr (Ctrl-C noise)",
    ("scripts/prepare_gpu_bundle.py", "main", "sf.write"): "builds a throw-away copy of ../shared/data for a GPU "
    "session; rerun it if interrupted",
    ("scripts/prepare_gpu_bundle.py", "main", "shutil.copytree"): "same throw-away GPU data bundle",
    ("benchmarks/server_load.py", "start", "open(w)"): "the benchmark's server log (stdout of a child process)",
}


# the source scan


def project_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(found)


def dotted(node: ast.AST) -> str:
    """'np.save' for np.save(...), 'x.write_text' style suffixes for method calls on expressions."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "<expr>"


def literal_mode(call: ast.Call, position: int) -> str | None:
    mode = call.args[position] if len(call.args) > position else None
    for keyword in call.keywords:
        if keyword.arg == "mode":
            mode = keyword.value
    if mode is None:
        return "r"
    return mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else "?"


class WriteFinder(ast.NodeVisitor):
    """Collects (function, kind, line) of every call that writes a file, ignoring writes into BytesIO buffers."""

    def __init__(self) -> None:
        self.functions: list[str] = ["<module>"]
        self.buffers: list[set[str]] = [set()]
        self.found: list[tuple[str, str, int]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        buffers = {
            target.id
            for sub in ast.walk(node)
            if isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Call)
            and dotted(sub.value.func).split(".")[-1] in ("BytesIO", "StringIO")
            for target in sub.targets
            if isinstance(target, ast.Name)
        }  # fmt: skip
        self.functions.append(node.name)
        self.buffers.append(buffers)
        self.generic_visit(node)
        self.functions.pop()
        self.buffers.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def in_memory(self, call: ast.Call, position: int = 0) -> bool:
        """Is the file argument (torch.save's second, the others' first) a BytesIO made in this function?"""
        target = call.args[position] if len(call.args) > position else None
        return isinstance(target, ast.Name) and target.id in self.buffers[-1]

    def visit_Call(self, node: ast.Call) -> None:
        name = dotted(node.func)
        last = name.split(".")[-1]
        kind = None
        if name in ("torch.save", "np.save", "np.savez", "np.savez_compressed", "np.savetxt", "numpy.save"):
            kind = None if self.in_memory(node, 1 if name == "torch.save" else 0) else name
        elif last in ("write_text", "write_bytes", "tofile", "to_csv"):
            kind = last
        elif name in ("sf.write", "soundfile.write") or last == "savefig":
            kind = None if self.in_memory(node) else ("savefig" if last == "savefig" else "sf.write")
        elif name in ("open", "io.open", "builtins.open") or (last == "open" and name not in ("os.open",)):
            mode = literal_mode(node, 1 if name in ("open", "io.open", "builtins.open") else 0)
            if mode and any(c in mode for c in "wax+?"):
                kind = f"open({mode.replace('b', '').replace('t', '') or '?'})"
        elif name == "os.open":
            flags = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
            if re.search(r"O_(WRONLY|RDWR|CREAT|TRUNC|APPEND)", flags):
                kind = "os.open(w)"
        elif name == "os.fdopen":
            mode = literal_mode(node, 1)
            if mode and any(c in mode for c in "wax+?"):
                kind = "os.fdopen(w)"
        elif name in ("json.dump", "pickle.dump", "np.ndarray.tofile") or name.startswith("shutil.") and last in (
            "copy", "copy2", "copyfile", "copytree", "move"
        ):  # fmt: skip
            kind = name
        if kind:
            self.found.append((self.functions[-1], kind, node.lineno))
        self.generic_visit(node)


def find_writes() -> dict[tuple[str, str, str], list[int]]:
    writes: dict[tuple[str, str, str], list[int]] = {}
    for path in project_files():
        finder = WriteFinder()
        finder.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        rel = path.relative_to(ROOT).as_posix()
        for function, kind, line in finder.found:
            writes.setdefault((rel, function, kind), []).append(line)
    return writes


def test_every_file_write_is_atomic_or_allow_listed() -> None:
    writes = find_writes()
    unexpected = {f"{file}:{lines[0]} in {function}(): {kind}" for (file, function, kind), lines in writes.items()
                  if (file, function, kind) not in ALLOWED_WRITES}  # fmt: skip
    assert not unexpected, (
        "non-atomic writes (use utils.fileio.atomic_write_bytes/atomic_write_text/atomic_write_json or utils.checkpoint.atomic_torch_save, or add "
        f"a justified entry to ALLOWED_WRITES): {sorted(unexpected)}"
    )
    stale = sorted(f"{key}" for key in ALLOWED_WRITES if key not in writes)
    assert not stale, f"ALLOWED_WRITES entries that match nothing any more (remove them): {stale}"


def test_the_scan_finds_what_it_must(tmp_path: Path) -> None:
    """The scanner itself: each forbidden form is caught, BytesIO buffers and reads are not."""
    source = textwrap.dedent(
        """
        import io, json, os, shutil
        import numpy as np, soundfile as sf, torch
        from pathlib import Path

        def bad(p, obj, fd):
            torch.save(obj, p)
            np.save(p, obj)
            Path(p).write_text("x")
            p.write_bytes(b"x")
            open(p, "w").write("x")
            open(p, mode="ab")
            Path(p).open("w")
            os.open(p, os.O_WRONLY | os.O_CREAT)
            os.fdopen(fd, "wb")
            sf.write(p, obj, 16000)
            json.dump(obj, fd)
            shutil.copyfile(p, p)

        def fine(p, obj):
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            np.savez(buffer, a=obj)
            sf.write(buffer, obj, 16000)
            open(p).read()
            open(p, "rb").read()
            os.open(p, os.O_RDONLY)
            return json.dumps(obj)
        """
    )
    finder = WriteFinder()
    finder.visit(ast.parse(source))
    kinds = [kind for function, kind, _ in finder.found if function == "bad"]
    assert kinds == ["torch.save", "np.save", "write_text", "write_bytes", "open(w)", "open(a)", "open(w)",
                     "os.open(w)", "os.fdopen(w)", "sf.write", "json.dump", "shutil.copyfile"]  # fmt: skip
    assert not [f for f in finder.found if f[0] == "fine"]


def test_torch_load_only_in_the_weights_only_helper() -> None:
    """What `grep -rn "torch.load(" --include=*.py .` shows outside .venv and tests: one line, weights_only=True."""
    hits = []
    for path in project_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if "torch.load(" in line:
                hits.append((path.relative_to(ROOT).as_posix(), number, line.strip()))
    assert len(hits) == 1, hits
    file, _, line = hits[0]
    assert file == "utils/checkpoint.py" and "weights_only=True" in line
    # and nothing else that unpickles
    for path in project_files():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        assert not re.search(r"pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.jit\.load\(|joblib\.load\(", text), rel
        assert "weights_only=False" not in text, rel


# atomic writes, behaviourally


def test_atomic_write_fsyncs_file_then_renames_then_fsyncs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from utils.fileio import atomic_write_bytes

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(tmp_path / "list.txt", b"a\t0\n")
    assert events == ["fsync file", "rename", "fsync dir"]
    assert (tmp_path / "list.txt").read_bytes() == b"a\t0\n"


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.fileio import atomic_write_bytes

    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temp file left behind


def test_a_set_of_files_is_written_whole_or_not_at_all(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """create_data.py's six outputs are one set: a rerun that fails on its 4th file (a full disk) once left
    new lists beside the old label maps (labels read against the wrong speakers)."""
    import create_data

    corpus = tmp_path / "corpus"
    for speaker in ("84", "174", "251"):
        shutil.copytree(shared_data / "librispeech" / "dev-clean" / speaker, corpus / speaker)
    lists = tmp_path / "lists"
    args = ["--dataset_dir", str(corpus), "--dataset_format", "folder", "--list_dir", str(lists), "--num_workers", "1"]
    create_data.main([*args, "--test_mode", "none"])
    before = {p.name: p.read_bytes() for p in lists.iterdir()}
    assert len(before) == 6

    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            calls.append(fd)
            if len(calls) == 4:
                raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SystemExit) as failed:
        create_data.main([*args, "--test_mode", "speakers", "--test_speakers", "2"])  # a different split
    assert failed.value.code == 1 and "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in lists.iterdir()} == before  # every old file, no temp file


def test_a_set_with_a_folder_in_the_way_changes_nothing(tmp_path: Path) -> None:
    from utils.fileio import atomic_write_files

    for name in "abc":
        (tmp_path / f"{name}.txt").write_text("old")
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write_files({tmp_path / f"{name}.txt": b"new" for name in "abcd"})
    assert [(tmp_path / f"{name}.txt").read_text() for name in "abc"] == ["old"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.txt", "d.txt"]


WRITER = textwrap.dedent(
    """
    import hashlib, sys, types
    sys.modules["torch"] = types.ModuleType("torch")  # atomic_write_bytes needs no torch: skip its 3 s import
    sys.path.insert(0, sys.argv[3])
    from utils.fileio import atomic_write_bytes
    target, size = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    version = 0
    while True:
        version += 1
        head = b"%08d" % version
        body = bytes([version % 251]) * (size + version % 4096)
        atomic_write_bytes(target, head + body + hashlib.sha256(head + body).digest())
    """
)


def check_complete(target: Path) -> int:
    """The version number of a complete payload; fails on any partial or mixed file."""
    data = target.read_bytes()
    head, body, digest = data[:8], data[8:-32], data[-32:]
    assert hashlib.sha256(head + body).digest() == digest, f"partial or mixed file ({len(data)} bytes)"
    version = int(head)
    assert body == bytes([version % 251]) * len(body)
    return version


def test_sigkilled_writer_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    rng = random.Random(0)
    versions = []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(8 << 20), str(ROOT)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()  # SIGKILL (nothing, if it has just finished)
        proc.wait()
        if target.exists():
            versions.append(check_complete(target))
    assert versions and max(versions) > 1, "the writer never got to replace the file: make the kills later"
    # what a kill can leave is a hidden temp file, never a wrong target (readers ignore dot-files)
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {"checkpoint.pt"}


# the speaker library under SIGKILL


def assert_complete_wav(path: Path) -> None:
    """RIFF size and data chunk size agree with the file length: the file was not cut short."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", path
    assert int.from_bytes(data[4:8], "little") == len(data) - 8, f"{path}: RIFF size does not match the file"
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], int.from_bytes(data[offset + 4 : offset + 8], "little")
        if chunk == b"data":
            assert offset + 8 + size == len(data), f"{path}: data chunk cut short"
            return
        offset += 8 + size + (size & 1)
    raise AssertionError(f"{path}: no data chunk")


def test_killed_register_keeps_every_earlier_enrolment(shared_data: Path, tmp_path: Path) -> None:
    import infer_recognition
    from utils.embedder import Embedder
    from utils.speaker_db import CACHE_NAME, SpeakerDB

    embedder = Embedder(str(MODEL), device="cpu")
    db = tmp_path / "db"
    seed = shared_data / "seed_samples"
    SpeakerDB(db, embedder).register("earlier_a", [str(seed / "a_1.wav"), str(seed / "a_2.wav")])
    SpeakerDB(db, embedder).register("earlier_b", [str(seed / "b_1.wav")])
    expected = {"earlier_a": 2, "earlier_b": 1}
    speech, rate = sf.read(shared_data / "librispeech" / "train-clean-100" / "103-1240-0000.flac", dtype="float32")
    clips = []  # 24 different 2.5 s takes of real speech per victim (identical takes would be enrolled once)
    for j in range(24):
        clips.append(tmp_path / f"clip{j}.wav")
        start = rate + j * rate // 8
        sf.write(clips[-1], speech[start : start + rate * 5 // 2], rate)
    clip = clips[0]
    rng = random.Random(7)
    hits = []
    for k in range(3):
        name = f"victim{k}"
        proc = subprocess.Popen(
            [sys.executable, "infer_recognition.py", "--register", name, "--audio_path", *map(str, clips),
             "--audio_db", str(db), "--device", "cpu"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        if k == 0:
            time.sleep(rng.uniform(0.3, 1.5))  # while it starts up or embeds: nothing may be written yet
        else:
            while not (db / name).exists() and proc.poll() is None:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.6))  # somewhere in the write phase (~0.6 s: 24 fsynced WAVs, the cache)
        proc.kill()  # SIGKILL (nothing, if it has just finished)
        proc.wait()

        # the library loads (the cache is never unreadable), every file in it is a complete WAV
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            library = SpeakerDB(db, embedder)
        assert not [w for w in caught if "unreadable" in str(w.message)], [str(w.message) for w in caught]
        for wav in db.rglob("*.wav"):
            if not wav.name.startswith("."):
                assert_complete_wav(wav)
                if wav.parent.name.startswith("victim"):
                    assert sf.info(str(wav)).frames == 40000
        counts = library.counts()
        for earlier, count in expected.items():
            assert counts.get(earlier) == count, f"kill {k} damaged {earlier}: {counts}"
        got = counts.get(name, 0)
        assert 0 <= got <= 24
        hits.append(got)
        if got:
            expected[name] = got  # a partial enrolment is kept file by file, and must survive later kills
        assert (db / CACHE_NAME).is_file()
    # the command-line listing agrees
    assert infer_recognition.main(["--list", "--audio_db", str(db)]) == 0
    # the next enrolment tidies away temp files a killed writer left (the library ignores them meanwhile)
    (db / "earlier_a" / ".u1.wav.x1y2.tmp").write_bytes(b"half a wav")
    SpeakerDB(db, embedder).register("later", [str(clip)])
    assert not list(db.rglob("*.tmp"))
    assert hits[0] == 0, "killed during start-up, the first victim must have written nothing"
    print(f"recordings of each victim when it was killed: {hits} of 24")


# create_data.py never touches source audio unless asked


def checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_create_data_keeps_sources_unless_delete_source(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import create_data
    from utils.data import read_list

    corpus = tmp_path / "corpus"
    dev = sorted((shared_data / "librispeech" / "dev-clean" / "84").rglob("*.mp3"))[:2]
    flac = shared_data / "librispeech" / "train-clean-100" / "1034-121119-0000.flac"
    for folder in ("spk1", "spk2", "spk3"):
        (corpus / folder).mkdir(parents=True)
    shutil.copyfile(dev[0], corpus / "spk1" / "u1.mp3")  # copies in tmp: --delete_source must really delete
    shutil.copyfile(flac, corpus / "spk1" / "u2.flac")
    speech, _ = sf.read(flac, dtype="float32")
    sf.write(corpus / "spk2" / "u3.wav", speech[: 16000 * 3], 16000, subtype="PCM_16")  # already 16 kHz 16-bit
    sf.write(corpus / "spk2" / "u4.wav", speech[: 44100 * 2], 44100, subtype="FLOAT")  # converted to u4.16k.wav
    (corpus / "spk2" / "bad.mp3").write_bytes(np.random.default_rng(0).bytes(4000))  # skipped
    shutil.copyfile(dev[1], corpus / "spk3" / "u5.mp3")
    (corpus / "spk3" / "u5.wav").write_bytes(b"RIFF not ours")  # where u5.mp3's WAV would go: a conflict
    before = checksums(corpus)
    args = ["--dataset_dir", str(corpus), "--dataset_format", "folder", "--test_mode", "none", "--num_workers", "1",
            "--list_dir", str(tmp_path / "lists")]  # fmt: skip

    # no conversion: nothing in the corpus changes
    create_data.main(args)
    assert checksums(corpus) == before

    # an option that needs --convert_to_wav is refused before anything happens
    with pytest.raises(SystemExit):
        create_data.main([*args, "--delete_source"])
    assert checksums(corpus) == before

    # conversion without --delete_source: every source byte-identical, conversions added next to them
    create_data.main([*args, "--convert_to_wav"])
    after = checksums(corpus)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"spk1/u1.wav", "spk1/u2.wav", "spk2/u4.16k.wav"}

    # --delete_source: only the sources whose conversion was written and verified go
    capsys.readouterr()
    create_data.main([*args, "--convert_to_wav", "--delete_source"])
    final = checksums(corpus)
    gone = set(before) - set(final)
    assert gone == {"spk1/u1.mp3", "spk1/u2.flac", "spk2/u4.wav"}
    kept = set(before) - gone  # in place, skipped, and conflicting files (and the foreign one) are untouched
    assert kept == {"spk2/u3.wav", "spk2/bad.mp3", "spk3/u5.mp3", "spk3/u5.wav"}
    assert all(final[k] == before[k] for k in kept)
    listed = {Path(p).relative_to(corpus).as_posix() for p, _ in read_list(tmp_path / "lists" / "train_list.txt")}
    assert listed == {"spk1/u1.wav", "spk1/u2.wav", "spk2/u3.wav", "spk2/u4.16k.wav", "spk3/u5.mp3"}


def test_json_with_a_file_name_that_is_not_utf8_is_written_and_reads_back(tmp_path: Path) -> None:
    # infer_recognition.py --recognize --json_path lost every result when one file name held a non-UTF-8 byte
    import json

    from utils.fileio import atomic_write_json

    record = {"path": os.fsdecode(b"/data/n\xffl.wav"), "name": "李达康"}
    atomic_write_json(tmp_path / "r.json", record, ensure_ascii=False)
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == record
