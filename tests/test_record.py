"""utils.record against a real sound stack: PyAudio -> PortAudio -> ALSA -> pulse plugin -> a PulseAudio daemon.

No mocks. The microphone is tests/virtual_mic.py (a private PulseAudio daemon whose
default source plays real LibriSpeech speech); the "no microphone" cases run in a
child process whose environment points PulseAudio, ALSA and JACK at nothing, so
the check that no ALSA chatter reaches stderr looks at the real fd 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.virtual_mic import VirtualMicrophone
from utils.record import MicrophoneError, has_input_device, record

try:
    import pyaudio  # noqa: F401

    HAVE_PYAUDIO = True
except ImportError:
    HAVE_PYAUDIO = False
requires_pyaudio = pytest.mark.skipif(
    not HAVE_PYAUDIO, reason="PyAudio not installed (pip install PyAudio; needs apt portaudio19-dev)"
)

ROOT = Path(__file__).resolve().parents[1]
SPEECH = "librispeech/dev-clean/84/121123/84-121123-0003.mp3"  # 6.8 s, longer than any recording below


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> np.ndarray:
    from utils.audio import load_audio

    return load_audio(shared_data / SPEECH)


def best_correlation(source: np.ndarray, recorded: np.ndarray) -> tuple[float, int]:
    """Highest normalised correlation of `recorded` with any window of `source` (zero-padded), and its lag."""
    n = len(recorded)
    padded = np.concatenate([np.zeros(n), source.astype(np.float64), np.zeros(n)])
    size = 1 << int(np.ceil(np.log2(len(padded) + n)))
    dots = np.fft.irfft(np.fft.rfft(padded, size) * np.conj(np.fft.rfft(recorded.astype(np.float64), size)), size)
    dots = dots[: len(padded) - n + 1]
    energy = np.concatenate([[0.0], np.cumsum(padded**2)])
    window_norm = np.sqrt(np.maximum(energy[n:] - energy[:-n], 1e-12))
    score = dots / (window_norm * np.linalg.norm(recorded) + 1e-12)
    lag = int(np.argmax(score))
    return float(score[lag]), lag - n


@requires_pyaudio
def test_records_real_speech_from_default_input(speech: np.ndarray, capfd: pytest.CaptureFixture[str]) -> None:
    with VirtualMicrophone(speech):
        assert has_input_device()
        recorded = record(3.0)
    assert recorded.dtype == np.float32 and recorded.shape == (48000,)
    assert np.abs(recorded).max() <= 1.0
    rms = float(np.sqrt(np.mean(recorded**2)))
    assert rms > 0.01, f"recording is (near) silent: rms {rms:.5f}"
    score, lag = best_correlation(speech, recorded)
    assert score > 0.9, f"recording does not match the speech fed to the microphone: best correlation {score:.3f}"
    assert 0 <= lag < len(speech) - len(recorded) // 2, f"implausible lag {lag}"
    # level is preserved (16-bit path, no gain stage): same RMS as the matching stretch of source
    segment = speech[max(lag, 0) : max(lag, 0) + len(recorded)]
    assert rms == pytest.approx(float(np.sqrt(np.mean(segment**2))), rel=0.2)
    # PortAudio's ALSA/JACK probing chatter never reaches the terminal
    assert capfd.readouterr().err == ""


@requires_pyaudio
def test_resampled_rate_and_looping(speech: np.ndarray) -> None:
    # an 8 kHz request from the 16 kHz mic; a short clip looped keeps the mic talking
    clip = speech[:16000]
    with VirtualMicrophone(clip, loop=True):
        recorded = record(1.5, sample_rate=8000)
    assert recorded.dtype == np.float32 and recorded.shape == (12000,)
    from utils.audio import resample

    score, _ = best_correlation(resample(np.tile(clip, 3), 16000, 8000), recorded)
    assert score > 0.9


def test_rejects_non_positive_length() -> None:
    for seconds in (0, -1.0, float("nan")):
        with pytest.raises(MicrophoneError, match="must be positive"):
            record(seconds)


NO_DEVICE_SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
{prelude}
from utils.record import MicrophoneError, has_input_device, record
print("has_input_device", has_input_device())
try:
    record(1.0)
except MicrophoneError as exc:
    print("error", exc)
else:
    print("recorded without a microphone")
os.write(2, b"stderr restored\\n")
"""


def run_without_microphone(tmp_path: Path, prelude: str = "", alsa_config: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "ALSA_", "JACK_"))}
    env.update(
        PULSE_SERVER=f"unix:{tmp_path / 'no-such-pulse-socket'}",
        PULSE_RUNTIME_PATH=str(tmp_path / "no-pulse-runtime"),
        JACK_DEFAULT_SERVER="voiceprint-no-such-jack-server",
        JACK_NO_START_SERVER="1",
        HOME=str(tmp_path),
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    if alsa_config:
        # an ALSA configuration whose only PCM is a card that does not exist: no device even on a machine
        # with sound cards (a file with no PCM at all makes PortAudio 19.6 abort on an assertion)
        config = tmp_path / "asound.conf"
        config.write_text("pcm.!default { type hw card 99 }\nctl.!default { type hw card 99 }\n")
        env["ALSA_CONFIG_PATH"] = str(config)
    script = NO_DEVICE_SCRIPT.format(root=str(ROOT), prelude=prelude)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


@requires_pyaudio
@pytest.mark.parametrize("alsa_config", [False, True], ids=["no-pulse-server", "no-alsa-devices"])
def test_no_microphone_is_one_line_error_and_quiet(tmp_path: Path, alsa_config: bool) -> None:
    if not alsa_config and Path("/dev/snd").exists():
        pytest.skip("this machine has sound cards; only the empty-ALSA-config case is reliable here")
    result = run_without_microphone(tmp_path, alsa_config=alsa_config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "has_input_device False"
    assert len(lines) == 2 and lines[1].startswith("error "), result.stdout
    assert "no microphone found" in lines[1] and "--audio_path FILE" in lines[1] and "--recognize FILE" in lines[1]
    # nothing from ALSA/JACK/PortAudio, and fd 2 works again afterwards
    assert result.stderr == "stderr restored\n"


def test_missing_pyaudio_is_one_line_error(tmp_path: Path) -> None:
    # sys.modules[name] = None makes `import pyaudio` fail exactly as when it is not installed
    result = run_without_microphone(tmp_path, prelude="sys.modules['pyaudio'] = None")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "has_input_device False"
    assert len(lines) == 2 and "PyAudio is not installed" in lines[1] and "--audio_path FILE" in lines[1]
    assert result.stderr == "stderr restored\n"


def test_level_warnings_name_what_to_do() -> None:
    from utils.record import level_meter, level_problem

    t = np.arange(16000) / 16000
    speech_like = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    assert level_problem(speech_like) is None
    quiet = level_problem(speech_like * 0.01)  # peak 0.003: -50 dBFS
    assert quiet is not None and quiet.startswith("too quiet (peak -50 dBFS)") and "move closer" in quiet
    clipped = level_problem(np.clip(speech_like * 10, -1, 1))
    assert clipped is not None and clipped.startswith("clipped (") and "lower the input volume" in clipped
    assert level_problem(np.zeros(0, dtype=np.float32)) is None
    assert level_meter(1.0) == "[####################]    0 dBFS"
    assert level_meter(10 ** (-30 / 20)) == "[##########----------]  -30 dBFS"
    assert level_meter(0.0).startswith("[--------------------]")
