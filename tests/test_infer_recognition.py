"""infer_recognition.py end to end, in subprocesses, on real speech.

File mode: enrol 3 dev-clean speakers (3 utterances each), recognise other utterances
of theirs and two strangers, restart without re-embedding, list, remove, bad input.
Interactive mode: a real microphone (tests/virtual_mic.py: a private PulseAudio
daemon playing LibriSpeech speech) driven through stdin; and no microphone at all.

Children run with OMP_NUM_THREADS=1: on a shared 2-core machine that is several
times faster than two OpenMP threads competing with other processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.test_speaker_db import short_utterances

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "infer_recognition.py"
ENROLLED = ("1272", "2035", "2803")
MIC_SPEAKER = "777"  # enrolled through the microphone, never from files


def _model_1n_threshold() -> float:
    from utils.checkpoint import load_torch_file
    from utils.operating_points import OperatingPoints

    return OperatingPoints.from_info(load_torch_file(ROOT / "models" / "voiceprint_resnet34.pt")).identification


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", *map(str, args)],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, result.stdout[-1000:] + result.stderr[-1000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def utterances(shared_data: Path) -> dict[str, list[Path]]:
    return {spk: short_utterances(shared_data, spk, 5) for spk in ENROLLED}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, utterances) -> Path:
    """audio_db with the 3 speakers enrolled through --register (3 utterances each)."""
    root = tmp_path_factory.mktemp("lib") / "audio_db"
    for spk in ENROLLED:
        out_json = root.parent / f"{spk}.json"
        out = ok(
            run("--audio_db", root, "--register", spk, "--audio_path", *utterances[spk][:3], "--json_path", out_json)
        )
        assert f"Registered {spk}: 3 recordings" in out
        enrolment = json.loads(out_json.read_text())
        assert (enrolment["name"], enrolment["recordings"], len(enrolment["new"])) == (spk, 3, 3)
        assert all(r["speech_seconds"] > 1.0 for r in enrolment["new"]), enrolment
    return root


def copy_library(library: Path, tmp_path: Path) -> Path:
    target = tmp_path / "audio_db"
    shutil.copytree(library, target)  # copy2 keeps mtimes: the cache stays valid
    return target


def test_recognize_enrolled_and_strangers_without_re_embedding(library: Path, utterances, shared_data: Path, tmp_path):
    own = [utterances[spk][4] for spk in ENROLLED]
    strangers = [
        shared_data / "librispeech" / "train-clean-100" / "1235-135883-0000.flac",
        shared_data / "fsdd" / "0_nicolas_5.wav",
    ]
    out_json = tmp_path / "result.json"
    out = ok(run("--audio_db", library, "--recognize", *own, *strangers, "--json_path", out_json))
    # a restart after enrolment embeds nothing again
    assert "3 speakers, 9 recordings, 0 new recordings embedded" in out
    results = json.loads(out_json.read_text())
    assert [r["name"] for r in results] == [*ENROLLED, None, None], results
    for r in results[:3]:
        assert r["score"] > r["runner_up_score"] and r["runner_up"] in ENROLLED
    for r in results[3:]:
        assert r["score"] < _model_1n_threshold() and r["runner_up"] in ENROLLED
    assert "Recognised: 1272, similarity:" in out and "Unknown speaker (best: " in out

    # one file: a single JSON object
    ok(run("--audio_db", library, "--recognize", own[1], "--json_path", out_json))
    single = json.loads(out_json.read_text())
    assert single["name"] == "2035" and {"name", "score", "runner_up", "runner_up_score"} <= set(single)


def test_list_and_remove(library: Path, tmp_path: Path) -> None:
    db = copy_library(library, tmp_path)
    out_json = tmp_path / "list.json"
    ok(run("--audio_db", db, "--list", "--json_path", out_json))
    assert json.loads(out_json.read_text()) == {"speakers": {spk: 3 for spk in ENROLLED}}
    out = ok(run("--audio_db", db, "--remove", "2035"))
    assert "Removed 2035; 2 speakers left." in out and not (db / "2035").exists()
    out = ok(run("--audio_db", db, "--list"))
    assert "2 speakers" in out and "2035" not in out.split("---\n")[-1]
    one_line_error(run("--audio_db", db, "--remove", "2035"), "unknown speaker: 2035")


def test_bad_input_is_one_line_error(library: Path, tmp_path: Path, shared_data: Path, utterances) -> None:
    db = copy_library(library, tmp_path)
    one_line_error(run("--audio_db", db, "--register", "../x", "--audio_path", utterances["1272"][0]), "'/'")
    one_line_error(run("--audio_db", db, "--register", "a\\b", "--audio_path", utterances["1272"][0]), "'\\'")
    one_line_error(run("--audio_db", db, "--register", "x" * 1024, "--audio_path", utterances["1272"][0]), "too long")
    one_line_error(run("--audio_db", db, "--register", "eve", "--audio_path", tmp_path / "nope.wav"), "not found")
    one_line_error(run("--audio_db", db, "--recognize", tmp_path / "nope.wav"), "not found")
    one_line_error(run("--audio_db", db, "--register", "eve"), "--audio_path")
    # too short to enrol (0.3 s) or not audio at all
    (tmp_path / "notes.wav").write_text("not audio")
    one_line_error(run("--audio_db", db, "--recognize", tmp_path / "notes.wav"), "cannot decode")
    short = shared_data / "fsdd" / "0_george_1.wav"
    one_line_error(run("--audio_db", db, "--register", "eve", "--audio_path", short), "too short")
    assert not (db / "eve").exists() and not (tmp_path / "x").exists()
    one_line_error(run("--audio_db", db, "--recognize", utterances["1272"][4], "--threshold", "nan"), "finite")

    # several files: a bad one is reported in its place, the others are still recognised
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    out_json = tmp_path / "batch.json"
    batch = run("--audio_db", db, "--recognize", utterances["1272"][4], silent, tmp_path / "nope.wav",
                utterances["2035"][4], "--json_path", out_json)  # fmt: skip
    assert batch.returncode == 1 and "Traceback" not in batch.stderr
    assert batch.stderr.strip().splitlines()[-1] == "error: 2 of 4 files could not be recognised (see above)"
    results = json.loads(out_json.read_text())
    assert [r.get("name") for r in results] == ["1272", None, None, "2035"]
    assert "is silent" in results[1]["error"] and "not found" in results[2]["error"]


def test_interactive_microphone_register_then_recognise(library: Path, tmp_path: Path, shared_data: Path) -> None:
    pytest.importorskip("pyaudio", reason="PyAudio not installed (pip install PyAudio; needs apt portaudio19-dev)")
    from tests.virtual_mic import VirtualMicrophone
    from utils.audio import load_audio

    db = copy_library(library, tmp_path)
    # continuous real speech of a speaker not in the library, looped: any 4 s window is them talking
    speech = np.concatenate([load_audio(p) for p in short_utterances(shared_data, MIC_SPEAKER, 4)])
    stdin = "0\n\nnewcomer\n1\n\n"  # register: Enter, (record), name; recognise: Enter, (record); then EOF
    with VirtualMicrophone(speech, loop=True) as mic:
        result = run("--audio_db", db, "--record_seconds", 4, env=mic.env, stdin=stdin)
    out = ok(result)
    for spk in ENROLLED:
        assert f"Loaded {spk} audio." in out
    assert "0 new recordings embedded" in out
    assert "Registered newcomer: 1 recording." in out
    # a countdown, a live level meter with the time left, and no level warning for normal speech
    assert "Recording in 3..." in out and "Recording in 1..." in out and "s left" in out
    assert re.search(r"Recording \[#+-*\] +-\d+ dBFS", out) and out.count("Done: 4 s recorded.") == 2
    assert "warning: the recording is" not in out
    recognised = [line for line in out.splitlines() if "Recognised: " in line or "Unknown speaker" in line]
    assert len(recognised) == 1 and "Recognised: newcomer, similarity:" in recognised[0], out[-1500:]
    assert len(list((db / "newcomer").glob("*.wav"))) == 1
    # end of input at the prompt: a clean exit (status 0 above), nothing on stderr
    assert out.rstrip().endswith("(q to quit):") and result.stderr == ""


def test_no_microphone_is_one_line_and_exit_1(library: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyaudio", reason="PyAudio not installed (pip install PyAudio; needs apt portaudio19-dev)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "ALSA_", "JACK_"))}
    config = tmp_path / "asound.conf"  # ALSA's only PCM is a card that does not exist: no input device anywhere
    config.write_text("pcm.!default { type hw card 99 }\nctl.!default { type hw card 99 }\n")
    env.update(
        PULSE_SERVER=f"unix:{tmp_path / 'no-such-pulse-socket'}",
        PULSE_RUNTIME_PATH=str(tmp_path / "no-pulse-runtime"),
        JACK_DEFAULT_SERVER="voiceprint-no-such-jack-server",
        JACK_NO_START_SERVER="1",
        ALSA_CONFIG_PATH=str(config),
        HOME=str(tmp_path),
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    result = run("--audio_db", library, env=env, stdin="0\n\n")
    one_line_error(result, "no microphone found", "--register NAME --audio_path FILE", "--recognize FILE")


def test_unknown_message_never_reads_equal_numbers() -> None:
    import infer_recognition
    from utils.speaker_db import Recognition

    close = Recognition(name=None, score=0.7491, runner_up="b", runner_up_score=0.1, best="a", threshold=0.75)
    assert infer_recognition._describe(close) == "Unknown speaker (best: a 0.7491 < threshold 0.7500)"
    far = Recognition(name=None, score=0.2, runner_up="b", runner_up_score=0.1, best="a", threshold=0.75)
    assert infer_recognition._describe(far) == "Unknown speaker (best: a 0.20 < threshold 0.75)"
