"""Thresholds measured on the user's own recordings: a voiceprint library calibrates itself.

A threshold measured on one corpus does not transfer to another (other microphones, languages,
lengths). `calibrate_library` measures both operating points from the library's enrolled recordings:

- 1:1 (infer_contrast.py --audio_db, /contrast): every pair of recordings, same speaker vs different
  speakers: the same trials eval.py scores on a list.
- 1:N (recognition): each recording against its own speaker's voiceprint built without it (leave one
  out) and against every other speaker's voiceprint: the trials recognition really makes.

The 1:1 threshold is the equal-error point of normal distributions fitted to the two score sets; the 1:N
threshold is where the library's number of voiceprints times the false-accept rate equals the miss rate
(a stranger gets a chance at every voiceprint). With the
few trials a library has, the empirical EER threshold sits on the edge of the gap between the classes
(often the lowest genuine score, far too lenient for strangers); the fitted point sits inside the gap,
weighted by how spread each side is. Needs at least 2 speakers with 2 or more recordings each.

Short recordings score lower for the same person than long ones, so one threshold measured on whole
enrolment recordings is too strict for a 0.5 s test clip. The recordings are therefore also cut into
pieces of 0.5, 1, 2, 4 and 8 s and both thresholds are measured again on the pieces (pieces of one
recording are never a same-speaker pair: they share the session). Each row of `by_speech` is (net speech
seconds of the pieces, 1:1, 1:N); a trial's threshold is interpolated at its net speech seconds
(`verification_at`, `identification_at`; for a pair, the shorter side).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import UserError

CALIBRATION_NAME = ".voiceprint_calibration.json"
STEADY_TRIALS = 30  # fewer same-speaker trials than this: the estimate moves with every new recording
PIECE_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)  # recordings are also measured cut to these lengths


class CalibrationError(UserError, ValueError):
    """The library cannot be calibrated (too few speakers or recordings)."""


def gaussian_eer_threshold(target: np.ndarray, nontarget: np.ndarray) -> float:
    """The score where a normal fit of each side is equally many standard deviations away."""
    mu_t, mu_n = float(np.mean(target)), float(np.mean(nontarget))
    sd_t = max(float(np.std(target)), 0.02)  # a floor: two recordings are not a distribution
    sd_n = max(float(np.std(nontarget)), 0.02)
    return (mu_n * sd_t + mu_t * sd_n) / (sd_t + sd_n)


def open_set_threshold(target: np.ndarray, nontarget: np.ndarray, voiceprints: int) -> float:
    """The 1:N point: a stranger meets every one of the library's `voiceprints`, so the threshold is where
    (normal fits of) `voiceprints` x the per-voiceprint false-accept rate equals the miss rate, above the
    equal-error point by as much as the library is large."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    mu_t, mu_n = float(np.mean(target)), float(np.mean(nontarget))
    sd_t, sd_n = max(float(np.std(target)), 0.02), max(float(np.std(nontarget)), 0.02)
    if mu_t <= mu_n:  # no separation to speak of: the equal-error point is as good as any
        return gaussian_eer_threshold(target, nontarget)

    def gap(t: float) -> float:
        return voiceprints * norm.sf(t, mu_n, sd_n) - norm.cdf(t, mu_t, sd_t)

    return float(brentq(gap, mu_n - 10 * sd_n, mu_t + 10 * sd_t))


@dataclass(frozen=True)
class LibraryCalibration:
    verification: float  # 1:1 threshold
    identification: float  # 1:N threshold
    speakers: int
    recordings: int
    verification_trials: tuple[int, int]  # (same-speaker, different-speaker) pairs
    identification_trials: tuple[int, int]
    model: str = ""  # fingerprint of the model whose embeddings were scored
    created: str = ""
    by_speech: tuple[tuple[float, float, float], ...] = ()  # (net speech seconds, 1:1, 1:N), ascending

    def verification_at(self, speech_seconds: float | None) -> float:
        """The 1:1 threshold for a pair whose shorter recording holds `speech_seconds` of speech."""
        return self._at(speech_seconds, 1, self.verification)

    def identification_at(self, speech_seconds: float | None) -> float:
        """The 1:N threshold for a recording holding `speech_seconds` of speech."""
        return self._at(speech_seconds, 2, self.identification)

    def _at(self, speech_seconds: float | None, column: int, whole: float) -> float:
        if not self.by_speech or speech_seconds is None or not math.isfinite(speech_seconds):
            return whole
        x = np.log([max(row[0], 0.05) for row in self.by_speech])
        y = [row[column] for row in self.by_speech]
        return round(float(np.interp(math.log(max(speech_seconds, 0.05)), x, y)), 4)

    @property
    def steady(self) -> bool:
        return min(self.verification_trials[0], self.identification_trials[0]) >= STEADY_TRIALS

    def describe(self) -> str:
        v, i = self.verification_trials, self.identification_trials
        text = (
            f"calibrated on {self.speakers} speakers, {self.recordings} recordings: "
            f"1:1 threshold {self.verification:.3f} ({v[0]} same-speaker / {v[1]} different-speaker pairs), "
            f"1:N threshold {self.identification:.3f} ({i[0]} / {i[1]} recording-to-voiceprint trials)"
        )
        if self.by_speech:
            rows = ", ".join(f"{s:.1f} s: {v:.3f} / {i:.3f}" for s, v, i in self.by_speech)
            text += f"; by net speech seconds (1:1 / 1:N): {rows}"
        if not self.steady:
            text += f"; fewer than {STEADY_TRIALS} same-speaker trials: add recordings for a steadier estimate"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LibraryCalibration:
        values = {k: data[k] for k in ("verification", "identification", "speakers", "recordings")}
        for key in ("verification", "identification"):
            if not (isinstance(values[key], (int, float)) and math.isfinite(values[key])):
                raise ValueError(f"invalid {key} threshold {values[key]!r}")
        rows = tuple(tuple(float(v) for v in row) for row in data.get("by_speech", ()))
        if any(len(row) != 3 or not all(math.isfinite(v) for v in row) for row in rows):
            raise ValueError(f"invalid by_speech table {data.get('by_speech')!r}")
        return cls(
            float(values["verification"]), float(values["identification"]), int(values["speakers"]),
            int(values["recordings"]), tuple(data["verification_trials"]), tuple(data["identification_trials"]),
            str(data.get("model", "")), str(data.get("created", "")), tuple(sorted(rows)),
        )  # fmt: skip


@dataclass(frozen=True)
class Piece:
    """A cut of enrolled recording `recording` (an index into calibrate_library's embeddings)."""

    embedding: np.ndarray
    recording: int
    speech_seconds: float


def calibrate_library(
    embeddings: np.ndarray,
    speakers: list[str],
    model: str = "",
    pieces: dict[float, list[Piece]] | None = None,
    speech_seconds: list[float] | None = None,
) -> LibraryCalibration:
    """Both thresholds from the library's recordings: `embeddings` (N, D) L2-normalised, `speakers` (N,).

    With `pieces` ({cut length: pieces}) and the recordings' own `speech_seconds`, also the thresholds by
    net speech seconds (see the module docstring)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    names = sorted(set(speakers))
    labels = np.array([names.index(s) for s in speakers], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(names))
    usable = [names[k] for k in range(len(names)) if counts[k] >= 2]
    if len(usable) < 2:
        have = ", ".join(f"{n}: {c}" for n, c in zip(names, counts)) or "none"
        raise CalibrationError(
            "calibration needs at least 2 speakers with 2 or more recordings each "
            f"(recordings per speaker: {have}): register more recordings first"
        )
    # 1:1: all pairs
    scores = emb @ emb.T
    upper = np.triu_indices(len(emb), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    pair_scores = scores[upper]
    verification = gaussian_eer_threshold(pair_scores[same], pair_scores[~same])
    # 1:N: leave-one-out voiceprints (a speaker's mean without the recording itself)
    sums = np.zeros((len(names), emb.shape[1]))
    np.add.at(sums, labels, emb)
    target, nontarget = _voiceprint_trials(emb, labels, emb, sums, counts)
    identification = open_set_threshold(target, nontarget, len(names))
    rows = []
    if pieces and speech_seconds is not None and len(speech_seconds) == len(emb):
        rows.append((float(np.median(speech_seconds)), verification, identification))
        for cut in sorted(pieces):
            row = _piece_thresholds(pieces[cut], emb, labels, sums)
            if row is not None and row[0] < rows[0][0]:  # pieces as long as whole recordings add nothing
                rows.append(row)
    return LibraryCalibration(
        verification=round(verification, 4),
        identification=round(identification, 4),
        speakers=len(names),
        recordings=len(emb),
        verification_trials=(int(same.sum()), int((~same).sum())),
        identification_trials=(len(target), len(nontarget)),
        model=model,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        by_speech=tuple(sorted((round(s, 2), round(v, 4), round(i, 4)) for s, v, i in rows)),
    )


def _piece_thresholds(
    pieces: list[Piece], whole: np.ndarray, labels: np.ndarray, sums: np.ndarray
) -> tuple[float, float, float] | None:
    """(median net speech seconds, 1:1, 1:N) measured on pieces of one length, or None when too few trials.

    1:1: pairs of pieces from different recordings; 1:N: each piece against every voiceprint, its own
    speaker's built without the recording the piece was cut from (`whole`: the recordings' embeddings)."""
    if len(pieces) < 4:
        return None
    emb = np.stack([p.embedding for p in pieces]).astype(np.float64)
    recording = np.array([p.recording for p in pieces])
    speaker = labels[recording]
    upper = np.triu_indices(len(emb), k=1)
    scores = (emb @ emb.T)[upper]
    same = speaker[upper[0]] == speaker[upper[1]]
    target_pairs = scores[same & (recording[upper[0]] != recording[upper[1]])]
    counts = np.bincount(labels, minlength=len(sums))
    target, nontarget = _voiceprint_trials(emb, speaker, whole[recording], sums, counts)
    if len(target_pairs) < 2 or not len(scores[~same]) or len(target) < 2 or not len(nontarget):
        return None
    return (
        float(np.median([p.speech_seconds for p in pieces])),
        gaussian_eer_threshold(target_pairs, scores[~same]),
        open_set_threshold(target, nontarget, len(sums)),
    )


def _voiceprint_trials(
    vectors: np.ndarray, speaker: np.ndarray, held_out: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(target, non-target) 1:N scores: each vector against every voiceprint (the normalised sum of a speaker's
    recordings), its own speaker's built without `held_out` (the recording it is, or was cut from); a speaker
    with one recording has no voiceprint left to be its own target."""
    target, nontarget = [], []
    for vector, own_speaker, removed in zip(vectors, speaker, held_out):
        for k in range(len(sums)):
            own = k == own_speaker
            if own and counts[k] < 2:
                continue
            voiceprint = sums[k] - removed if own else sums[k]
            score = float(vector @ voiceprint / (np.linalg.norm(voiceprint) + 1e-12))
            (target if own else nontarget).append(score)
    return np.array(target), np.array(nontarget)


def save_calibration(root: str | Path, calibration: LibraryCalibration) -> Path:
    from utils.fileio import atomic_write_json

    path = Path(root) / CALIBRATION_NAME
    atomic_write_json(path, calibration.to_dict())
    return path


def load_calibration(root: str | Path, model: str | None) -> LibraryCalibration | None:
    """The library's calibration for this model, or None (none made, unreadable, or made with another model)."""
    import json
    import warnings

    path = Path(root) / CALIBRATION_NAME
    if not path.is_file():
        return None
    try:
        calibration = LibraryCalibration.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"ignoring {path}: {exc}; run --calibrate again", UserWarning, stacklevel=2)
        return None
    if model is not None and calibration.model != model:
        warnings.warn(
            f"{path} was measured with another model: using the model's thresholds (run --calibrate again)",
            UserWarning,
            stacklevel=2,
        )
        return None
    return calibration


# score calibration: a raw cosine -> the probability of "same speaker"


@dataclass(frozen=True)
class ScoreCalibration:
    """Logistic regression on the cosine and the two recordings' lengths (short recordings score lower for
    the same person, as WeSpeaker's quality-aware calibration models), fitted on a trial list with both
    classes weighted equally: the probability assumes even odds that the two are the same person."""

    coef: tuple[float, float, float]  # score, log seconds of the shorter, log seconds of the longer recording
    intercept: float
    measured_on: str
    trials: tuple[int, int]  # (target, non-target) trials it was fitted on

    def probability(self, score: Any, seconds_a: Any, seconds_b: Any) -> np.ndarray:
        x = _calibration_features(score, seconds_a, seconds_b)
        return 1.0 / (1.0 + np.exp(-(x @ np.asarray(self.coef) + self.intercept)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "logistic", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreCalibration:
        coef = tuple(float(c) for c in data["coef"])
        if len(coef) != 3 or not all(math.isfinite(c) for c in coef) or not math.isfinite(data["intercept"]):
            raise ValueError(f"invalid score calibration {data!r}")
        return cls(coef, float(data["intercept"]), str(data.get("measured_on", "")), tuple(data["trials"]))


def _calibration_features(score: Any, seconds_a: Any, seconds_b: Any) -> np.ndarray:
    a = np.log(np.maximum(np.asarray(seconds_a, dtype=np.float64), 0.1))
    b = np.log(np.maximum(np.asarray(seconds_b, dtype=np.float64), 0.1))
    return np.stack([np.asarray(score, dtype=np.float64), np.minimum(a, b), np.maximum(a, b)], axis=-1)


def fit_score_calibration(
    scores: np.ndarray, targets: np.ndarray, seconds_a: np.ndarray, seconds_b: np.ndarray, measured_on: str
) -> ScoreCalibration:
    """Fit ScoreCalibration on trials (scikit-learn's logistic regression, classes balanced)."""
    from sklearn.linear_model import LogisticRegression

    targets = np.asarray(targets, dtype=bool)
    if targets.all() or not targets.any():
        raise CalibrationError("score calibration needs both same-speaker and different-speaker trials")
    model = LogisticRegression(class_weight="balanced", C=100.0, max_iter=1000)
    model.fit(_calibration_features(scores, seconds_a, seconds_b), targets)
    return ScoreCalibration(
        tuple(float(c) for c in model.coef_[0]), float(model.intercept_[0]), measured_on,
        (int(targets.sum()), int((~targets).sum())),
    )  # fmt: skip


def calibration_error(probability: np.ndarray, targets: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error on class-balanced trials, and the reliability-diagram bins.

    Each class is weighted to half the total, matching the even odds the calibration assumes."""
    targets = np.asarray(targets, dtype=bool)
    weights = np.where(targets, 0.5 / max(targets.sum(), 1), 0.5 / max((~targets).sum(), 1))
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(probability, edges) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for k in range(bins):
        mask = index == k
        w = weights[mask].sum()
        if w == 0:
            continue
        predicted = float(np.sum(weights[mask] * probability[mask]) / w)
        observed = float(np.sum(weights[mask] * targets[mask]) / w)
        ece += w * abs(predicted - observed)
        rows.append({"predicted": predicted, "observed": observed, "weight": float(w), "trials": int(mask.sum())})
    return float(ece), rows
