"""Distillation teachers: the relational loss, Resemblyzer rebuilt from its weights, a model file as teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.teacher import TeacherError, distillation_loss, load_teacher


def test_distillation_loss_is_zero_for_the_same_geometry_at_any_scale():
    teacher = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    # an orthogonal rotation keeps every pairwise cosine: nothing left to learn
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    assert distillation_loss(teacher @ rotation, teacher).item() == pytest.approx(0.0, abs=1e-5)
    # different embedding sizes are fine; unrelated geometry costs about 1
    unrelated = distillation_loss(torch.randn(16, 32), teacher).item()
    assert 0.5 < unrelated < 1.5


def test_distillation_loss_pulls_the_student_towards_the_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(12, 6), dim=1)
    student = torch.randn(12, 10, requires_grad=True)
    optimiser = torch.optim.Adam([student], lr=0.05)
    start = distillation_loss(student, teacher).item()
    for _ in range(200):
        optimiser.zero_grad()
        loss = distillation_loss(student, teacher)
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.05 < start


def test_unknown_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(TeacherError, match="neither 'resemblyzer' nor an existing model file"):
        load_teacher(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(TeacherError, match="bad.pt"):
        load_teacher(str(bad))


def test_a_model_file_teaches_what_the_embedder_computes(shared_data):
    from utils.audio import load_audio
    from utils.embedder import Embedder

    model = "models/voiceprint_resnet34.pt"
    teacher = load_teacher(model)
    paths = sorted((shared_data / "librispeech" / "dev-clean").rglob("*.mp3"))[:3]
    wavs = np.stack([load_audio(p, max_seconds=2.0)[:32000] for p in paths])
    out = teacher(torch.from_numpy(wavs)).numpy()
    expected = Embedder(model, device="cpu").embed_waveforms(list(wavs))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_resemblyzer_rebuilt_matches_the_package(shared_data):
    pytest.importorskip("resemblyzer", reason="optional teacher package not installed (pip install resemblyzer)")
    try:
        from resemblyzer import VoiceEncoder
        from resemblyzer.audio import wav_to_mel_spectrogram
    except ImportError as exc:  # its webrtcvad needs pkg_resources (setuptools < 81)
        pytest.skip(f"resemblyzer installed but not importable: {exc}")
    from utils.audio import load_audio

    teacher = load_teacher("resemblyzer")
    reference = VoiceEncoder("cpu", verbose=False)
    path = sorted((shared_data / "librispeech" / "dev-clean").rglob("*.mp3"))[0]
    wav = load_audio(path)[:32000]
    wav = (wav * (10 ** (-30 / 20) / np.sqrt(np.mean(wav**2)))).astype(np.float32)
    ours = teacher(torch.from_numpy(wav[None]))[0].numpy()
    theirs = reference(torch.from_numpy(wav_to_mel_spectrogram(wav)[None]).float())[0].detach().numpy()
    assert float(ours @ theirs) > 0.9999
