"""Features: shapes, the original's spectrogram normalisation, fbank vs librosa, SpecAugment."""

import numpy as np
import pytest
import torch

from utils.features import FeatureConfig, FeatureExtractor, spec_augment


def test_shapes_follow_the_config():
    for feature, bins in (("spectrogram", 257), ("fbank", 80)):
        config = FeatureConfig(feature=feature)
        feats = FeatureExtractor(config)(torch.randn(3, 32000))
        assert feats.shape == (3, bins, config.num_frames(32000)) == (3, bins, 201)


def test_spectrogram_matches_the_original_librosa_code():
    librosa = pytest.importorskip("librosa")
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    linear = librosa.stft(wav, n_fft=512, win_length=400, hop_length=160)
    mag, _ = librosa.magphase(linear)
    expected = (mag - mag.mean(0, keepdims=True)) / (mag.std(0, keepdims=True) + 1e-5)
    ours = FeatureExtractor(FeatureConfig(feature="spectrogram"))(torch.from_numpy(wav))[0].numpy()
    np.testing.assert_allclose(ours, expected, atol=2e-3)


def test_fbank_matches_librosa_log_mel():
    librosa = pytest.importorskip("librosa")
    wav = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    power = np.abs(librosa.stft(wav, n_fft=512, win_length=400, hop_length=160, pad_mode="constant")) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=20.0, fmax=8000.0) @ power
    expected = np.log(mel + 1e-6)
    expected -= expected.mean(axis=1, keepdims=True)
    ours = FeatureExtractor(FeatureConfig(feature="fbank", log_floor="absolute"))(torch.from_numpy(wav))[0].numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-3)
    # the relative floor sits at a fixed share of the clip's mean mel energy
    expected = np.log(mel + 2e-5 * mel.mean())
    expected -= expected.mean(axis=1, keepdims=True)
    ours = FeatureExtractor(FeatureConfig(feature="fbank"))(torch.from_numpy(wav))[0].numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-3)


def test_batched_equals_one_by_one():
    extractor = FeatureExtractor(FeatureConfig())
    batch = torch.randn(4, 24000)
    together = extractor(batch)
    for i in range(4):
        torch.testing.assert_close(together[i], extractor(batch[i])[0], atol=1e-4, rtol=1e-4)


def test_fbank_is_gain_invariant():
    # mean normalisation removes a constant gain: loudness must not change the voiceprint input
    extractor = FeatureExtractor(FeatureConfig())
    wav = torch.randn(1, 16000) * 0.1
    torch.testing.assert_close(extractor(wav), extractor(wav * 4.0), atol=1e-3, rtol=1e-3)


def test_relative_floor_makes_quiet_speech_look_like_loud_speech(shared_data):
    # real speech with pauses: the absolute floor flattens a -40 dB copy's quiet frames, the relative one does not
    from utils.audio import load_audio

    path = sorted((shared_data / "librispeech" / "dev-clean").rglob("*.mp3"))[0]
    wav = torch.from_numpy(load_audio(path, max_seconds=6))[None]
    relative = FeatureExtractor(FeatureConfig())
    torch.testing.assert_close(relative(wav * 0.01), relative(wav), atol=1e-3, rtol=1e-3)
    absolute = FeatureExtractor(FeatureConfig(log_floor="absolute"))
    assert (absolute(wav * 0.01) - absolute(wav)).abs().mean() > 0.3


def test_models_stored_before_the_floor_option_keep_the_absolute_floor():
    old = {"feature": "fbank", "sample_rate": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 80}
    assert FeatureConfig.from_dict(old).log_floor == "absolute"
    assert FeatureConfig.from_dict(FeatureConfig().to_dict()).log_floor == "relative"
    with pytest.raises(ValueError, match="unknown log floor"):
        FeatureConfig(log_floor="none")


def test_unknown_feature_is_rejected():
    with pytest.raises(ValueError, match="unknown feature"):
        FeatureConfig(feature="mfcc")


def test_config_round_trip():
    config = FeatureConfig(feature="spectrogram", n_mels=64)
    assert FeatureConfig.from_dict(config.to_dict() | {"unused": 1}) == config


def test_spec_augment_masks_and_is_reproducible():
    feats = torch.ones(8, 80, 200)
    a = spec_augment(feats, torch.Generator().manual_seed(3), freq_width=10, time_width=20)
    b = spec_augment(feats, torch.Generator().manual_seed(3), freq_width=10, time_width=20)
    assert torch.equal(a, b)
    zeroed = (a == 0).float().mean().item()
    assert 0.0 < zeroed < 0.3
    assert a.shape == feats.shape


@pytest.mark.parametrize("n_mels,n_fft,rate", [(80, 512, 16000), (64, 400, 16000), (40, 256, 8000)])
def test_mel_filterbank_equals_librosa(n_mels, n_fft, rate):
    librosa = pytest.importorskip("librosa")
    from utils.features import mel_filterbank

    ours = mel_filterbank(rate, n_fft, n_mels, 20.0, rate / 2)
    expected = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=20.0, fmax=rate / 2)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-8)
