"""Bad input, row by row: every script answers it with one clear line, never a traceback.

One row per kind of bad (or merely unusual) input. What each row must produce:

- single-file commands (infer_contrast.py, train.py, eval.py, infer_recognition.py --register): a non-zero
  exit whose stderr ends in one line starting with `error:` (and no `Traceback` anywhere), or, for the
  must-work rows, exit 0 and the normal result (a similarity, an EER, "Registered ...");
- batch commands (create_data.py folder mode, eval.py on a list or trials file, train.py on its list): the
  bad file is skipped with a reason (a `skipped.txt` line or a `warning:` line) and the run goes on.

Speed (CI has 2 cores): rows run in-process through each script's `main(argv)` (SystemExit caught, stderr
captured) with one shared Embedder for the bundled model, and torch on one thread. At least one row per script
runs as a real subprocess, to prove that nothing escapes at the process level. The one-hour recording is
embedded in a background subprocess started with the first test, so its ~30 s of CPU overlap the other rows.

Set VOICEPRINT_MATRIX_MD=/path/file.md to have the module write a Markdown table of every row and the exact
line the user sees.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
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


# shared fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Rows run one after another in this process; one torch thread leaves the other core to the hour job."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def matrix_file():
    yield
    target = os.environ.get("VOICEPRINT_MATRIX_MD")
    if not target or not MATRIX:
        return
    lines = ["| # | area | row | command | what the user sees |", "| --- | --- | --- | --- | --- |"]
    for n, (area, row, command, seen) in enumerate(MATRIX, start=1):
        cell = seen.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {n} | {area} | {row} | `{command}` | `{cell}` |")
    Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> np.ndarray:
    """3 s of real 16 kHz speech (LibriSpeech train-clean-100) to build every test recording from."""
    wav, rate = sf.read(shared_data / "librispeech" / "train-clean-100" / "103-1240-0000.flac", dtype="float32")
    assert rate == 16000
    return wav[16000 : 16000 * 4]


@pytest.fixture(scope="module")
def good(shared_data: Path) -> Path:
    """The second recording of every infer_contrast row: real speech, 3.7 s."""
    return shared_data / "seed_samples" / "a_1.wav"


@pytest.fixture(scope="module")
def embedder():
    from utils.embedder import Embedder

    return Embedder(str(MODEL), device="cpu")


@pytest.fixture
def reuse_embedder(monkeypatch: pytest.MonkeyPatch, embedder) -> None:
    """Scripts that load the bundled model get the module's Embedder (saves ~1 s per row); others load theirs."""
    import utils.embedder

    real = utils.embedder.Embedder

    def factory(model_path, device="auto", **kwargs):
        if not kwargs and Path(model_path).resolve() == MODEL.resolve():
            return embedder
        return real(model_path, device=device, **kwargs)

    monkeypatch.setattr(utils.embedder, "Embedder", factory)


# the one-hour recording (started first, checked last)


@pytest.fixture(scope="session")
def hour_wav(tmp_path_factory: pytest.TempPathFactory):
    """1 h of 16 kHz 16-bit mono WAV (115 MB) tiled from real speech; made once per session, deleted after."""
    if not (SHARED_DATA / "librispeech").is_dir():
        yield None
        return
    sources = sorted((SHARED_DATA / "librispeech" / "train-clean-100").glob("*.flac"))[:8]
    speech = np.concatenate([sf.read(str(s), dtype="int16")[0] for s in sources])
    path = tmp_path_factory.mktemp("hour") / "one hour.wav"
    with sf.SoundFile(str(path), "w", 16000, 1, "PCM_16") as f:
        left = 3600 * 16000
        while left:
            n = min(left, len(speech))
            f.write(speech[:n])
            left -= n
    yield path
    path.unlink(missing_ok=True)


HOUR_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from utils.embedder import Embedder
    started = time.time()
    embedding = Embedder(sys.argv[1], device="cpu").embed_file(sys.argv[2])
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.time() - started, "dim": int(embedding.shape[0]),
                      "norm": float(np.linalg.norm(embedding)), "finite": bool(np.isfinite(embedding).all())}))
    """
)


@pytest.fixture(scope="module", autouse=True)
def hour_job(hour_wav):
    """Embeds the hour in a child process while the other rows run; the last test waits for it."""
    if hour_wav is None:
        yield None
        return
    proc = subprocess.Popen(
        [sys.executable, "-c", HOUR_CHILD, str(MODEL), str(hour_wav)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


# audio rows


def write(path: Path, wav: np.ndarray, rate: int = 16000, subtype: str = "PCM_16", fmt: str | None = None) -> Path:
    sf.write(str(path), wav, rate, subtype=subtype, format=fmt)
    return path


def resampled(speech: np.ndarray, rate: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate, 16000)
    return resample_poly(speech, rate // g, 16000 // g).astype(np.float32)


def wav_header(rate: int, frames: int) -> bytes:
    data = b"\x00\x10" * frames
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", len(data)) + data)  # fmt: skip


def make_missing(d: Path, s: np.ndarray) -> Path:
    (d / "missing.wav").symlink_to(d / "deleted.wav")  # a dangling link, so that create_data.py sees a name too
    return d / "missing.wav"


def make_directory(d: Path, s: np.ndarray) -> Path:
    (d / "folder.wav").mkdir()
    return d / "folder.wav"


def make_empty(d: Path, s: np.ndarray) -> Path:
    (d / "empty.wav").write_bytes(b"")
    return d / "empty.wav"


def make_random(d: Path, s: np.ndarray) -> Path:
    (d / "random.wav").write_bytes(np.random.default_rng(0).bytes(20000))
    return d / "random.wav"


def make_truncated_header(d: Path, s: np.ndarray) -> Path:
    data = write(d / "full.wav", s).read_bytes()
    (d / "full.wav").unlink()
    (d / "truncated_header.wav").write_bytes(data[:30])  # cut inside the fmt chunk
    return d / "truncated_header.wav"


def make_zero_samples(d: Path, s: np.ndarray) -> Path:
    return write(d / "no_frames.wav", np.zeros(0, dtype=np.float32))


def make_silent(d: Path, s: np.ndarray) -> Path:
    return write(d / "silent.wav", np.zeros(32000, dtype=np.float32))


def make_short(d: Path, s: np.ndarray) -> Path:
    return write(d / "short.wav", s[:3200])  # 0.2 s


def make_nan(d: Path, s: np.ndarray) -> Path:
    bad = s.copy()
    bad[1000] = np.nan
    return write(d / "nan.wav", bad, subtype="FLOAT")


def make_inf(d: Path, s: np.ndarray) -> Path:
    bad = s.copy()
    bad[1000] = np.inf
    return write(d / "inf.wav", bad, subtype="FLOAT")


def make_one_hz(d: Path, s: np.ndarray) -> Path:
    (d / "one_hz.wav").write_bytes(wav_header(1, 4000))  # "resampled" this would be 64 M samples
    return d / "one_hz.wav"


def make_fifo(d: Path, s: np.ndarray) -> Path:
    os.mkfifo(d / "pipe.wav")  # opening it for reading would block forever
    return d / "pipe.wav"


def make_long_name(d: Path, s: np.ndarray) -> Path:
    return d / ("x" * 300 + ".wav")  # over NAME_MAX (255): cannot even be looked up


def make_rate(rate: int) -> Callable[[Path, np.ndarray], Path]:
    return lambda d, s: write(d / f"rate_{rate}.wav", resampled(s, rate), rate)


def make_stereo(d: Path, s: np.ndarray) -> Path:
    return write(d / "stereo.wav", np.stack([s, 0.5 * s], axis=1))


def make_six_channels(d: Path, s: np.ndarray) -> Path:
    return write(d / "six.wav", np.stack([s * (1 - 0.1 * c) for c in range(6)], axis=1))


def make_subtype(subtype: str) -> Callable[[Path, np.ndarray], Path]:
    return lambda d, s: write(d / f"{subtype.lower()}.wav", s, subtype=subtype)


def make_format(suffix: str, fmt: str, subtype: str) -> Callable[[Path, np.ndarray], Path]:
    return lambda d, s: write(d / f"clip.{suffix}", s, subtype=subtype, fmt=fmt)


def make_chinese(d: Path, s: np.ndarray) -> Path:
    target = d / "李达康.wav"
    shutil.copyfile(SHARED_DATA / "seed_samples" / "李达康.wav", target)  # tmp only, never into the repo
    return target


def make_spaces(d: Path, s: np.ndarray) -> Path:
    return write(d / "my recording (take 2).wav", s)


def make_truncated_data(d: Path, s: np.ndarray) -> Path:
    data = write(d / "whole.wav", s).read_bytes()
    (d / "whole.wav").unlink()
    (d / "truncated_data.wav").write_bytes(data[: 44 + 2 * 24000])  # header says 3 s, 1.5 s are there
    return d / "truncated_data.wav"


@dataclass(frozen=True)
class AudioRow:
    id: str
    make: Callable[[Path, np.ndarray], Path]
    single: str | None  # expected text of the error line; None: must work (similarity printed)
    batch: str | None  # create_data.py: skipped.txt category, "kept" (listed), or None (not applicable)


AUDIO_ROWS = [
    AudioRow("missing path", make_missing, "audio file not found", "missing"),
    AudioRow("a directory", make_directory, "expected an audio file but got a directory", None),
    AudioRow("empty file (0 bytes)", make_empty, "audio file is empty (0 bytes)", "empty"),
    AudioRow("random bytes named .wav", make_random, "cannot decode audio file", "undecodable"),
    AudioRow("truncated WAV header", make_truncated_header, "cannot decode audio file", "undecodable"),
    AudioRow("zero samples (valid header)", make_zero_samples, "has no samples", "empty"),
    AudioRow("all-zero (silent)", make_silent, "is silent", "silent"),
    AudioRow("shorter than 0.3 s", make_short, "is too short: 0.200 s", "too short"),
    AudioRow("NaN samples (float WAV)", make_nan, "contains NaN or infinite samples", "non-finite"),
    AudioRow("inf samples (float WAV)", make_inf, "contains NaN or infinite samples", "non-finite"),
    AudioRow("header claims 1 Hz", make_one_hz, "implausible sample rate of 1 Hz", "undecodable"),
    AudioRow("named pipe (FIFO)", make_fifo, "expected an audio file but got a pipe or device", "undecodable"),
    AudioRow("file name over 255 bytes", make_long_name, "File name too long", None),
    AudioRow("8 kHz", make_rate(8000), None, "kept"),
    AudioRow("22.05 kHz", make_rate(22050), None, "kept"),
    AudioRow("44.1 kHz", make_rate(44100), None, "kept"),
    AudioRow("48 kHz", make_rate(48000), None, "kept"),
    AudioRow("stereo", make_stereo, None, "kept"),
    AudioRow("6 channels", make_six_channels, None, "kept"),
    AudioRow("8-bit WAV", make_subtype("PCM_U8"), None, "kept"),
    AudioRow("24-bit WAV", make_subtype("PCM_24"), None, "kept"),
    AudioRow("float WAV", make_subtype("FLOAT"), None, "kept"),
    AudioRow("FLAC", make_format("flac", "FLAC", "PCM_16"), None, "kept"),
    AudioRow("OGG Vorbis", make_format("ogg", "OGG", "VORBIS"), None, "kept"),
    AudioRow("MP3", make_format("mp3", "MP3", "MPEG_LAYER_III"), None, "kept"),
    AudioRow("Chinese file name", make_chinese, None, "kept"),
    AudioRow("spaces and brackets in the name", make_spaces, None, "kept"),
    AudioRow("data chunk shorter than its header says", make_truncated_data, None, "kept"),
]
AUDIO_IDS = [row.id for row in AUDIO_ROWS]


@pytest.fixture(scope="module")
def audio_files(speech: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every row's file, each in its own folder (it doubles as a speaker folder for create_data.py)."""
    root = tmp_path_factory.mktemp("audio")
    files = {}
    for n, row in enumerate(AUDIO_ROWS):
        folder = root / f"spk{n:02d}"
        folder.mkdir()
        files[row.id] = row.make(folder, speech)
    return files


@pytest.mark.parametrize("row", AUDIO_ROWS, ids=AUDIO_IDS)
def test_audio_single_file(
    row: AudioRow, audio_files: dict[str, Path], good: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    path = audio_files[row.id]
    outcome = run_main("infer_contrast", ["--audio_path1", str(path), "--audio_path2", str(good),
                                          "--model_path", str(MODEL), "--device", "cpu"], capsys)  # fmt: skip
    seen = assert_similarity(outcome) if row.single is None else assert_error(outcome, row.single)
    record("audio", row.id, "infer_contrast.py --audio_path1 X --audio_path2 good.wav", seen, path.parent.parent)


def test_audio_single_file_subprocess(audio_files: dict[str, Path], good: Path, tmp_path: Path) -> None:
    """infer_contrast.py as a real process: exit status 1, the error as the last stderr line, UTF-8 argv intact."""
    path = tmp_path / "沙瑞金 nan.wav"  # a Chinese name with a space, holding NaN samples
    shutil.copyfile(audio_files["NaN samples (float WAV)"], path)
    outcome = run_cli(["infer_contrast.py", "--audio_path1", str(path), "--audio_path2", str(good), "--device", "cpu"])
    line = assert_error(outcome, f"audio file {path} contains NaN or infinite samples")
    assert outcome.code == 1 and line == outcome.err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def batch_run(audio_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """create_data.py (a real process) over a folder holding every row's file, one speaker folder each."""
    corpus = next(iter(audio_files.values())).parent.parent
    lists = tmp_path_factory.mktemp("lists")
    outcome = run_cli(["create_data.py", "--dataset_dir", str(corpus), "--dataset_format", "folder", "--test_mode",
                       "none", "--list_dir", str(lists), "--num_workers", "1"])  # fmt: skip
    assert outcome.code == 0, outcome.err[-3000:]
    assert "Traceback" not in outcome.err
    skipped = {}
    for line in (lists / "skipped.txt").read_text(encoding="utf-8").splitlines():
        path, reason = line.split("\t", 1)
        skipped[path] = reason
    from utils.data import read_list

    listed = {path for path, _ in read_list(lists / "train_list.txt")}
    return {"skipped": skipped, "listed": listed, "outcome": outcome, "corpus": corpus}


@pytest.mark.parametrize("row", [r for r in AUDIO_ROWS if r.batch], ids=[r.id for r in AUDIO_ROWS if r.batch])
def test_audio_batch(row: AudioRow, audio_files: dict[str, Path], batch_run: dict) -> None:
    path = str(audio_files[row.id])
    if row.batch == "kept":
        assert path in batch_run["listed"], f"{path} not in train_list.txt; skipped: {batch_run['skipped'].get(path)}"
        assert path not in batch_run["skipped"]
        seen = "listed in train_list.txt"
    else:
        assert path in batch_run["skipped"], f"{path} neither skipped nor reported"
        reason = batch_run["skipped"][path]
        assert reason.startswith(row.batch + ":"), reason
        assert path not in batch_run["listed"]
        seen = f"skipped.txt: {reason}"
    record("audio (batch)", row.id, "create_data.py --dataset_format folder", seen, batch_run["corpus"].parent)


def test_audio_batch_summary(batch_run: dict) -> None:
    kept = sum(1 for r in AUDIO_ROWS if r.batch == "kept")
    skipped = sum(1 for r in AUDIO_ROWS if r.batch not in (None, "kept"))
    assert f"kept {kept} files, skipped {skipped}" in batch_run["outcome"].out


# list and trials files


@pytest.fixture(scope="module")
def four(shared_data: Path) -> list[tuple[str, int]]:
    """Two real speakers, two recordings each."""
    seed = shared_data / "seed_samples"
    return [
        (str(seed / "a_1.wav"), 0),
        (str(seed / "a_2.wav"), 0),
        (str(seed / "b_1.wav"), 1),
        (str(seed / "b_2.wav"), 1),
    ]


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


@pytest.fixture(scope="module")
def trained(four: list[tuple[str, int]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.py on a BOM + CRLF + blank-line list: must train; its checkpoint is reused by the model rows."""
    tmp = tmp_path_factory.mktemp("train")
    (tmp / "train_list.txt").write_bytes(messy(four))
    import train

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        train.main(["--train_list_path", str(tmp / "train_list.txt"), "--save_model", str(tmp / "model"), *TINY_TRAIN])
    assert "done: 1 steps" in out.getvalue()
    record("train list", "blank lines, CRLF and UTF-8 BOM", "train.py --train_list_path X --max_steps 1",
           next(x for x in out.getvalue().splitlines() if x.startswith("done:")), tmp)  # fmt: skip
    return tmp / "model"


def test_train_list_messy_works(trained: Path) -> None:
    assert (trained / "inference.pt").is_file() and any(trained.rglob("checkpoint.pt"))


@pytest.mark.parametrize("row_id", [k for k, v in LIST_ROWS.items() if v[1]])
def test_train_list_errors(
    row_id: str, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, expected = LIST_ROWS[row_id]
    (tmp_path / "list.txt").write_bytes(build(four))
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model",
                                 str(tmp_path / "m"), *TINY_TRAIN], capsys)  # fmt: skip
    line = assert_error(outcome, expected)
    record("train list", row_id, "train.py --train_list_path X", line, tmp_path)
    assert not (tmp_path / "m").exists(), "a rejected list must not leave a half-made model folder"


def test_train_list_file_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "nope.txt"), *TINY_TRAIN], capsys)
    record("train list", "list file not found", "train.py --train_list_path X",
           assert_error(outcome, "list file not found"), tmp_path)  # fmt: skip


def test_train_labels_that_skip_values_warn(
    four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels 0 and 2 (1 unused): allowed, with a warning line; the head still has 3 classes."""
    items = [(path, 2 if label else 0) for path, label in four]
    (tmp_path / "list.txt").write_text(list_text(items), encoding="utf-8")
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model", str(tmp_path / "m"),
                                 *TINY_TRAIN, "--speed_perturb", "false"], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    warning = [w for w in outcome.warnings() if "have no utterance" in w]
    assert warning == ["warning: 1 of labels 0..2 have no utterance in " + str(tmp_path / "list.txt")]
    assert "head arcface over 3 classes" in outcome.out
    record("train list", "labels skip a value (0, 2)", "train.py --train_list_path X", warning[0], tmp_path)


@pytest.mark.parametrize("cache_audio", ["false", "true"])
def test_train_list_path_that_no_longer_exists_warns(
    cache_audio: str, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listed file deleted since create_data.py: training goes on (noise in its place) but says so."""
    gone = tmp_path / "deleted.wav"
    items = [*four, (str(gone), 1)]
    (tmp_path / "list.txt").write_text(list_text(items), encoding="utf-8")
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model", str(tmp_path / "m"),
                                 *TINY_TRAIN, "--epoch_size", "16", "--batch_size", "16", "--balance", "utterances",
                                 "--cache_audio", cache_audio], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    warning = [w for w in outcome.warnings() if str(gone) in w]
    assert warning == [f"warning: training file replaced by noise: audio file not found: {gone}"]
    row = "a listed path no longer exists" + (" (--cache_audio true)" if cache_audio == "true" else "")
    record("train list", row, "train.py --train_list_path X", warning[0], tmp_path)


# eval.py: lists


@pytest.mark.parametrize("row_id", list(LIST_ROWS))
def test_eval_list(
    row_id: str, four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    build, expected = LIST_ROWS[row_id]
    expected = EVAL_LIST_ERRORS.get(row_id, expected)
    (tmp_path / "list.txt").write_bytes(build(four))
    outcome = run_main("eval", ["--list_path", str(tmp_path / "list.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    if expected is None:
        assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
        seen = next(line.strip() for line in outcome.out.splitlines() if "EER:" in line)
        assert "trials: 6 (2 target / 4 non-target)" in outcome.out
    else:
        seen = assert_error(outcome, expected)
    record("eval list", row_id, "eval.py --list_path X", seen, tmp_path)


def test_eval_list_large_labels_work(
    four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    """Evaluation labels only tell speakers apart: there is no class count to exceed."""
    items = [(path, 10**9 + label) for path, label in four]
    (tmp_path / "list.txt").write_text(list_text(items), encoding="utf-8")
    outcome = run_main("eval", ["--list_path", str(tmp_path / "list.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    assert outcome.code == 0 and "trials: 6 (2 target / 4 non-target)" in outcome.out, outcome.err[-2000:]
    seen = next(line.strip() for line in outcome.out.splitlines() if "EER:" in line)
    record("eval list", "labels far beyond the speaker count (1e9)", "eval.py --list_path X", seen, tmp_path)


def test_eval_list_missing_file_is_skipped_and_counted(
    four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "deleted.wav"
    (tmp_path / "list.txt").write_text(list_text([*four, (str(gone), 1)]), encoding="utf-8")
    outcome = run_main("eval", ["--list_path", str(tmp_path / "list.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    warning = [w for w in outcome.warnings() if str(gone) in w]
    assert warning == [f"warning: skipped list file: audio file not found: {gone}"]
    assert "embedded 4 files" in outcome.out and "skipped 1 unusable" in outcome.out
    record("eval list", "a listed path no longer exists", "eval.py --list_path X", warning[0], tmp_path)


# eval.py: trials files


def trials_text(four: list[tuple[str, int]], first: str | None = None) -> str:
    """Four trials; `first` replaces the whole first line's label field ("" drops it)."""
    (a1, _), (a2, _), (b1, _), (b2, _) = four
    rows = [["1", a1, a2], ["0", a1, b1], ["0", a2, b2], ["1", b1, b2]]
    if first is not None:
        rows[0] = ([first] if first else []) + rows[0][1:]
    return "".join(" ".join(row) + "\n" for row in rows)


TRIALS_ROWS = {
    "blank lines, CRLF and UTF-8 BOM": (
        lambda f: b"\xef\xbb\xbf\r\n" + trials_text(f).replace("\n", "\r\n\r\n").encode("utf-8"),
        None,
    ),
    "missing field": (
        lambda f: trials_text(f, "").encode(),
        ":1: expected '<1|0> <audio a> <audio b>', found 2 fields",
    ),
    "non-integer label": (lambda f: trials_text(f, "yes").encode(), ":1: label 'yes' is not 1"),
    "negative label": (lambda f: trials_text(f, "-1").encode(), ":1: label '-1' is not 1"),
    "label beyond 0/1": (
        lambda f: trials_text(f, "2").encode(),
        ":1: label '2' is not 1 (same speaker) or 0 (different)",
    ),
    "only blank lines": (lambda f: b"\r\n\n", "has no trials"),
}


@pytest.mark.parametrize("row_id", list(TRIALS_ROWS))
def test_eval_trials(
    row_id: str, four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    build, expected = TRIALS_ROWS[row_id]
    (tmp_path / "trials.txt").write_bytes(build(four))
    outcome = run_main("eval", ["--trials_path", str(tmp_path / "trials.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    if expected is None:
        assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
        assert "trials: 4 (2 target / 2 non-target)" in outcome.out
        seen = next(line.strip() for line in outcome.out.splitlines() if "EER:" in line)
    else:
        seen = assert_error(outcome, expected)
    record("eval trials", row_id, "eval.py --trials_path X", seen, tmp_path)


def test_eval_trials_missing_file_is_skipped_and_counted(
    four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "deleted.wav"
    text = trials_text(four) + f"0 {four[0][0]} {gone}\n"
    (tmp_path / "trials.txt").write_text(text, encoding="utf-8")
    outcome = run_main("eval", ["--trials_path", str(tmp_path / "trials.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    assert f"warning: skipped trial file: audio file not found: {gone}" in outcome.warnings()
    assert "warning: 1 trial(s) left out because a file failed" in outcome.warnings()
    assert "trials: 4 (2 target / 2 non-target)" in outcome.out
    record("eval trials", "a path that no longer exists", "eval.py --trials_path X",
           "warning: 1 trial(s) left out because a file failed", tmp_path)  # fmt: skip


def test_eval_subprocess_bad_trials(four: list[tuple[str, int]], tmp_path: Path) -> None:
    (tmp_path / "trials.txt").write_bytes(TRIALS_ROWS["label beyond 0/1"][0](four))
    outcome = run_cli(["eval.py", "--trials_path", str(tmp_path / "trials.txt"), "--device", "cpu"])
    assert_error(outcome, "label '2' is not 1 (same speaker) or 0 (different)")
    assert outcome.code == 1


def test_train_subprocess_bad_list(four: list[tuple[str, int]], tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_bytes(LIST_ROWS["negative label"][0](four))
    outcome = run_cli(["train.py", "--train_list_path", str(tmp_path / "list.txt"), "--save_model",
                       str(tmp_path / "m"), *TINY_TRAIN])  # fmt: skip
    assert_error(outcome, ":3: label -1 is negative")


# models


class Payload:
    """A pickle that runs code when loaded: it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


def model_blob() -> dict:
    from utils.checkpoint import load_torch_file

    return load_torch_file(MODEL)


def put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def save(blob: object, path: Path) -> Path:
    from utils.checkpoint import atomic_torch_save

    atomic_torch_save(blob, path)
    return path


def changed(**parts) -> Callable[[Path, Path], Path]:
    def make(d: Path, trained: Path) -> Path:
        blob = model_blob()
        for key, update in parts.items():
            blob[key] = update(blob[key])
        return save(blob, d / "model.pt")

    return make


def make_truncated_model(d: Path, trained: Path) -> Path:
    data = MODEL.read_bytes()
    (d / "model.pt").write_bytes(data[: len(data) // 2])
    return d / "model.pt"


def make_corrupted_model(d: Path, trained: Path) -> Path:
    data = bytearray(MODEL.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\x00" * 4096  # a damaged zip member
    (d / "model.pt").write_bytes(bytes(data))
    return d / "model.pt"


def make_pickle_payload(d: Path, trained: Path) -> Path:
    (d / "model.pt").write_bytes(pickle.dumps({"format": "voiceprint-inference-v1", "x": Payload(d / "PWNED")}, 2))
    return d / "model.pt"


def make_torch_payload(d: Path, trained: Path) -> Path:
    buffer = io.BytesIO()
    torch.save({"format": "voiceprint-inference-v1", "state_dict": {}, "x": Payload(d / "PWNED")}, buffer)
    (d / "model.pt").write_bytes(buffer.getvalue())
    return d / "model.pt"


def make_onnx_junk(d: Path, trained: Path) -> Path:
    (d / "model.onnx").write_bytes(np.random.default_rng(1).bytes(4000))
    return d / "model.onnx"


MODEL_ROWS = {
    "missing file": (lambda d, t: d / "nope.pt", "model file not found"),
    "a directory": (lambda d, t: d, "expected a model file but got a directory"),
    "empty file": (lambda d, t: put(d / "model.pt", b""), "model file is empty (0 bytes)"),
    "truncated file": (make_truncated_model, "PytorchStreamReader failed reading zip archive"),
    "corrupted bytes inside": (make_corrupted_model, "it is damaged (checksum mismatch in archive/data/"),
    "random bytes": (
        lambda d, t: put(d / "model.pt", np.random.default_rng(2).bytes(3000)),
        "not a PyTorch weights file, or it is damaged",
    ),
    "config of another architecture (width)": (
        changed(model_config=lambda c: {**c, "width": 32}),
        "does not match its model description: Error(s) in loading",
    ),
    "config of another architecture (resnet18)": (
        changed(model_config=lambda c: {**c, "name": "resnet18"}),
        "does not match its model description",
    ),
    "features that do not fit the model": (
        changed(feature_config=lambda c: {**c, "n_mels": 40}),
        "features have 40 bins, the model expects 80",
    ),
    "unknown feature type": (changed(feature_config=lambda c: {**c, "feature": "mfcc"}), "unknown feature 'mfcc'"),
    "NaN weights": (
        changed(state_dict=lambda s: {k: v * float("nan") if v.is_floating_point() else v for k, v in s.items()}),
        "has NaN or infinite weights",
    ),
    "NaN threshold": (changed(threshold=lambda t: float("nan")), "stores an invalid verification threshold: nan"),
    "a tensor, not a model": (lambda d, t: save(torch.zeros(3), d / "model.pt"), "is not a voiceprint inference model"),
    "training checkpoint instead of inference.pt": (
        lambda d, t: next(t.rglob("checkpoint.pt")),
        "is not a voiceprint inference model (a training checkpoint? use <save_model>/inference.pt)",
    ),
    "pickle that runs code (plain pickle)": (make_pickle_payload, "refused: loading it could run code"),
    "pickle that runs code (torch.save zip)": (make_torch_payload, "refused: loading it could run code"),
    "random bytes named .onnx": (make_onnx_junk, "cannot load ONNX model file"),
}


@pytest.mark.parametrize("row_id", list(MODEL_ROWS))
def test_model(
    row_id: str, trained: Path, audio_files: dict[str, Path], good: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    make, expected = MODEL_ROWS[row_id]
    if row_id.endswith(".onnx"):
        pytest.importorskip("onnxruntime")
    model = make(tmp_path, trained)
    outcome = run_main("infer_contrast", ["--audio_path1", str(good), "--audio_path2", str(good),
                                          "--model_path", str(model), "--device", "cpu"], capsys)  # fmt: skip
    line = assert_error(outcome, expected)
    assert not (tmp_path / "PWNED").exists(), "loading the model ran code from it"
    record("model", row_id, "infer_contrast.py --model_path X", line, trained.parent.parent)


def test_payload_pickles_are_real(tmp_path: Path) -> None:
    """The two 'pickle that runs code' rows test something: unpickled without weights_only they DO run."""
    make_pickle_payload(tmp_path, tmp_path)
    pickle.loads((tmp_path / "model.pt").read_bytes())
    assert (tmp_path / "PWNED").exists()
    (tmp_path / "PWNED").unlink()
    make_torch_payload(tmp_path, tmp_path)
    torch.load(tmp_path / "model.pt", weights_only=False)  # the unsafe call the project never makes
    assert (tmp_path / "PWNED").exists()


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


# options and output paths: rejected before any work, never a traceback

OPTION_ROWS = {
    "batch size 0": (["--batch_size", "0"], "--batch_size must be greater than 0"),
    "crop of 0 s": (["--crop_seconds", "0"], "--crop_seconds must be greater than 0"),
    "zero epochs": (["--num_epoch", "0"], "--num_epoch must be greater than 0"),
    "NaN learning rate": (["--learning_rate", "nan"], "--learning_rate must be a finite number"),
    "negative workers": (["--num_workers", "-1"], "--num_workers must be 0 or more"),
}


@pytest.mark.parametrize("row_id", list(OPTION_ROWS))
def test_train_bad_options(
    row_id: str, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, expected = OPTION_ROWS[row_id]
    (tmp_path / "list.txt").write_text(list_text(four))
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model", str(tmp_path / "m"),
                                 *TINY_TRAIN, *extra], capsys)  # fmt: skip
    record("options", row_id, f"train.py {' '.join(extra)}", assert_error(outcome, expected), tmp_path)
    assert not (tmp_path / "m").exists()


def test_train_save_model_is_a_file(four: list[tuple[str, int]], tmp_path: Path, capsys) -> None:
    (tmp_path / "list.txt").write_text(list_text(four))
    (tmp_path / "notes.txt").write_text("keep me\n")
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"),
                                 "--save_model", str(tmp_path / "notes.txt"), *TINY_TRAIN], capsys)  # fmt: skip
    line = assert_error(outcome, "is a file, not a folder")
    record("output paths", "--save_model is an existing file", "train.py --save_model notes.txt", line, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me\n"


def test_train_resume_with_another_list(
    trained: Path, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save = tmp_path / "model"
    shutil.copytree(trained, save)
    before = {p: p.read_bytes() for p in save.rglob("*") if p.is_file()}
    more_speakers = [*four, (four[0][0], 2), (four[2][0], 3)]  # 4 classes where the checkpoint has 2
    (tmp_path / "list.txt").write_text(list_text(more_speakers))
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model", str(save),
                                 *TINY_TRAIN, "--resume", "--max_steps", "3"], capsys)  # fmt: skip
    line = assert_error(outcome, "another head or number of classes")
    record("models", "--resume with a list of other speakers", "train.py --resume --train_list_path X", line, tmp_path)
    assert {p: p.read_bytes() for p in save.rglob("*") if p.is_file()} == before, "a refused resume wrote files"


OUTPUT_ROWS = ["infer_contrast.py --json_path", "eval.py --json_path", "eval.py --plot_dir",
               "infer_recognition.py --json_path", "export_onnx.py --output"]  # fmt: skip


@pytest.mark.parametrize("row_id", OUTPUT_ROWS)
def test_output_path_in_the_way(
    row_id: str, good: Path, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    reuse_embedder: None,
) -> None:  # fmt: skip
    folder = tmp_path / "out"
    folder.mkdir()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    (tmp_path / "list.txt").write_text(list_text(four))
    script, flag = row_id.replace(".py", "").split(" ")
    if flag == "--plot_dir":
        argv, expected, what = ["--list_path", str(tmp_path / "list.txt"), flag, str(a_file)], "is a file", "a file"
    else:
        base = {
            "infer_contrast": ["--audio_path1", str(good), "--audio_path2", str(good)],
            "eval": ["--list_path", str(tmp_path / "list.txt")],
            "infer_recognition": ["--audio_db", str(tmp_path / "db"), "--list"],
            "export_onnx": ["--model_path", str(MODEL)],
        }[script]
        argv, expected, what = [*base, flag, str(folder) + os.sep], "is a folder: give a file name", "a folder"
    started = time.time()
    outcome = run_main(script, argv, capsys)
    line = assert_error(outcome, expected)
    assert time.time() - started < 30, "the output path must be checked before the work"
    record("output paths", f"{flag} is {what}", f"{script}.py {flag} X", line, tmp_path)
    assert a_file.read_text() == "keep me\n" and not any(folder.iterdir())


# last: the one-hour recording


def test_one_hour_recording_bounded_memory(hour_job, hour_wav) -> None:
    if hour_job is None:
        pytest.skip(f"real speech not found at {SHARED_DATA}")
    started = time.time()
    out, err = hour_job.communicate(timeout=600)
    assert hour_job.returncode == 0 and "Traceback" not in err, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["dim"] == 256 and result["finite"] and abs(result["norm"] - 1.0) < 1e-3
    assert result["maxrss_mb"] < HOUR_RSS_LIMIT_MB, result
    seen = f"embedded, peak RSS {result['maxrss_mb']:.0f} MB, {result['seconds']:.0f} s (waited {time.time() - started:.0f} s)"
    record("audio", "one hour long (115 MB WAV)", "Embedder.embed_file in a child process", seen)
