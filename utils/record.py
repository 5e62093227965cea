"""Microphone recording with PyAudio, for the interactive modes of the inference scripts.

Import this module lazily (inside the function that records): PyAudio and a
sound server are optional, and everything else in the toolkit works on files.
Every failure (PyAudio missing, no input device, a device that cannot be opened
or delivers nothing) is a `MicrophoneError` with a one-line message that points
the user to file mode.

PortAudio probes every ALSA and JACK device when it starts and the C libraries
print what they do not find ("ALSA lib confmisc.c ... cannot find card '0'",
"jack server is not running") straight to file descriptor 2. That is noise for
the user, so fd 2 goes to /dev/null around start-up, probing, opening and
closing. (This is process-wide: another thread writing to stderr in those
milliseconds is silenced too.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from utils.audio import quiet_c_stderr
from utils.errors import UserError

SAMPLE_RATE = 16000
FILE_MODE_HINT = "use --register NAME --audio_path FILE or --recognize FILE instead"
NO_DEVICE_MESSAGE = f"no microphone found (no audio input device); {FILE_MODE_HINT}"
FRAMES_PER_BUFFER = 1024
STALL_SECONDS = 5.0  # a device that delivers nothing for this long past the expected end is broken
QUIET_PEAK = 10 ** (-40 / 20)  # a speech recording peaking below -40 dBFS is too quiet to trust
CLIP_LEVEL = 0.999
CLIPPED_SHARE = 0.001  # more than 0.1% of samples at full scale: audibly clipped


class MicrophoneError(UserError, RuntimeError):
    """Recording is impossible here; the message is one line for the user."""


def _import_pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError:
        raise MicrophoneError(
            f"PyAudio is not installed (pip install PyAudio, needs apt portaudio19-dev); {FILE_MODE_HINT}"
        ) from None
    return pyaudio


def _open_pyaudio(pyaudio: Any) -> Any:
    try:
        with quiet_c_stderr():
            return pyaudio.PyAudio()
    except OSError as exc:  # Pa_Initialize failed: no usable host audio system at all
        raise MicrophoneError(f"cannot start the audio system ({_short(exc)}); {FILE_MODE_HINT}") from None


def _default_input(pa: Any) -> dict[str, Any] | None:
    """PortAudio's default input device, or None when there is none."""
    try:
        with quiet_c_stderr():
            info = pa.get_default_input_device_info()
    except (OSError, ValueError):
        return None
    return info if int(info.get("maxInputChannels", 0)) > 0 else None


def _terminate(pa: Any) -> None:
    with quiet_c_stderr():
        pa.terminate()


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def has_input_device() -> bool:
    """True when PyAudio is installed and there is a default input device."""
    try:
        pyaudio = _import_pyaudio()
        pa = _open_pyaudio(pyaudio)
    except MicrophoneError:
        return False
    try:
        return _default_input(pa) is not None
    finally:
        _terminate(pa)


def level_problem(wav: np.ndarray) -> str | None:
    """A recording too quiet or clipped to trust, in words a user can act on; None when the level is fine."""
    if len(wav) == 0:
        return None
    peak = float(np.max(np.abs(wav)))
    if peak < QUIET_PEAK:
        return f"too quiet (peak {20 * np.log10(max(peak, 1e-9)):.0f} dBFS): speak up, move closer or raise the input volume"
    clipped = float(np.mean(np.abs(wav) >= CLIP_LEVEL))
    if clipped > CLIPPED_SHARE:
        return f"clipped ({clipped:.1%} of samples at full scale): move back or lower the input volume"
    return None


def level_meter(peak: float, width: int = 20) -> str:
    """A text meter of a block's peak level on a -60..0 dBFS scale: '[#######-------------]  -27 dBFS'."""
    db = 20 * np.log10(max(peak, 1e-6))
    filled = int(round(width * min(max((db + 60) / 60, 0.0), 1.0)))
    return f"[{'#' * filled}{'-' * (width - filled)}] {db:4.0f} dBFS"


def record(
    seconds: float, sample_rate: int = SAMPLE_RATE, on_level: Callable[[float, float], None] | None = None
) -> np.ndarray:
    """Record `seconds` from the default input device; float32 mono in [-1, 1] at `sample_rate`.

    Asks the device for `sample_rate` mono first; a device that only offers its own
    rate or stereo is recorded that way and converted here. `on_level(elapsed_seconds, peak)`
    is called for every block as it arrives (from PortAudio's thread), for a live meter.
    """
    if not seconds > 0:
        raise MicrophoneError(f"recording length must be positive, got {seconds} s")
    pyaudio = _import_pyaudio()
    pa = _open_pyaudio(pyaudio)
    try:
        info = _default_input(pa)
        if info is None:
            raise MicrophoneError(NO_DEVICE_MESSAGE)
        return _record_from(pa, pyaudio, info, float(seconds), int(sample_rate), on_level)
    finally:
        _terminate(pa)


def _open_input(
    pa: Any, pyaudio: Any, info: dict[str, Any], sample_rate: int, callback: Any, on_try: Any = None
) -> tuple[Any, int, int]:
    """Open the input device as 16-bit audio: `sample_rate` mono first, then the device's own rate, then its
    own channel count; (stream, rate, channels) of the first that opens. `on_try(rate)` runs before each try."""
    device_rate = int(round(float(info.get("defaultSampleRate") or sample_rate)))
    device_channels = max(1, min(int(info["maxInputChannels"]), 2))
    last_error: BaseException | None = None
    for rate, channels in dict.fromkeys([(sample_rate, 1), (device_rate, 1), (device_rate, device_channels)]):
        if on_try is not None:
            on_try(rate)
        try:
            with quiet_c_stderr():
                stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=channels,
                    rate=rate,
                    input=True,
                    input_device_index=int(info["index"]),
                    frames_per_buffer=FRAMES_PER_BUFFER,
                    stream_callback=callback,
                )
            return stream, rate, channels
        except (OSError, ValueError) as exc:  # this rate/channel count is not offered: try the next
            last_error = exc
    name = info.get("name", "default")
    raise MicrophoneError(f"cannot open microphone '{name}' ({_short(last_error)}); {FILE_MODE_HINT}")


def _close(stream: Any) -> None:
    with quiet_c_stderr():
        try:
            stream.stop_stream()
        except OSError:
            pass  # already stopped by paComplete
        stream.close()


def _to_mono(data: bytes, channels: int) -> np.ndarray:
    """16-bit interleaved PCM -> float32 mono in [-1, 1)."""
    pcm = np.frombuffer(data, dtype="<i2")
    pcm = pcm[: len(pcm) // channels * channels].reshape(-1, channels)
    return (pcm.astype(np.float32) / 32768.0).mean(axis=1)


def _record_from(
    pa: Any, pyaudio: Any, info: dict[str, Any], seconds: float, sample_rate: int, on_level: Any = None
) -> np.ndarray:
    chunks: list[bytes] = []
    done = threading.Event()
    state = {"frames": 0, "needed": 0}

    def callback(in_data: bytes | None, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
        if in_data:
            chunks.append(in_data)
        state["frames"] += frame_count
        if on_level is not None and in_data:
            peak = float(np.max(np.abs(np.frombuffer(in_data, dtype="<i2")))) / 32768.0
            on_level(min(state["frames"] / state["rate"], seconds), peak)
        if state["frames"] >= state["needed"]:
            done.set()
            return None, pyaudio.paComplete
        return None, pyaudio.paContinue

    def on_try(rate: int) -> None:
        state["needed"], state["rate"] = int(round(seconds * rate)), rate

    stream, rate, channels = _open_input(pa, pyaudio, info, sample_rate, callback, on_try)
    try:
        stream.start_stream()
        if not done.wait(seconds + STALL_SECONDS):
            raise MicrophoneError(f"the microphone delivered no audio for {seconds:g} s; {FILE_MODE_HINT}")
    finally:
        _close(stream)

    wav = _to_mono(b"".join(chunks), channels)[: state["needed"]]
    if rate != sample_rate:
        from utils.audio import resample

        wav = resample(wav, rate, sample_rate)
    return np.ascontiguousarray(np.clip(wav, -1.0, 1.0), dtype=np.float32)


def stream(seconds: float | None = None, sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Blocks of live audio from the default input device as they arrive (float32 mono at `sample_rate`,
    about 64 ms each), for `seconds` (None: until the caller stops iterating). The device is closed when
    the generator ends or is closed (Ctrl-C included)."""
    import queue

    pyaudio = _import_pyaudio()
    pa = _open_pyaudio(pyaudio)
    blocks: queue.Queue = queue.Queue()
    stream_ = None
    try:
        info = _default_input(pa)
        if info is None:
            raise MicrophoneError(NO_DEVICE_MESSAGE)

        def callback(in_data: bytes | None, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
            blocks.put(in_data or b"")
            return None, pyaudio.paContinue

        stream_, rate, channels = _open_input(pa, pyaudio, info, sample_rate, callback)
        stream_.start_stream()
        delivered = 0
        while seconds is None or delivered < seconds * sample_rate:
            try:
                data = blocks.get(timeout=STALL_SECONDS)
            except queue.Empty:
                raise MicrophoneError(f"the microphone delivered no audio for {STALL_SECONDS:g} s") from None
            wav = _to_mono(data, channels)
            if rate != sample_rate:
                from utils.audio import resample

                wav = resample(wav, rate, sample_rate)
            if seconds is not None:
                wav = wav[: int(seconds * sample_rate) - delivered]
            delivered += len(wav)
            yield np.ascontiguousarray(wav, dtype=np.float32)
    finally:
        if stream_ is not None:
            _close(stream_)
        _terminate(pa)
