"""Features: the ONLY feature code, shared by training, evaluation and inference.

`FeatureExtractor` turns a batch of 16 kHz waveforms (B, N) into (B, F, T):
- `spectrogram`: the original design's STFT magnitude (n_fft 512, window 400,
  hop 160, 257 bins), normalised per frame over frequency (mean/std), exactly
  as the original's librosa code did;
- `fbank`: 80 log-Mel energies from the same STFT, mean-normalised over time.

It is a torch module, so it runs batched on the GPU during training and is
saved (as its config) inside every inference model: inference computes exactly
the training features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

FEATURES = ("spectrogram", "fbank")
LOG_FLOORS = ("relative", "absolute")
# relative log floor, as a share of the example's mean mel energy (47 dB below it): for LibriSpeech
# at its usual -23 dBFS (mean mel energy ~5e-2) this is where the old absolute floor 1e-6 sat
RELATIVE_FLOOR = 2e-5


@dataclass
class FeatureConfig:
    feature: str = "fbank"
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    # log floor of fbank: "relative" (to each example's mean energy) makes the features of a clip
    # independent of its level; "absolute" (1e-6) is what models made before it used
    log_floor: str = "relative"

    def __post_init__(self) -> None:
        if self.feature not in FEATURES:
            raise ValueError(f"unknown feature {self.feature!r}; choose from {', '.join(FEATURES)}")
        if self.log_floor not in LOG_FLOORS:
            raise ValueError(f"unknown log floor {self.log_floor!r}; choose from {', '.join(LOG_FLOORS)}")

    @property
    def num_bins(self) -> int:
        """F, the feature dimension the backbone sees."""
        return self.n_fft // 2 + 1 if self.feature == "spectrogram" else self.n_mels

    def num_frames(self, num_samples: int) -> int:
        """T for a waveform of `num_samples` (centred STFT)."""
        return num_samples // self.hop_length + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        known.setdefault("log_floor", "absolute")  # stored before the option existed
        return cls(**known)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, area-normalised (Slaney).

    Equal to `librosa.filters.mel(..., htk=False, norm="slaney")` (checked in the tests) but
    without importing librosa, which alone costs ~2 s of a command-line script's start-up.
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    rising = (fft_freqs[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - fft_freqs[None, :]) / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


class FeatureExtractor(nn.Module):
    """(B, N) float waveforms -> (B, F, T) features, computed in float32 even under autocast."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)
        if config.feature == "fbank":
            mel = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, 20.0, config.sample_rate / 2)
            self.register_buffer("mel_filters", torch.from_numpy(mel), persistent=False)
        else:
            self.mel_filters = None

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        with torch.autocast(device_type=wav.device.type, enabled=False):
            return self._compute(wav.float())

    def _compute(self, wav: torch.Tensor) -> torch.Tensor:
        c = self.config
        spec = torch.stft(
            wav,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window,
            center=True,
            pad_mode="constant",  # librosa >= 0.10's default, so the original's features are reproduced
            return_complex=True,
        )
        if c.feature == "spectrogram":
            mag = spec.abs()  # (B, 257, T)
            mean = mag.mean(dim=1, keepdim=True)
            std = mag.std(dim=1, keepdim=True, unbiased=False)
            return (mag - mean) / (std + 1e-5)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_filters, power)  # (B, n_mels, T)
        if c.log_floor == "relative":
            # scaling the waveform by g scales mel and the floor by g^2: after mean normalisation
            # over time the features do not change at all (a quiet clip scores like a loud one)
            floor = RELATIVE_FLOOR * mel.mean(dim=(1, 2), keepdim=True).clamp_min(1e-20)
        else:
            floor = 1e-6
        logmel = torch.log(mel + floor)
        return logmel - logmel.mean(dim=2, keepdim=True)


def spec_augment(
    feats: torch.Tensor,
    generator: torch.Generator | None = None,
    freq_masks: int = 1,
    freq_width: int = 8,
    time_masks: int = 1,
    time_width: int = 10,
) -> torch.Tensor:
    """SpecAugment: zero random frequency bands and time spans of each (B, F, T) example.

    Vectorised over the batch (no Python loop per example), so it is free on GPU.
    """
    batch, num_bins, num_frames = feats.shape
    device = feats.device
    keep = torch.ones_like(feats, dtype=torch.bool)
    for axis, count, width, size in ((1, freq_masks, freq_width, num_bins), (2, time_masks, time_width, num_frames)):
        positions = torch.arange(size, device=device)
        for _ in range(count):
            # drawn on the CPU generator so a seeded run is reproducible on any device
            w = (torch.rand(batch, generator=generator) * (min(width, size) + 1)).long()
            start = (torch.rand(batch, generator=generator) * (size - w + 1)).long()
            w, start = w.to(device), start.to(device)
            band = (positions[None, :] >= start[:, None]) & (positions[None, :] < (start + w)[:, None])
            keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
    return feats * keep
