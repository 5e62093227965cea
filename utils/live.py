"""Who is speaking now: a sliding window over a live audio stream, recognised against the library.

    live = LiveRecognizer(db)                 # db: a SpeakerDB opened with a model
    for block in microphone_blocks:           # float32 16 kHz pieces of any size, as they arrive
        for state in live.push(block):        # one LiveState per UPDATE_SECONDS of audio
            print(state.text())               # "now speaking: alice (0.78)" / "... unknown ..." / "no speech"

Every UPDATE_SECONDS of audio (4 times a second) the last WINDOW_SECONDS are checked for speech
(silero-vad) and, when they hold at least MIN_SPEECH_SECONDS of it, embedded and recognised at the
library's 1:N threshold for that much speech (calibrate the library, infer_recognition.py --calibrate:
the model's own threshold is measured on whole utterances and answers "unknown" more often for 1.5 s
windows). After a change of speaker the window holds mostly the
new voice within about half a window, so the label follows in about 1.25 s (tests/test_live.py). The same class serves
`infer_recognition.py --live` (microphone) and the server's /live WebSocket (the page's microphone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from utils.audio import SAMPLE_RATE, analyse_speech

WINDOW_SECONDS = 1.5
UPDATE_SECONDS = 0.25
MIN_SPEECH_SECONDS = 0.5


@dataclass(frozen=True)
class LiveState:
    time: float  # seconds of audio received when this was decided (the end of the window)
    label: str  # a speaker's name, "unknown" or "no speech"
    name: str | None  # the recognised speaker, or None
    score: float | None  # similarity to the best voiceprint (None: no speech)
    best: str | None  # the best-scoring speaker, also when unknown
    speech_seconds: float
    level_dbfs: float  # peak level of the newest audio, for a meter

    def text(self) -> str:
        # by `name` and `score`, not `label`: a library older than the reserved names may hold a speaker
        # called "no speech" or "unknown"
        if self.name is not None:
            return f"now speaking: {self.name} ({self.score:.2f})"
        if self.score is None:
            return "no speech"
        return f"now speaking: unknown (best: {self.best} {self.score:.2f})"

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("time", "score", "speech_seconds", "level_dbfs"):
            if out[key] is not None:
                out[key] = round(float(out[key]), 3)
        return out


class LiveRecognizer:
    """A ring buffer of the newest WINDOW_SECONDS and the decisions over it; see the module docstring."""

    def __init__(self, db, window: float = WINDOW_SECONDS, update: float = UPDATE_SECONDS) -> None:
        if db.embedder is None:
            raise ValueError("live recognition needs a library opened with a model")
        self.db = db
        self.size = int(round(window * SAMPLE_RATE))
        self.step = int(round(update * SAMPLE_RATE))
        self.buffer = np.zeros(0, dtype=np.float32)
        self.received = 0  # samples so far
        self.next_update = self.step

    def push(self, block: np.ndarray) -> list[LiveState]:
        """Add newly arrived 16 kHz mono samples; returns the decisions that became due (usually 0 or 1)."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        states = []
        while len(block):
            take = min(len(block), self.next_update - self.received)
            self.buffer = np.concatenate([self.buffer, block[:take]])[-self.size :]
            self.received += take
            block = block[take:]
            if self.received >= self.next_update:
                states.append(self.decide(self.buffer[-self.step :]))
                self.next_update += self.step
        return states

    def decide(self, newest: np.ndarray) -> LiveState:
        t = self.received / SAMPLE_RATE
        level = 20 * np.log10(max(float(np.max(np.abs(newest))) if len(newest) else 0.0, 1e-6))
        window = self.buffer
        if len(window) < SAMPLE_RATE * MIN_SPEECH_SECONDS or float(np.max(np.abs(window))) < 1e-4:
            return LiveState(t, "no speech", None, None, None, 0.0, level)
        report = analyse_speech(window)
        if report.speech_seconds < MIN_SPEECH_SECONDS or not len(self.db):
            return LiveState(t, "no speech", None, None, None, report.speech_seconds, level)
        emb = self.db.embedder.embed_waveforms([window])[0]
        result = self.db.recognize_embedding(emb, report.speech_seconds)
        label = result.name if result.name is not None else "unknown"
        return LiveState(t, label, result.name, float(result.score), result.best, report.speech_seconds, level)
