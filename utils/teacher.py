"""Teachers for knowledge distillation (`train.py --teacher MODEL`).

A teacher maps a batch of 16 kHz waveforms (B, N) to L2-normalised embeddings (B, D). The
student learns the teacher's similarity structure on every training crop (see
`distillation_loss`), which carries over what the teacher learned from many more speakers
than the training list holds. Two kinds:

- `resemblyzer`: the pretrained Resemblyzer encoder (3-layer LSTM over 40 mel bands, trained
  on thousands of speakers; Apache-2.0). Only its weight file is used, from the optional
  `resemblyzer` package (`pip install resemblyzer`); the network is rebuilt here, so its
  import-time dependencies (webrtcvad) are not needed.
- any model file the toolkit loads (`.pt` inference model or `.onnx`), e.g. a wide model
  trained on a GPU.

Teachers are frozen and run in inference mode; they are a training-time dependency only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from utils.errors import UserError
from utils.features import mel_filterbank


class TeacherError(UserError, ValueError):
    """A teacher that cannot be loaded (missing package, unreadable model)."""


class ResemblyzerTeacher(nn.Module):
    """Resemblyzer's VoiceEncoder, rebuilt from its published weights.

    Input processing follows the package: volume normalised to -30 dBFS, 40-band mel power
    spectrogram (25 ms window, 10 ms hop, no log), last LSTM hidden state -> linear -> ReLU -> L2.
    """

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        from utils.checkpoint import CheckpointError, load_torch_file

        try:
            blob = load_torch_file(weights_path)
        except CheckpointError as exc:
            raise TeacherError(str(exc)) from None
        state = blob.get("model_state", blob) if isinstance(blob, dict) else None
        if not isinstance(state, dict):
            raise TeacherError(f"{weights_path} holds no Resemblyzer weights")
        own = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
        self.load_state_dict(own)
        self.register_buffer("window", torch.hann_window(400), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(16000, 400, 40, 0.0, 8000.0)), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.float()
        rms = wav.square().mean(dim=1, keepdim=True).sqrt().clamp_min(1e-5)
        wav = wav * (10 ** (-30 / 20) / rms)  # -30 dBFS, as resemblyzer.preprocess_wav does
        spec = torch.stft(wav, 400, 160, 400, self.window, center=True, pad_mode="constant", return_complex=True)
        mels = torch.matmul(self.mel, spec.real.square() + spec.imag.square())  # (B, 40, T)
        _, (hidden, _) = self.lstm(mels.transpose(1, 2))
        embeds = torch.relu(self.linear(hidden[-1]))
        return nn.functional.normalize(embeds, dim=1)


class ModelTeacher(nn.Module):
    """A toolkit model file (.pt or .onnx) as a teacher, through the same Embedder as inference."""

    def __init__(self, path: str) -> None:
        super().__init__()
        from utils.embedder import Embedder

        self.embedder = Embedder(path, device="cpu")

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.embedder.embed_waveforms(list(wav.float().cpu().numpy()))).to(wav.device)


def resemblyzer_weights() -> Path:
    """Where the installed `resemblyzer` package keeps its pretrained weights (found without importing it)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError("--teacher resemblyzer needs the optional package: pip install resemblyzer")
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"
    if not path.is_file():
        raise TeacherError(f"the resemblyzer package has no weights at {path}")
    return path


def load_teacher(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """`resemblyzer` or the path of a model file the toolkit can load."""
    if name == "resemblyzer":
        return ResemblyzerTeacher(resemblyzer_weights()).to(device)
    if not Path(name).is_file():
        raise TeacherError(f"--teacher: {name} is neither 'resemblyzer' nor an existing model file")
    from utils.checkpoint import CheckpointError

    try:
        return ModelTeacher(name)
    except CheckpointError as exc:
        raise TeacherError(f"--teacher: {exc}") from None


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relational distillation: 1 - Pearson correlation between the student's and the teacher's
    pairwise cosine similarities within the batch (off-diagonal pairs).

    Correlation, not equality: the teacher's scores live on its own scale (Resemblyzer scores
    different speakers around 0.6, an ArcFace student around 0), so only the structure - which
    crops sound more alike than others - is taught. Needs no shared embedding size.
    """
    s = nn.functional.normalize(student.float(), dim=1)
    t = nn.functional.normalize(teacher.float(), dim=1)
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    sim_s, sim_t = (s @ s.T)[off], (t @ t.T)[off]
    sim_s, sim_t = sim_s - sim_s.mean(), sim_t - sim_t.mean()
    return 1.0 - (sim_s * sim_t).sum() / (sim_s.norm() * sim_t.norm()).clamp_min(1e-8)
