"""File or array -> L2-normalised speaker embedding, from one self-contained model file.

    from utils.embedder import Embedder
    embedder = Embedder("models/voiceprint_resnet34.pt")
    a = embedder.embed_file("audio/a1.wav")
    b = embedder.embed_file("audio/a2.wav")
    score = float(a @ b)   # cosine similarity; same speaker when >= embedder.threshold

The whole recording is used (the original only looked at its first 2.6 s).
Recordings longer than `segment_seconds` are read and embedded segment by
segment and averaged, so memory stays bounded for hour-long files.

`model_path` may also be a `.onnx` file written by export_onnx.py (needs
onnxruntime): the features are still computed by utils.features from the
config stored in the ONNX metadata, and only the backbone runs in ONNX Runtime
(CPU provider, as many threads as torch), faster than PyTorch eager on CPU
(benchmarks/README.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from utils.audio import (
    MIN_SPEECH_SECONDS,
    SAMPLE_RATE,
    AudioError,
    Recording,
    SpeechReport,
    audio_info,
    check_speech,
    load_audio,
    prepare_recording,
)
from utils.checkpoint import load_inference_model, resolve_model_path
from utils.data import start_batches
from utils.errors import OptionError
from utils.features import FeatureConfig, FeatureExtractor
from utils.onnx_model import OnnxBackbone, export_backbone, is_onnx_path, load_onnx_model, onnx_session
from utils.operating_points import OperatingPoints

MIN_SECONDS = MIN_SPEECH_SECONDS  # the same floor everywhere (utils.audio)


def segment_bounds(total: float, segment: float) -> list[tuple[float, float]]:
    """[start, end) pieces of `segment` (samples or seconds); the last piece takes the rest, 0.5-1.5
    segments long, so a short tail never gets a full vote. Up to 1.5 segments: one piece."""
    bounds, start = [], 0
    while total - start >= 1.5 * segment:
        bounds.append((start, start + segment))
        start += segment
    bounds.append((start, total))
    return bounds


def _speech(wav: np.ndarray) -> SpeechReport | None:
    """The report of a segment worth a vote (long enough, with speech), else None."""
    try:
        return check_speech(wav, SAMPLE_RATE, MIN_SECONDS)
    except AudioError:
        return None


class Embedder:
    """Loads an inference model once; embeds files and arrays on CPU or GPU."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | torch.device = "auto",
        segment_seconds: float = 30.0,
        vad: bool = False,
        engine: str = "torch",
    ) -> None:
        """`engine`: "torch", or "onnx" to run a .pt model's backbone in ONNX Runtime on the CPU (exported in
        memory at load, ~2 s; then ~1.5x faster on one thread: worth it for many files, e.g. eval.py)."""
        if engine not in ("torch", "onnx"):
            raise OptionError(f"engine must be torch or onnx, got {engine!r}")
        model_path = resolve_model_path(model_path)
        onnx = is_onnx_path(model_path)
        if onnx and device == "auto":
            device = "cpu"  # the backbone runs in ONNX Runtime on the CPU: features on a GPU would only add copies
        if isinstance(device, str):
            from utils.config import resolve_device

            device = resolve_device(device)
        if engine == "onnx" and not onnx and device.type != "cpu":  # checked before the model load
            raise OptionError("the onnx engine runs on the CPU: use --device cpu (or the torch engine)")
        self.device = device
        self.model_path = str(model_path)
        if onnx:
            self.model, info = load_onnx_model(model_path)
        else:
            self.model, info = load_inference_model(model_path, device)
        self.feature_config = FeatureConfig.from_dict(info["feature_config"])
        if engine == "onnx" and not onnx:
            self.model = OnnxBackbone(onnx_session(export_backbone(self.model, self.feature_config.num_bins)))
        self.engine = "onnx" if onnx else engine
        self.extractor = FeatureExtractor(self.feature_config).to(device)
        self.operating_points = OperatingPoints.from_info(info)
        self.info = info
        self.segment_seconds = segment_seconds
        self.vad = vad

    @property
    def threshold(self) -> float | None:
        """The model's 1:1 threshold (same person when score >= threshold); see `operating_points`."""
        return self.operating_points.verification

    @property
    def embedding_dim(self) -> int:
        return int(self.info["model_config"].get("embedding_dim", 512))

    @torch.inference_mode()
    def embed_waveforms(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Embed 16 kHz mono waveforms; equal lengths are batched, others run one by one."""
        out = np.zeros((len(wavs), self.embedding_dim), dtype=np.float32)
        lengths = [len(w) for w in wavs]
        if len(set(lengths)) == 1 and wavs:
            batch = torch.from_numpy(np.stack(wavs)).to(self.device)
            out[:] = self._forward(batch).cpu().numpy()
            return out
        for i, wav in enumerate(wavs):
            out[i] = self._forward(torch.from_numpy(np.ascontiguousarray(wav))[None].to(self.device))[0].cpu().numpy()
        return out

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        emb = self.model(self.extractor(batch)).float()
        return torch.nn.functional.normalize(emb, dim=1)

    def embed_array(self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, name: str = "audio") -> np.ndarray:
        """Embed an in-memory recording of any rate and channel layout."""
        return self.embed_array_report(wav, sample_rate, name)[0]

    def embed_array_report(
        self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, name: str = "audio"
    ) -> tuple[np.ndarray, SpeechReport]:
        """(embedding, what the recording held: net speech seconds, level, clipping, SNR)."""
        recording = prepare_recording(wav, sample_rate, name)
        return self._embed_long(recording.wav, name, recording.report)

    def embed_recording(self, recording: Recording, name: str = "audio") -> tuple[np.ndarray, SpeechReport | None]:
        """(embedding, report) of a recording utils.audio.prepare_recording has already checked."""
        return self._embed_long(recording.wav, name, recording.report)

    def _embed_long(
        self, wav: np.ndarray, name: str = "audio", report: SpeechReport | None = None
    ) -> tuple[np.ndarray, SpeechReport | None]:
        """Whole (already checked: its `report` is passed through), or as the same segments embed_file
        streams, each checked; segments without speech get no vote."""
        bounds = segment_bounds(len(wav), int(self.segment_seconds * SAMPLE_RATE))
        if len(bounds) == 1:
            return self.embed_waveforms([wav])[0], report
        embeddings, weights, reports = [], [], []
        for start, end in bounds:
            piece = _speech(wav[start:end])
            if piece is not None:
                embeddings.append(self.embed_waveforms([wav[start:end]])[0])
                weights.append(end - start)
                reports.append(piece)
        if not embeddings:
            raise AudioError(f"no speech detected in {name}")
        return self._average(embeddings, weights), SpeechReport.combine(reports)

    @staticmethod
    def _average(embeddings: list[np.ndarray], weights: list[int]) -> np.ndarray:
        mean = np.average(np.stack(embeddings), axis=0, weights=np.asarray(weights, dtype=np.float64))
        return (mean / (np.linalg.norm(mean) + 1e-12)).astype(np.float32)

    def embed_file(self, path: str | os.PathLike) -> np.ndarray:
        """Embed a WAV/FLAC/OGG/MP3 file; long files are streamed in segments."""
        return self.embed_file_report(path)[0]

    def embed_file_report(self, path: str | os.PathLike) -> tuple[np.ndarray, SpeechReport]:
        """(embedding, SpeechReport) of a file; long files are streamed in segments."""
        frames, rate = audio_info(path)
        seconds = frames / rate if rate else 0.0
        if self.vad or seconds <= self.segment_seconds * 1.5:
            wav = load_audio(path, vad=self.vad)
            return self._embed_long(wav, str(path), check_speech(wav, SAMPLE_RATE, MIN_SECONDS, str(path)))
        # stream the same segments _embed_long cuts, so file and array give the same embedding
        embeddings, weights, reports = [], [], []
        for start, end in segment_bounds(seconds, self.segment_seconds):
            wav = load_audio(path, start_seconds=start, max_seconds=end - start)
            piece = _speech(wav)
            if piece is not None:
                embeddings.append(self.embed_waveforms([wav])[0])
                weights.append(len(wav))
                reports.append(piece)
        if not embeddings:
            raise AudioError(f"no speech detected in {path}")
        return self._average(embeddings, weights), SpeechReport.combine(reports)

    def embed_files(
        self,
        paths: Sequence[str | os.PathLike],
        num_workers: int = 0,
        progress: bool = False,
        skip_errors: bool = False,
    ) -> tuple[np.ndarray, list[str | None]]:
        """Embed many files; worker processes decode audio while this process runs the model.

        Returns (embeddings (N, D), errors) where errors[i] is None or the reason
        file i failed (its row is then zeros). Without `skip_errors` the first
        failure raises AudioError.
        """
        from tqdm import tqdm

        out = np.zeros((len(paths), self.embedding_dim), dtype=np.float32)
        errors: list[str | None] = [None] * len(paths)
        loader = torch.utils.data.DataLoader(
            _FileDataset([str(p) for p in paths], self.segment_seconds, self.vad),
            batch_size=None,
            num_workers=num_workers,
        )
        for i, (wav, error) in enumerate(
            tqdm(start_batches(loader), total=len(paths), disable=not progress, desc="embedding")
        ):
            if error is None:
                try:
                    out[i] = self._embed_long(wav.numpy(), str(paths[i]))[0]  # checked in the worker
                except AudioError as exc:
                    error = str(exc)
            if error is not None:
                if not skip_errors:
                    raise AudioError(error)
                errors[i] = error
        return out, errors


class _FileDataset(torch.utils.data.Dataset):
    """Decodes one file per item in a worker; errors travel back as strings, not exceptions."""

    def __init__(self, paths: list[str], segment_seconds: float, vad: bool) -> None:
        self.paths = paths
        self.vad = vad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str | None]:
        try:
            wav = load_audio(self.paths[i], vad=self.vad)
            check_speech(wav, SAMPLE_RATE, MIN_SECONDS, self.paths[i])
            return torch.from_numpy(wav), None
        except AudioError as exc:
            return torch.zeros(0), str(exc)
