"""utils/embedder.py: long recordings are cut the same way from a file and from an array, silent parts get no vote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils.audio import SAMPLE_RATE, AudioError, load_audio
from utils.embedder import Embedder, segment_bounds

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "voiceprint_resnet34.pt"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(str(MODEL), device="cpu")


def speech_of(shared_data: Path, speaker: str, seconds: float) -> np.ndarray:
    """Real dev-clean speech of one speaker, `seconds` long (utterances joined)."""
    parts, total = [], 0
    for path in sorted((shared_data / "librispeech" / "dev-clean" / speaker).rglob("*.mp3")):
        parts.append(load_audio(path))
        total += len(parts[-1])
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (10, [(0, 10)]),
        (45, [(0, 30), (30, 45)]),  # 1.5 segments: not one piece any more
        (44, [(0, 44)]),
        (70, [(0, 30), (30, 70)]),  # a 10 s tail joins the piece before it
        (80, [(0, 30), (30, 60), (60, 80)]),
        (100, [(0, 30), (30, 60), (60, 100)]),
    ],
)
def test_segment_bounds(total: float, expected: list[tuple[float, float]]) -> None:
    bounds = segment_bounds(total, 30)
    assert bounds == expected
    assert bounds[0][0] == 0 and bounds[-1][1] == total  # every sample, once
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_long_file_and_array_agree_and_use_every_segment(embedder: Embedder, shared_data: Path, tmp_path: Path) -> None:
    # 30 s of speaker 84 then 40 s of speaker 1272: both must count, with their share of the time
    first, second = speech_of(shared_data, "84", 30), speech_of(shared_data, "1272", 40)
    mix = np.concatenate([first, second])
    sf.write(tmp_path / "mix70.wav", mix, SAMPLE_RATE, subtype="FLOAT")
    from_array = embedder.embed_array(mix)
    from_file = embedder.embed_file(tmp_path / "mix70.wav")
    assert cosine(from_array, from_file) > 0.999
    batch, errors = embedder.embed_files([tmp_path / "mix70.wav"])
    assert errors == [None] and cosine(batch[0], from_file) > 0.999
    a, b = embedder.embed_array(first), embedder.embed_array(second)
    # the average of the two segments, weighted 30:40
    expected = (30 * a + 40 * b) / np.linalg.norm(30 * a + 40 * b)
    assert cosine(from_array, expected) > 0.999
    assert cosine(from_array, a) > 0.5 and cosine(from_array, b) > 0.5


def test_silent_segments_get_no_vote(embedder: Embedder, shared_data: Path, tmp_path: Path) -> None:
    voice = speech_of(shared_data, "84", 20)
    quiet_start = np.concatenate([np.zeros(35 * SAMPLE_RATE, dtype=np.float32), voice])  # 55 s, speech last
    sf.write(tmp_path / "quiet_start.wav", quiet_start, SAMPLE_RATE, subtype="FLOAT")
    own = embedder.embed_array(voice)
    from_file = embedder.embed_file(tmp_path / "quiet_start.wav")
    from_array = embedder.embed_array(quiet_start)
    assert cosine(from_file, from_array) > 0.999
    assert cosine(from_file, own) > 0.9  # the silent half does not dilute the voiceprint
    silent = np.zeros(60 * SAMPLE_RATE, dtype=np.float32)
    sf.write(tmp_path / "silent.wav", silent, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="no speech detected"):
        embedder.embed_file(tmp_path / "silent.wav")
    with pytest.raises(AudioError, match="is silent"):
        embedder.embed_array(silent)


def test_integer_pcm_is_scaled(embedder: Embedder, shared_data: Path) -> None:
    voice = speech_of(shared_data, "84", 4)
    pcm = np.round(voice * 32767).astype(np.int16)
    assert cosine(embedder.embed_array(pcm), embedder.embed_array(voice)) > 0.999


def test_float_audio_far_beyond_full_scale_is_scaled_back(
    embedder: Embedder, shared_data: Path, tmp_path: Path
) -> None:
    """A float file written at integer scale (or x1e20) gave NaN scores (the server answered 200 with a null
    score and an arbitrary 'best' speaker): its squared samples overflowed float32 in the features."""
    import soundfile as sf

    voice = speech_of(shared_data, "84", 4)
    reference = embedder.embed_array(voice)
    for scale in (32768.0, 1e20):
        path = tmp_path / f"loud_{scale:g}.wav"
        sf.write(path, voice * scale, 16000, subtype="FLOAT")
        for emb in (embedder.embed_file(path), embedder.embed_array((voice * scale).astype(np.float32))):
            assert np.isfinite(emb).all() and cosine(emb, reference) > 0.99, scale


def test_onnx_engine_gives_the_torch_embeddings(embedder: Embedder, shared_data: Path) -> None:
    """engine="onnx" exports the .pt backbone in memory and runs it in ONNX Runtime: same embeddings."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -r requirements.txt)")
    fast = Embedder(MODEL, device="cpu", engine="onnx")
    assert fast.engine == "onnx" and embedder.engine == "torch"
    clips = sorted((shared_data / "librispeech" / "dev-clean" / "1272").rglob("*.mp3"))[:3]
    ours, _ = fast.embed_files(clips)
    reference, _ = embedder.embed_files(clips)
    assert np.abs(ours - reference).max() < 1e-4
    with pytest.raises(ValueError, match="engine must be torch or onnx"):
        Embedder(MODEL, device="cpu", engine="tensorrt")
