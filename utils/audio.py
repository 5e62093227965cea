"""Audio: load any file as 16 kHz mono float32, crop, trim silence, augment.

Everything here works on 1-D numpy float32 waveforms in [-1, 1]. Errors about
user input are raised as `AudioError` with a one-line message that scripts print
as is (no traceback).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from utils.errors import UserError
from utils.fileio import is_utf8

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
MIN_SPEECH_SECONDS = 0.3  # the shortest recording that still carries a voiceprint
MIN_NET_SPEECH_SECONDS = 0.2  # and the least speech in it (silero-vad), so noise and tones never get a verdict
MIN_RATE, MAX_RATE = 1000, 768000  # sample rates load_audio accepts (real audio is 8 kHz .. 384 kHz)


class AudioError(UserError, ValueError):
    """A recording that cannot be used; the message is one line for the user."""


# loading


@contextlib.contextmanager
def quiet_c_stderr() -> Iterator[None]:
    """Point fd 2 at /dev/null (C libraries' chatter: ALSA, libmpg123 seek warnings), then restore it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (closed, or stderr replaced): nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# libsndfile's length (2**63 - 1) for a file whose header leaves it open: a FLAC written to a pipe
UNKNOWN_FRAMES = 2**62


def audio_info(path: str | os.PathLike) -> tuple[int, int]:
    """Return (num_frames, sample_rate) without decoding the file."""
    path = Path(path)
    _check_path(path)
    try:
        info = sf.info(_native_name(path))
    except Exception as exc:  # soundfile raises several types for bad files
        raise AudioError(f"cannot decode audio file {path}: {_short(exc)}") from None
    frames = int(info.frames)
    if frames >= UNKNOWN_FRAMES:
        raise AudioError(_no_length(path))
    return frames, int(info.samplerate)


def _native_name(path: Path) -> str | bytes:
    """The name soundfile opens: a file name that is not UTF-8 (a surrogate in Python) as the bytes on
    disk, which soundfile passes through (it refused the str: "surrogates not allowed")."""
    name = str(path)
    return name if is_utf8(name) else os.fsencode(name)


def within_full_scale(wav: np.ndarray) -> np.ndarray:
    """Float samples far beyond full scale (a float file written at integer scale, +-32768, or a
    x1e20 one) scaled back to a peak of 1: squared in the features they overflowed float32 into NaN
    scores, and the library's 16-bit copy would have clipped them to a square wave. A few overs from
    float processing (peak up to 2) are left as they are."""
    peak = float(np.max(np.abs(wav))) if len(wav) else 0.0
    return (wav / np.float32(peak)).astype(np.float32) if peak > 2.0 else wav


def _no_length(name: str | os.PathLike) -> str:
    """libsndfile reads no FLAC whose header leaves the length open ("Internal psf_fseek() failed"), and
    soundfile would size one array by the 2**63 - 1 frames it reports (all memory, then the OOM killer)."""
    return f"cannot decode audio file {name}: its header gives no length (re-encode it, e.g. as WAV)"


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    start_seconds: float = 0.0,
    max_seconds: float | None = None,
    vad: bool = False,
) -> np.ndarray:
    """Decode WAV/FLAC/OGG/MP3 (any rate, any channel count) to mono float32 at `sample_rate`.

    `start_seconds`/`max_seconds` read only a window of the file, so a one-hour
    recording never has to fit in memory. Non-finite samples are an error
    rather than silently poisoning an embedding.
    """
    path = Path(path)
    _check_path(path)
    try:
        with sf.SoundFile(_native_name(path)) as f:
            source_rate = f.samplerate
            if not MIN_RATE <= source_rate <= MAX_RATE:
                # a header claiming e.g. 1 Hz would be "resampled" into gigabytes (or minutes of filter design)
                raise AudioError(f"audio file {path} has an implausible sample rate of {source_rate} Hz")
            start = int(round(start_seconds * source_rate))
            frames = -1 if max_seconds is None else int(round(max_seconds * source_rate))
            # libmpg123 prints harmless resync chatter after an MP3 seek; hidden in the main thread only
            # (fd 2 is the process's: another thread's real error must not vanish)
            quiet = start and threading.current_thread() is threading.main_thread()
            with quiet_c_stderr() if quiet else contextlib.nullcontext():
                if f.frames >= UNKNOWN_FRAMES:
                    raise AudioError(_no_length(path))
                if start:
                    f.seek(min(start, max(f.frames - 1, 0)) if f.frames > 0 else 0)
                data = f.read(frames=frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"cannot decode audio file {path}: {_short(exc)}") from None
    if data.size == 0:
        raise AudioError(f"audio file {path} has no samples")
    if not np.isfinite(data).all():  # checked before the downmix, which would turn inf - inf into a NaN warning
        raise AudioError(f"audio file {path} contains NaN or infinite samples")
    wav = data.mean(axis=1, dtype=np.float64).astype(np.float32) if data.shape[1] > 1 else data[:, 0]
    wav = within_full_scale(wav)
    wav = resample(wav, source_rate, sample_rate)
    if vad:
        wav = trim_silence(wav, sample_rate)
    return np.ascontiguousarray(wav, dtype=np.float32)


def as_float_audio(wav: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1]; integer PCM (e.g. int16 from a sound card) is scaled, not clipped."""
    wav = np.asarray(wav)
    if np.issubdtype(wav.dtype, np.integer):
        info = np.iinfo(wav.dtype)
        centre, half_range = (info.max + info.min + 1) / 2, (info.max - info.min + 1) / 2
        return ((wav.astype(np.float64) - centre) / half_range).astype(np.float32)
    return wav.astype(np.float32, copy=False)


def to_mono(wav: np.ndarray) -> np.ndarray:
    """Downmix (N,), (N, C) or (C, N) arrays to (N,) float32; channels are the short axis; integer PCM is scaled."""
    wav = as_float_audio(wav)
    if wav.ndim == 1:
        return wav
    if wav.ndim != 2:
        raise AudioError(f"audio array must be 1-D or 2-D, got shape {wav.shape}")
    channel_axis = 1 if wav.shape[1] <= wav.shape[0] else 0
    return wav.mean(axis=channel_axis).astype(np.float32)


def resample(wav: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """High-quality polyphase resampling (scipy), exact for integer rate ratios."""
    if source_rate == target_rate:
        return wav.astype(np.float32, copy=False)
    if source_rate <= 0:
        raise AudioError(f"invalid sample rate {source_rate}")
    from scipy.signal import resample_poly  # lazy: scipy import costs ~0.2 s

    divisor = gcd(int(source_rate), int(target_rate))
    out = resample_poly(wav, target_rate // divisor, source_rate // divisor)
    return out.astype(np.float32)


def _check_path(path: Path) -> None:
    try:
        if not path.exists():
            raise AudioError(f"audio file not found: {path}")
        if path.is_dir():
            raise AudioError(f"expected an audio file but got a directory: {path}")
        if not path.is_file():  # a FIFO or device: reading it could block forever
            raise AudioError(f"expected an audio file but got a pipe or device: {path} (save the audio to a file)")
        if path.stat().st_size == 0:
            raise AudioError(f"audio file is empty (0 bytes): {path}")
    except OSError as exc:  # e.g. a file name too long for the file system, a permission-denied folder
        raise AudioError(f"cannot open audio file {path}: {exc.strerror or exc}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# one preparation for every recording (embedder, library, server)


class AudioTooLongError(AudioError):
    """A recording longer than a caller's limit (the server answers it with 413)."""


def decode_audio_bytes(data: bytes, name: str = "audio", max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode an in-memory WAV/FLAC/OGG/MP3 to (mono float32, its sample rate).

    A recording longer than `max_seconds` raises AudioTooLongError before it is decoded in full, and
    channels are mixed block by block, so memory holds one mono copy whatever the file claims.
    """
    if not data:
        raise AudioError(f"audio file is empty (0 bytes): {name}")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = int(f.samplerate)
            if not MIN_RATE <= rate <= MAX_RATE:
                # a header claiming e.g. 1 Hz would be "resampled" into gigabytes
                raise AudioError(f"audio file {name} has an implausible sample rate of {rate} Hz")
            limit = None if max_seconds is None else int(max_seconds * rate)
            if f.frames >= UNKNOWN_FRAMES:  # the server said "576460752303423.5 s long" to a 2 s file
                raise AudioError(_no_length(name))
            if limit is not None and f.frames > limit:
                raise AudioTooLongError(_too_long(name, f.frames / rate, max_seconds))
            # one frame past the limit tells a too-long file apart when the header's length is wrong
            blocks, total = [], 0
            for block in f.blocks(blocksize=rate, dtype="float32", always_2d=True):
                blocks.append(block.mean(axis=1) if block.shape[1] > 1 else block[:, 0].copy())
                total += len(block)
                if limit is not None and total > limit:
                    break
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises several types for bad data
        # soundfile names the stream by its repr (<_io.BytesIO object at 0x...>): name the upload instead
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", repr(name), _short(exc))
        raise AudioError(f"cannot decode audio file {name}: {reason}") from None
    if limit is not None and total > limit:
        raise AudioTooLongError(_too_long(name, None, max_seconds))
    if total == 0:
        raise AudioError(f"audio file {name} has no samples")
    return np.concatenate(blocks).astype(np.float32, copy=False), rate


def _too_long(name: str, seconds: float | None, max_seconds: float) -> str:
    length = f"{seconds:.1f} s long" if seconds is not None else "too long"
    return f"audio file {name} is {length}; the server accepts at most {max_seconds:g} s per recording (--max_seconds)"


@dataclass(frozen=True)
class Recording:
    wav: np.ndarray  # 16 kHz mono float32
    report: SpeechReport  # net speech seconds, level, clipping, SNR


def prepare_recording(
    source: np.ndarray | bytes | str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    name: str | None = None,
    min_seconds: float = MIN_SPEECH_SECONDS,
    max_seconds: float | None = None,
    min_speech_seconds: float | None = None,
) -> Recording:
    """Any recording -> mono float32 at 16 kHz, finite, checked to carry speech (silero-vad), with its
    SpeechReport.

    `source` is a file path, the bytes of an audio file (an upload), or an array of any channel layout
    and integer or float type at `sample_rate`. `name` labels error messages (default: the path, or
    "audio"). The one place where recordings become model input, so every entry point refuses the same
    things with the same messages.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        wav = load_audio(source)
    else:
        name = name or "audio"
        if isinstance(source, (bytes, bytearray, memoryview)):
            wav, sample_rate = decode_audio_bytes(bytes(source), name, max_seconds)
        else:
            wav = to_mono(source)
        if not np.isfinite(wav).all():
            raise AudioError(f"{name} contains NaN or infinite samples")
        wav = resample(within_full_scale(wav), int(sample_rate), SAMPLE_RATE)
    report = check_speech(wav, SAMPLE_RATE, min_seconds, name, min_speech_seconds)
    return Recording(np.ascontiguousarray(wav, dtype=np.float32), report)


def prepare_audio(
    source: np.ndarray | bytes | str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    name: str | None = None,
    min_seconds: float = MIN_SPEECH_SECONDS,
    max_seconds: float | None = None,
) -> np.ndarray:
    """prepare_recording without the report: the checked 16 kHz waveform."""
    return prepare_recording(source, sample_rate, name, min_seconds, max_seconds).wav


# checks


def format_short_seconds(seconds: float) -> str:
    """Milliseconds, rounded down, so a clip just under a limit never reads as the limit (0.2996 -> 0.299)."""
    return f"{int(seconds * 1000) / 1000:.3f}"


# speech detection (silero-vad) and recording quality


VAD_WINDOW = 512  # samples per silero-vad step at 16 kHz (32 ms)
VAD_THRESHOLD = 0.5  # speech probability above which a window is speech (silero-vad's default)
_vad_model: Any = None
_vad_lock = threading.Lock()  # loads the model once; running it needs no lock (it keeps no state between calls)


def _load_vad() -> Any:
    global _vad_model
    with _vad_lock:
        if _vad_model is None:
            try:
                from silero_vad import load_silero_vad
            except ImportError:
                raise AudioError("speech detection needs the silero-vad package: pip install silero-vad") from None
            # the package's "sequence" ONNX model: the same per-window probabilities as its streaming model,
            # but the recurrent state is carried inside one ONNX Runtime call per 16 s block instead of a
            # Python loop of one call per 32 ms window (1.7x faster here, and exact, unlike cutting the
            # recording into batched streams)
            with warnings.catch_warnings(), quiet_c_stderr():  # ONNX Runtime's notes on unused initialisers
                warnings.simplefilter("ignore", DeprecationWarning)
                _vad_model = load_silero_vad(sequence=True)
    return _vad_model


def speech_probabilities(wav: np.ndarray) -> np.ndarray:
    """silero-vad's speech probability of every 32 ms window of 16 kHz audio, in one pass."""
    if len(wav) == 0:
        return np.zeros(0, dtype=np.float32)
    # the detector is level-sensitive: a quiet but clean recording is brought to a normal level first
    # (up to +60 dB; digital silence stays silence), so "no speech" never just means "quiet"
    loudness = float(np.percentile(np.abs(wav), 99.9))
    wav = wav * min(0.5 / max(loudness, 1e-9), 1000.0) if loudness > 0 else wav
    model = _load_vad()
    return np.asarray(model.audio_forward(np.ascontiguousarray(wav, dtype=np.float32), SAMPLE_RATE), dtype=np.float32)


@dataclass(frozen=True)
class SpeechReport:
    """What a recording holds: its length, net speech (silero-vad), level, clipping and an SNR estimate."""

    seconds: float
    speech_seconds: float
    peak: float
    speech_level_dbfs: float  # RMS level of the speech windows
    clipped_fraction: float  # share of samples at full scale
    snr_db: float | None  # speech windows' power over the other windows' power (None: no pause to measure)

    def problems(self) -> list[str]:
        """Short warnings a user can act on (empty when the recording is fine)."""
        found = []
        if self.clipped_fraction > 0.001:
            found.append(f"clipped ({self.clipped_fraction:.1%} of samples at full scale): record further away")
        if self.speech_level_dbfs < -45:
            found.append(f"very quiet (speech at {self.speech_level_dbfs:.0f} dBFS): speak closer or raise the gain")
        if self.snr_db is not None and self.snr_db < 10:
            found.append(f"noisy (about {self.snr_db:.0f} dB SNR): record somewhere quieter")
        return found

    def to_dict(self) -> dict[str, float | None]:
        return {k: (None if v is None else round(float(v), 3)) for k, v in self.__dict__.items()}

    @staticmethod
    def combine(reports: Sequence[SpeechReport]) -> SpeechReport:
        """One report for consecutive pieces of a recording (a long file embedded segment by segment)."""
        seconds = sum(r.seconds for r in reports)
        speech = sum(r.speech_seconds for r in reports)
        power = sum(10 ** (r.speech_level_dbfs / 10) * r.speech_seconds for r in reports) / max(speech, 1e-9)
        with_snr = [r for r in reports if r.snr_db is not None]
        snr = sum(r.snr_db * r.seconds for r in with_snr) / sum(r.seconds for r in with_snr) if with_snr else None
        return SpeechReport(
            seconds=seconds,
            speech_seconds=speech,
            peak=max(r.peak for r in reports),
            speech_level_dbfs=10 * math.log10(max(power, 1e-12)),
            clipped_fraction=sum(r.clipped_fraction * r.seconds for r in reports) / max(seconds, 1e-9),
            snr_db=snr,
        )


def analyse_speech(wav: np.ndarray) -> SpeechReport:
    """Speech and quality measures of 16 kHz mono audio."""
    probs = speech_probabilities(wav)
    is_speech = probs >= VAD_THRESHOLD
    usable = len(wav) // VAD_WINDOW * VAD_WINDOW
    power = np.square(wav[:usable].astype(np.float64)).reshape(-1, VAD_WINDOW).mean(axis=1) if usable else np.zeros(0)
    speech_mask = is_speech[: len(power)]
    speech_power = float(power[speech_mask].mean()) if speech_mask.any() else 0.0
    snr = None
    if speech_mask.any() and len(power) >= 10:
        # the noise floor: the quietest tenth of the windows (pauses, or the quietest bits of speech when there is
        # no pause, which errs towards a lower SNR only for recordings that are all speech)
        noise = float(np.percentile(power, 10))
        snr = 10 * math.log10(max(speech_power - noise, 1e-12) / max(noise, 1e-12))
    peak = float(np.max(np.abs(wav))) if len(wav) else 0.0
    return SpeechReport(
        seconds=len(wav) / SAMPLE_RATE,
        speech_seconds=float(is_speech.sum()) * VAD_WINDOW / SAMPLE_RATE,
        peak=peak,
        speech_level_dbfs=10 * math.log10(max(speech_power, 1e-12)),
        clipped_fraction=float(np.mean(np.abs(wav) >= 0.999)) if len(wav) else 0.0,
        snr_db=snr,
    )


def check_speech(
    wav: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float = MIN_SPEECH_SECONDS,
    name: str = "audio",
    min_speech_seconds: float | None = None,
) -> SpeechReport | None:
    """Raise AudioError when a recording cannot carry a voiceprint: too short, silent, or (16 kHz audio)
    without enough speech by silero-vad; noise, tones, hum and DC offsets hold none. Returns the
    recording's SpeechReport (None for other rates, which get only the length and silence checks)."""
    seconds = len(wav) / sample_rate
    if seconds < min_seconds:
        raise AudioError(f"{name} is too short: {format_short_seconds(seconds)} s (need at least {min_seconds:g} s)")
    if float(np.max(np.abs(wav))) < 1e-4:
        raise AudioError(f"{name} is silent (all samples are near zero)")
    if sample_rate != SAMPLE_RATE:
        return None
    report = analyse_speech(wav)
    need = min(min_seconds, MIN_NET_SPEECH_SECONDS) if min_speech_seconds is None else min_speech_seconds
    return require_speech(report, need, name)


def require_speech(report: SpeechReport, need: float, name: str = "audio") -> SpeechReport:
    """The report, or AudioError when the recording it describes holds no speech or less than `need` seconds
    (also for a Recording checked earlier, held to a stricter bar now)."""
    if report.speech_seconds == 0:
        raise AudioError(f"no speech detected in {name} ({format_short_seconds(report.seconds)} s of audio)")
    if report.speech_seconds < need:
        raise AudioError(
            f"too little speech in {name}: {format_short_seconds(report.speech_seconds)} s of "
            f"{format_short_seconds(report.seconds)} s (need at least {need:g} s)"
        )
    return report


# cropping and silence


def crop_or_pad(wav: np.ndarray, num_samples: int, offset: int = 0) -> np.ndarray:
    """A window of exactly `num_samples`; short recordings are tiled (repeated), not zero-padded."""
    if len(wav) == 0:
        raise AudioError("cannot crop an empty recording")
    if len(wav) < num_samples:
        reps = -(-num_samples // len(wav))
        wav = np.tile(wav, reps)
        offset = 0
    offset = int(np.clip(offset, 0, len(wav) - num_samples))
    return wav[offset : offset + num_samples]


def random_crop(wav: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random window of `num_samples` (tiled when the recording is shorter)."""
    high = max(len(wav) - num_samples, 0)
    return crop_or_pad(wav, num_samples, int(rng.integers(0, high + 1)))


def trim_silence(
    wav: np.ndarray, sample_rate: int = SAMPLE_RATE, top_db: float = 40.0, frame_ms: float = 25.0
) -> np.ndarray:
    """Energy VAD: drop frames more than `top_db` below the loudest frame, keep the rest in order.

    Returns the input unchanged when it would remove everything (a short or
    quiet clip is better embedded whole than not at all).
    """
    frame = max(int(sample_rate * frame_ms / 1000), 1)
    usable = len(wav) // frame * frame
    if usable == 0:
        return wav
    frames = wav[:usable].reshape(-1, frame)
    energy_db = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    keep = energy_db > energy_db.max() - top_db
    if keep.sum() == 0 or keep.all():
        return wav
    kept = frames[keep].reshape(-1)
    return kept if len(kept) >= sample_rate * 0.1 else wav


# augmentation


def speed_perturb(wav: np.ndarray, factor: float) -> np.ndarray:
    """Change speed and pitch together by `factor` (0.9 slower, 1.1 faster) via resampling."""
    if factor == 1.0:
        return wav
    from scipy.signal import resample_poly

    # playing N samples as if recorded at rate*factor: resample by 1/factor
    up, down = {0.9: (10, 9), 1.1: (10, 11)}.get(round(factor, 3), (1000, int(round(1000 * factor))))
    return resample_poly(wav, up, down).astype(np.float32)


def list_audio_files(folder: str | os.PathLike) -> list[Path]:
    """All audio files below `folder`, sorted, for noise and RIR collections."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"not a directory: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def synthetic_rir(
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    rt60_range: tuple[float, float] = (0.2, 0.8),
    drr_db_range: tuple[float, float] = (0.0, 12.0),
) -> np.ndarray:
    """A room impulse response: the direct path (sample 0), 1-5 ms of silence, then an exponentially
    decaying noise tail scaled to a direct-to-reverberant ratio typical of rooms (0-12 dB). An unscaled
    unit-variance tail would carry ~25 dB more energy than the direct path: speech lost in echo."""
    rt60 = rng.uniform(*rt60_range)
    n = int(sample_rate * rt60)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    drr_db = rng.uniform(*drr_db_range)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / (np.sum(tail**2) + 1e-12))
    delay = int(rng.uniform(0.001, 0.005) * sample_rate)
    rir = np.zeros(delay + n, dtype=np.float64)
    rir[0] = 1.0
    rir[delay:] += tail
    return rir.astype(np.float32)


class Augmenter:
    """Waveform augmentation for training, each part switchable.

    gain: random level in dB; noise: additive noise at a random SNR (files from
    `noise_dir`, or generated coloured noise); reverb: convolution with a room
    impulse response (files from `rir_dir`, or a synthetic exponentially
    decaying one). All randomness comes from the `rng` passed in, so a resumed
    run replays exactly the same augmentation.
    """

    def __init__(
        self,
        gain_db: float = 6.0,
        noise_prob: float = 0.0,
        snr_range: Sequence[float] = (5.0, 20.0),
        noise_dir: str | None = None,
        reverb_prob: float = 0.0,
        rir_dir: str | None = None,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self.gain_db = gain_db
        self.noise_prob = noise_prob
        self.snr_range = tuple(snr_range)
        self.reverb_prob = reverb_prob
        self.sample_rate = sample_rate
        self.noise_files = list_audio_files(noise_dir) if noise_dir else []
        self.rir_files = list_audio_files(rir_dir) if rir_dir else []
        if noise_dir and not self.noise_files:
            raise AudioError(f"no audio files in --noise_dir {noise_dir}")
        if rir_dir and not self.rir_files:
            raise AudioError(f"no audio files in --rir_dir {rir_dir}")

    @property
    def enabled(self) -> bool:
        return self.gain_db > 0 or self.noise_prob > 0 or self.reverb_prob > 0

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.reverb_prob > 0 and rng.random() < self.reverb_prob:
            wav = self._reverb(wav, rng)
        if self.noise_prob > 0 and rng.random() < self.noise_prob:
            wav = self._add_noise(wav, rng)
        if self.gain_db > 0:
            wav = wav * np.float32(10.0 ** (rng.uniform(-self.gain_db, self.gain_db) / 20.0))
        return wav.astype(np.float32, copy=False)

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.noise_files:
            path = self.noise_files[int(rng.integers(len(self.noise_files)))]
            try:
                noise = load_audio(path, self.sample_rate)
                return random_crop(noise, n, rng)
            except AudioError:
                pass  # a broken noise file must not stop training; fall back to generated noise
        # coloured noise: white noise shaped by 1/f^alpha, alpha in [0, 2] (white .. brown)
        alpha = rng.uniform(0.0, 2.0)
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n)
        freqs[0] = freqs[1] if n > 1 else 1.0
        noise = np.fft.irfft(spectrum / freqs ** (alpha / 2.0), n)
        return noise.astype(np.float32)

    def _add_noise(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = self._noise(len(wav), rng)
        speech_power = float(np.mean(wav**2)) + 1e-10
        noise_power = float(np.mean(noise**2)) + 1e-10
        snr_db = rng.uniform(*self.snr_range)
        scale = np.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))
        return (wav + scale * noise).astype(np.float32)

    def _rir(self, rng: np.random.Generator) -> np.ndarray:
        if self.rir_files:
            path = self.rir_files[int(rng.integers(len(self.rir_files)))]
            try:
                rir = load_audio(path, self.sample_rate)
                return rir[: self.sample_rate]  # first second holds the useful tail
            except AudioError:
                pass
        return synthetic_rir(rng, self.sample_rate)

    def _reverb(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy.signal import fftconvolve

        rir = self._rir(rng)
        rir = rir / (np.sqrt(np.sum(rir**2)) + 1e-10)
        peak = int(np.argmax(np.abs(rir)))
        out = fftconvolve(wav, rir)[peak : peak + len(wav)]
        # keep the level of the dry signal so gain augmentation stays meaningful
        return (out * (np.sqrt(np.mean(wav**2)) / (np.sqrt(np.mean(out**2)) + 1e-10))).astype(np.float32)
