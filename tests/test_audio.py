"""Audio loading, resampling, cropping, VAD and augmentation, on real speech and synthetic signals."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils.audio import (
    AudioError,
    AudioTooLongError,
    Augmenter,
    audio_info,
    crop_or_pad,
    load_audio,
    prepare_audio,
    random_crop,
    resample,
    speed_perturb,
    trim_silence,
)


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "FLOAT"), ("WAV", "PCM_U8"),
                                         ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])  # fmt: skip
def test_formats_rates_and_channels(tmp_path: Path, fmt: str, subtype: str):
    rate = 44100
    stereo = np.stack([tone(1.0, rate), tone(1.0, rate)], axis=1)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, stereo, rate, format=fmt, subtype=subtype)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - 16000) < 1200  # MP3/OGG add a little padding
    spectrum = np.abs(np.fft.rfft(wav[2000:14000]))
    peak_hz = np.argmax(spectrum) * 16000 / 12000
    assert abs(peak_hz - 440) < 5


def test_real_speech_every_shared_format(shared_data: Path):
    flac = next((shared_data / "librispeech" / "train-clean-100").glob("*.flac"))
    mp3 = next((shared_data / "librispeech" / "dev-clean").rglob("*.mp3"))
    digits = next((shared_data / "fsdd").glob("*.wav"))
    for path in (flac, mp3, digits):
        wav = load_audio(path)
        frames, rate = audio_info(path)
        assert abs(len(wav) - frames * 16000 / rate) <= 2
        assert 0.01 < np.abs(wav).max() <= 1.0


def test_window_read_matches_full_read(shared_data: Path):
    flac = sorted((shared_data / "librispeech" / "train-clean-100").glob("*.flac"))[0]
    full = load_audio(flac)
    part = load_audio(flac, start_seconds=2.0, max_seconds=1.5)
    np.testing.assert_allclose(part, full[32000 : 32000 + 24000], atol=1e-6)


def test_six_channels_are_downmixed(tmp_path: Path):
    data = np.tile(tone(0.5, 16000)[:, None], (1, 6))
    sf.write(tmp_path / "six.wav", data, 16000)
    np.testing.assert_allclose(load_audio(tmp_path / "six.wav"), data[:, 0], atol=1e-4)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(2000)), "cannot decode"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path: Path, make, message: str):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as info:
        load_audio(path)
    assert "\n" not in str(info.value)


def test_non_finite_samples_are_refused(tmp_path: Path):
    data = tone(0.5, 16000)
    data[100] = np.nan
    sf.write(tmp_path / "nan.wav", data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_resample_preserves_duration_and_pitch():
    out = resample(tone(1.0, 8000, 300.0), 8000, 16000)
    assert len(out) == 16000
    assert abs(np.argmax(np.abs(np.fft.rfft(out))) - 300) <= 1


def test_crop_tiles_short_recordings_and_is_random():
    short = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(crop_or_pad(short, 25)[:20], np.tile(short, 2))
    long = np.arange(1000, dtype=np.float32)
    starts = {random_crop(long, 100, np.random.default_rng(s))[0] for s in range(20)}
    assert len(starts) > 10


def test_trim_silence_removes_leading_and_trailing_silence():
    speech = tone(1.0, 16000)
    wav = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(8000, np.float32)])
    trimmed = trim_silence(wav)
    assert 15000 < len(trimmed) <= 16400
    assert trim_silence(np.zeros(16000, np.float32)).shape == (16000,)  # nothing to keep: unchanged


def test_speed_perturb_changes_length():
    wav = tone(1.0, 16000)
    assert abs(len(speed_perturb(wav, 0.9)) - 16000 / 0.9) < 3
    assert abs(len(speed_perturb(wav, 1.1)) - 16000 / 1.1) < 3


def test_augmenter_is_deterministic_and_keeps_length(tmp_path: Path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    sf.write(noise_dir / "n.wav", np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    augmenter = Augmenter(noise_prob=1.0, reverb_prob=1.0, noise_dir=str(noise_dir), snr_range=(5, 5))
    wav = tone(1.0, 16000)
    a = augmenter(wav, np.random.default_rng(7))
    b = augmenter(wav, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == wav.shape and np.isfinite(a).all()
    assert not np.allclose(a, wav)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioError, match="no audio files"):
        Augmenter(rir_dir=str(tmp_path / "empty"))
    with pytest.raises(AudioError, match="not a directory"):
        Augmenter(noise_dir=str(tmp_path / "missing"))


def test_synthetic_rir_is_a_room_not_an_echo_chamber() -> None:
    from utils.audio import synthetic_rir

    rng = np.random.default_rng(0)
    for _ in range(50):
        rir = synthetic_rir(rng)
        assert int(np.argmax(np.abs(rir))) == 0  # the direct path comes first and is the strongest
        drr_db = 10 * np.log10(rir[0] ** 2 / np.sum(rir[1:] ** 2))
        assert -0.01 <= drr_db <= 12.01
    # reverberant speech still resembles the dry speech (a -27 dB direct path made them uncorrelated)
    t = np.arange(16000) / 16000
    dry = (np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    augmenter = Augmenter(noise_prob=0.0, reverb_prob=1.0, gain_db=0.0)
    wet = augmenter._reverb(dry, np.random.default_rng(1))
    assert wet.shape == dry.shape and np.corrcoef(dry, wet)[0, 1] > 0.5


# uploads: prepare_audio on the bytes of a file (what the server does)


def test_prepare_audio_from_upload_bytes(shared_data: Path) -> None:
    mp3 = next((shared_data / "librispeech" / "dev-clean" / "777").glob("*/*.mp3"))
    wav = prepare_audio(mp3.read_bytes(), name="x.mp3")
    assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) == sf.info(str(mp3)).frames
    # 8 kHz stereo FLAC and OGG come back as 16 kHz mono
    stereo = np.stack([wav[:16000:2], wav[:16000:2]], axis=1)
    for fmt, subtype in (("FLAC", "PCM_16"), ("OGG", "VORBIS")):
        out = prepare_audio(_wav_bytes(stereo, 8000, fmt, subtype), name=f"x.{fmt.lower()}")
        assert out.ndim == 1 and abs(len(out) - 16000) <= 1
    with pytest.raises(AudioError, match=r"cannot decode audio file junk.bin: Error opening 'junk.bin'"):
        prepare_audio(b"not audio at all" * 10, name="junk.bin")
    with pytest.raises(AudioError, match=r"empty \(0 bytes\): e.wav"):
        prepare_audio(b"", name="e.wav")
    with pytest.raises(AudioError, match=r"short.wav is too short: 0.100 s"):
        prepare_audio(_wav_bytes(wav[:1600]), name="short.wav")
    with pytest.raises(AudioError, match="silent"):
        prepare_audio(_wav_bytes(np.zeros(16000, np.float32)), name="quiet.wav")
    with pytest.raises(AudioTooLongError, match=r"at most 2 s per recording"):
        prepare_audio(_wav_bytes(wav[:48000]), name="long.wav", max_seconds=2)
    # a FLAC whose header leaves the length open (written to a pipe): libsndfile reports 2**63 - 1 frames and
    # cannot read it; the server once answered "576460752303423.5 s long" (413) for 2 s of it
    stream = bytearray(_wav_bytes(wav[:32000], fmt="FLAC"))
    stream[18:26] = (int.from_bytes(stream[18:26], "big") & ~((1 << 36) - 1)).to_bytes(8, "big")
    for limit in (None, 60):
        with pytest.raises(AudioError, match=r"^cannot decode audio file s.flac: its header gives no length") as no:
            prepare_audio(bytes(stream), name="s.flac", max_seconds=limit)
        assert not isinstance(no.value, AudioTooLongError)


def _wav_bytes(wav: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def test_prepare_audio_arrays_paths_and_bytes_agree(shared_data: Path, tmp_path: Path) -> None:
    """One preparation for every entry point: int16 stereo array, file and upload bytes give the same samples."""
    clips = sorted((shared_data / "fsdd").glob("*_george_*.wav"))
    path_in = next(p for p in clips if sf.info(str(p)).duration > 0.5)
    speech, rate = sf.read(path_in, dtype="int16")
    pcm = np.stack([speech, speech], axis=1)
    from_array = prepare_audio(pcm, rate)
    path = tmp_path / "x.wav"
    sf.write(path, pcm, rate, subtype="PCM_16")
    from_path = prepare_audio(path)
    from_bytes = prepare_audio(path.read_bytes(), name="x.wav")
    assert from_array.shape == from_path.shape == from_bytes.shape == (len(speech) * 2,)
    np.testing.assert_allclose(from_array, from_path, atol=1e-4)
    np.testing.assert_allclose(from_path, from_bytes, atol=1e-6)
    with pytest.raises(AudioError, match="recording 2 contains NaN"):
        prepare_audio(np.full(16000, np.nan, np.float32), name="recording 2")
    with pytest.raises(AudioError, match=rf"{path.name} is too short: 0.\d+ s \(need at least 2 s\)"):
        prepare_audio(path, min_seconds=2.0)


def test_speech_detection_refuses_non_speech_and_measures_speech(shared_data: Path) -> None:
    from utils.audio import analyse_speech, check_speech, speech_probabilities

    t = np.arange(3 * 16000) / 16000
    rng = np.random.default_rng(0)
    for name, wav in {"noise": 0.1 * rng.standard_normal(len(t)), "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
                      "dc": np.full(len(t), 0.3), "hum": 0.3 * np.sin(2 * np.pi * 50 * t)}.items():  # fmt: skip
        with pytest.raises(AudioError, match=f"no speech detected in {name}"):
            check_speech(wav.astype(np.float32), 16000, 0.3, name)
    speech = load_audio(shared_data / "librispeech" / "train-clean-100" / "103-1240-0000.flac")
    report = check_speech(speech, 16000, 0.3, "speech")
    assert 0.6 * report.seconds < report.speech_seconds <= report.seconds and report.problems() == []
    # one pass of the sequence model equals silero's own streaming model run window by window
    import torch
    from silero_vad import load_silero_vad

    piece = speech[: 6 * 16000]
    levelled = np.zeros(-(-len(piece) // 512) * 512, np.float32)
    levelled[: len(piece)] = piece * 0.5 / np.percentile(np.abs(piece), 99.9)  # the level speech_probabilities sets
    with warnings.catch_warnings():  # the package's own deprecation notices (importlib, torch.jit)
        warnings.simplefilter("ignore", DeprecationWarning)
        streaming = load_silero_vad(onnx=False)
    with torch.inference_mode():
        reference = [
            float(streaming(torch.from_numpy(levelled[k : k + 512]), 16000)) for k in range(0, len(levelled), 512)
        ]
    assert np.abs(speech_probabilities(piece) - np.array(reference)).max() < 1e-4
    # speech in a long pause: net seconds, not the file length
    padded = np.concatenate([np.zeros(16000 * 5, np.float32), speech[:32000], np.zeros(16000 * 5, np.float32)])
    alone = analyse_speech(speech[:32000]).speech_seconds
    assert alone > 0.8 and abs(analyse_speech(padded).speech_seconds - alone) < 0.2
    assert any("clipped" in p for p in analyse_speech(np.clip(speech * 20, -1, 1)).problems())
    assert any("very quiet" in p for p in analyse_speech(speech * 0.003).problems())
    noisy = speech + 0.2 * np.std(speech) * 3 * rng.standard_normal(len(speech)).astype(np.float32)
    assert any("noisy" in p for p in analyse_speech(noisy).problems())


def test_a_file_name_that_is_not_utf8_is_read(shared_data: Path, tmp_path: Path) -> None:
    """Linux names are bytes: soundfile refused such a str ("surrogates not allowed"), so a user's
    latin-1 named recording could be neither registered, recognised nor compared."""
    import os
    import shutil

    name = tmp_path / os.fsdecode(b"caf\xe9.wav")  # latin-1 'café.wav'
    shutil.copy(shared_data / "seed_samples" / "a_1.wav", name)
    wav = load_audio(name)
    assert audio_info(name)[1] == 16000 and len(wav) > 16000
    np.testing.assert_array_equal(wav, load_audio(shared_data / "seed_samples" / "a_1.wav"))
