"""Bad input: recordings (single files, batches, the one-hour file). Rows, expectations and speed rules: helpers.py."""

from __future__ import annotations

import json
import os
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

from tests.bad_inputs.helpers import (
    HOUR_RSS_LIMIT_MB,
    MODEL,
    ROOT,
    SHARED_DATA,
    assert_error,
    assert_similarity,
    record,
    run_cli,
    run_main,
)

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


def _signal(d: Path, name: str, wav: np.ndarray) -> Path:
    return write(d / name, wav.astype(np.float32), subtype="FLOAT")


T = np.arange(3 * 16000) / 16000  # 3 s


def make_noise(d: Path, s: np.ndarray) -> Path:
    return _signal(d, "white noise.wav", 0.1 * np.random.default_rng(0).standard_normal(len(T)))


def make_tone(d: Path, s: np.ndarray) -> Path:
    return _signal(d, "tone 440 Hz.wav", 0.5 * np.sin(2 * np.pi * 440 * T))


def make_dc(d: Path, s: np.ndarray) -> Path:
    return _signal(d, "dc offset.wav", np.full(len(T), 0.3))


def make_hum(d: Path, s: np.ndarray) -> Path:
    return _signal(d, "hum 50 Hz.wav", 0.3 * np.sin(2 * np.pi * 50 * T) + 0.05 * np.sin(2 * np.pi * 150 * T))


def make_mostly_silence(d: Path, s: np.ndarray) -> Path:
    """120 s of near-silence (room tone) holding 0.5 s of real speech."""
    wav = 1e-3 * np.random.default_rng(1).standard_normal(120 * 16000)
    wav[60 * 16000 : 60 * 16000 + 8000] += s[16000:24000]
    return write(d / "mostly silence.wav", wav.astype(np.float32))


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


def make_flac_no_length(d: Path, s: np.ndarray) -> Path:
    # a FLAC written to a pipe leaves STREAMINFO's total-samples field 0 ("unknown"): libsndfile cannot read
    # it and reports 2**63 - 1 frames, which once took all memory (the OOM killer) in the scripts
    data = bytearray(write(d / "stream.flac", s, fmt="FLAC").read_bytes())
    assert data[:4] == b"fLaC"
    field = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)  # the low 36 bits of bytes 18-25: total samples
    data[18:26] = field.to_bytes(8, "big")
    (d / "stream.flac").write_bytes(bytes(data))
    return d / "stream.flac"


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
    AudioRow("white noise", make_noise, "no speech detected in", "kept"),
    AudioRow("440 Hz tone", make_tone, "no speech detected in", "kept"),
    AudioRow("DC offset only", make_dc, "no speech detected in", "kept"),
    AudioRow("50 Hz hum", make_hum, "no speech detected in", "kept"),
    AudioRow("120 s of silence with 0.5 s of speech", make_mostly_silence, None, "kept"),
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
    AudioRow("FLAC with no length in its header", make_flac_no_length, "its header gives no length", "undecodable"),
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


NON_SPEECH_ENROLMENT = {
    "white noise": "no speech detected in",
    "440 Hz tone": "no speech detected in",
    "DC offset only": "no speech detected in",
    "50 Hz hum": "no speech detected in",
    "120 s of silence with 0.5 s of speech": "too little speech in",
}


@pytest.mark.parametrize("row_id", list(NON_SPEECH_ENROLMENT))
def test_non_speech_cannot_be_enrolled(
    row_id: str, audio_files: dict[str, Path], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "db"
    outcome = run_main("infer_recognition", ["--audio_db", str(db), "--register", "noisebot", "--audio_path",
                                             str(audio_files[row_id]), "--device", "cpu"], capsys)  # fmt: skip
    line = assert_error(outcome, NON_SPEECH_ENROLMENT[row_id])
    assert not (db / "noisebot").exists(), "a refused recording must not leave a speaker behind"
    record("audio", f"{row_id}: enrol", "infer_recognition.py --register NAME --audio_path X", line, tmp_path)


def test_little_speech_is_reported(audio_files: dict[str, Path], good: Path, reuse_embedder, capsys) -> None:
    """Silence around a little speech: compared, but the user sees how little speech the answer rests on."""
    outcome = run_main("infer_contrast", ["--audio_path1", str(audio_files["120 s of silence with 0.5 s of speech"]),
                                          "--audio_path2", str(good), "--device", "cpu"], capsys)  # fmt: skip
    assert_similarity(outcome)
    speech_line = next(x for x in outcome.out.splitlines() if x.startswith("speech used: "))
    first = float(speech_line.split()[2])
    assert 0.3 <= first <= 1.0, speech_line
