"""Who spoke when: speech regions, window embeddings, clustering, names from the voiceprint library.

    from utils.diarization import diarize
    result = diarize("meeting.wav", embedder, db)          # db: a SpeakerDB, or None for unknown-1, unknown-2 ...
    for s in result.segments:
        print(s.start, s.end, s.speaker, s.enrolled, s.score)

Steps, all on the model and speech detector the rest of the toolkit uses:
1. speech regions: silero-vad probabilities (utils.audio.speech_probabilities), read in chunks so an
   hour-long file never sits in memory as a whole;
2. windows of `window` seconds every `hop` seconds inside the regions, embedded in batches;
3. spectral clustering (scipy eigenvectors, scikit-learn k-means; see cluster_windows) to
   `num_speakers` clusters, or as many as the eigen-gap says; then each window moves to its nearest
   cluster centre, clusters with too little speech join their nearest neighbour, and a Viterbi pass
   with a cost per speaker change re-segments each stretch of speech (smooth_turns);
4. every 0.1 s frame of speech takes the label of the window centred nearest to it; runs of one label
   become segments;
5. one voice per speaker: each cluster's longest speech (up to 30 s) is embedded as one recording;
   clusters that are one person are merged (count unknown): at the 1:N operating point, within
   SAME_VOICE_MARGIN of how alike each cluster's own two halves are, and never two enrolled people;
   each turn of 2 s or more, embedded on its own, moves to the voice it is most like; clusters nobody
   enrolled that are one person at the 1:1 operating point are merged too (no half-vs-half check);
6. names: those embeddings are recognised against the library at its 1:N threshold (calibrated by
   length where the library is); count unknown, two voices recognised as one enrolled person, the
   weaker within SAME_VOICE_MARGIN of the stronger's score, are that person recorded in two rooms and
   become one (join_name_claimants); otherwise one voice per enrolled name (the most alike); the
   others are unknown-1, unknown-2, ... in order of appearance. Count unknown: turns of a named
   cluster that are more like an enrolled person no cluster is named after become that person's, when
   their speech as a whole is recognised as them (claim_enrolled_turns: two enrolled people in one
   cluster).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utils.audio import SAMPLE_RATE, VAD_WINDOW, AudioError, audio_info, load_audio, speech_probabilities

FRAME = 0.1  # seconds: the resolution of the output segments
PRUNE = 0.2  # each window's affinity keeps its nearest 20% of windows (chosen on the validation speakers)
MAX_SPEAKERS = 8  # the most speakers the eigen-gap may find
CENTRE_MERGE = 0.8  # clusters whose centres are at least this alike are one speaker
SWITCH_PENALTY = 0.1  # re-segmentation: cost of a speaker change, in cosine (chosen on the validation speakers,
# clean and overlapping conversations: 0.1 keeps odd windows out of turns without breaking overlaps)
MIN_REGION = 0.3  # seconds of speech a region needs to count
MIN_GAP = 0.3  # pauses shorter than this do not split a region
MIN_CLUSTER_SECONDS = 3.0  # a cluster with less speech than this joins its nearest neighbour (count unknown)
MIN_CLUSTER_SHARE = 0.04  # ... and so does one with less than this share of all speech
FILL_GAP = 1.0  # seconds: a pause this short between two segments of one speaker is part of their turn
NAMING_SECONDS = 30.0  # speech per cluster embedded to name it
SAME_VOICE_MARGIN = 0.1  # two clusters are one voice only within this of each one's half-vs-half cosine
CONSISTENCY_SECONDS = 2.0  # each half needs this much to measure a cluster's consistency
TURN_SECONDS = 2.0  # a turn at least this long is checked on its own embedding (reassign_turns)
CHUNK_SECONDS = 60.0  # decoding unit for long files


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    speaker: str
    enrolled: bool
    score: float | None  # the speaker's similarity to their enrolled voiceprint (None: no library)

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 2), "end": round(self.end, 2), "speaker": self.speaker,
                "enrolled": self.enrolled, "score": None if self.score is None else round(self.score, 3)}  # fmt: skip


@dataclass
class Diarization:
    segments: list[Segment]
    duration: float
    speech_seconds: float
    windows: int
    speakers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration": round(self.duration, 2),
            "speech_seconds": round(self.speech_seconds, 2),
            "segments": [s.to_dict() for s in self.segments],
            "speakers": self.speakers,
        }

    def to_rttm(self, file_id: str) -> str:
        """NIST RTTM: one SPEAKER line per segment. Fields are split on whitespace, so whitespace and "%" in
        names are percent-encoded as in URLs ("Mary Ann" -> "Mary%20Ann"): two speakers "Mary Ann" and
        "Mary_Ann" stay two (an underscore for the space made them one)."""
        file_id = rttm_token(file_id) or "audio"
        lines = [
            f"SPEAKER {file_id} 1 {s.start:.3f} {s.end - s.start:.3f} <NA> <NA> {rttm_token(s.speaker)} <NA> <NA>"
            for s in self.segments
        ]
        return "\n".join(lines) + ("\n" if lines else "")


def rttm_token(text: str) -> str:
    """`text` as one RTTM field: whitespace and "%" percent-encoded (UTF-8 bytes), everything else as is."""
    return "".join("".join(f"%{b:02X}" for b in ch.encode()) if ch.isspace() or ch == "%" else ch for ch in text)


# 1. speech regions


class _Source:
    """A file read in chunks, or an array; both give 16 kHz mono pieces by time."""

    def __init__(self, source: str | os.PathLike | np.ndarray) -> None:
        if isinstance(source, np.ndarray):
            self.wav: np.ndarray | None = np.asarray(source, dtype=np.float32)
            self.path = None
            self.duration = len(self.wav) / SAMPLE_RATE
        else:
            self.wav, self.path = None, str(source)
            frames, rate = audio_info(self.path)
            self.duration = frames / rate if rate else 0.0

    def piece(self, start: float, seconds: float) -> np.ndarray:
        if self.wav is not None:
            a = max(0, int(round(start * SAMPLE_RATE)))
            return self.wav[a : a + int(round(seconds * SAMPLE_RATE))]
        return load_audio(self.path, start_seconds=max(start, 0.0), max_seconds=seconds)

    def chunks(self) -> Iterator[tuple[float, np.ndarray]]:
        start = 0.0
        while start < self.duration:
            wav = self.piece(start, CHUNK_SECONDS)
            if len(wav) == 0:
                break
            yield start, wav
            start += CHUNK_SECONDS


def speech_regions(probabilities: np.ndarray, threshold: float = 0.5) -> list[tuple[float, float]]:
    """[start, end) seconds where the detector hears speech: short pauses bridged, tiny bits dropped."""
    step = VAD_WINDOW / SAMPLE_RATE
    speech = np.concatenate([[False], probabilities >= threshold, [False]])
    edges = np.flatnonzero(np.diff(speech.astype(np.int8)))
    regions: list[list[float]] = []
    for a, b in zip(edges[::2], edges[1::2]):
        start, end = a * step, b * step
        if regions and start - regions[-1][1] < MIN_GAP:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return [(a, b) for a, b in regions if b - a >= MIN_REGION]


# 2. windows


def window_bounds(regions: list[tuple[float, float]], window: float, hop: float) -> list[tuple[float, float]]:
    """Windows inside the regions: every `hop` seconds, the last one ending with the region; a region
    shorter than a window is one window of its own length."""
    bounds = []
    for start, end in regions:
        if end - start <= window:
            bounds.append((start, end))
            continue
        t = start
        while t + window < end:
            bounds.append((t, t + window))
            t += hop
        bounds.append((end - window, end))
    return bounds


def embed_windows(source: _Source, bounds: list[tuple[float, float]], embedder: Any, window: float) -> np.ndarray:
    """(W, D) embeddings, decoding one chunk (plus one window) at a time; full windows go in batches."""
    out = np.zeros((len(bounds), embedder.embedding_dim), dtype=np.float32)
    size = int(round(window * SAMPLE_RATE))
    for chunk_start in np.arange(0.0, max(source.duration, 1e-9), CHUNK_SECONDS):
        inside = [i for i, (a, _) in enumerate(bounds) if chunk_start <= a < chunk_start + CHUNK_SECONDS]
        if not inside:
            continue
        wav = source.piece(chunk_start, CHUNK_SECONDS + window + 0.1)
        full, partial = [], []
        for i in inside:
            a = int(round((bounds[i][0] - chunk_start) * SAMPLE_RATE))
            b = int(round((bounds[i][1] - chunk_start) * SAMPLE_RATE))
            piece = wav[a:b]
            (full if len(piece) == size else partial).append((i, piece))
        for k in range(0, len(full), 32):
            batch = full[k : k + 32]
            out[[i for i, _ in batch]] = embedder.embed_waveforms([p for _, p in batch])
        for i, piece in partial:
            out[i] = embedder.embed_waveforms([piece])[0]
    return out


# 3. clustering


def cluster_windows(
    embeddings: np.ndarray,
    seconds: np.ndarray,
    num_speakers: int | None = None,
    max_speakers: int = MAX_SPEAKERS,
    prune: float | None = None,
) -> np.ndarray:
    """A cluster index per window, 0..K-1 in order of first appearance.

    Spectral clustering: the cosine affinity of the windows, each row pruned to its `prune` share of
    nearest windows (a speaker's windows then only link to each other), the graph Laplacian's
    eigenvectors (scipy), k-means on them (scikit-learn). The count, when not given, is where the
    Laplacian's eigenvalues jump most (the eigen-gap). Then: each window to its nearest cluster
    centre (re-segmentation), clusters with near-identical centres merged, too small ones absorbed."""
    from scipy.linalg import eigh
    from sklearn.cluster import KMeans

    prune = PRUNE if prune is None else prune
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n < 4 or num_speakers == 1:
        return np.zeros(n, dtype=np.int64)
    affinity = embeddings @ embeddings.T
    keep = max(2, int(np.ceil(prune * n)))
    nearest = np.argsort(-affinity, axis=1)[:, :keep]
    pruned = np.zeros_like(affinity)
    np.put_along_axis(pruned, nearest, np.take_along_axis(affinity, nearest, axis=1), axis=1)
    pruned = np.maximum(pruned, 0.0)
    pruned = (pruned + pruned.T) / 2
    laplacian = np.diag(pruned.sum(axis=1)) - pruned
    top = min(max_speakers, n - 1)
    values, vectors = eigh(laplacian, subset_by_index=[0, top])
    count = num_speakers if num_speakers is not None else int(np.argmax(np.diff(values))) + 1
    count = max(1, min(count, n))
    if count == 1:
        return np.zeros(n, dtype=np.int64)
    labels = KMeans(count, n_init=10, random_state=0).fit_predict(vectors[:, :count])
    for _ in range(2):  # re-segmentation: every window to its nearest cluster centre
        labels = _nearest_centre(embeddings, labels)
    if num_speakers is None:
        labels = _merge_centres(embeddings, labels, lambda k, best: best >= CENTRE_MERGE)
        labels = _absorb_small(embeddings, labels, seconds)
    return _in_order(labels)


def _centres(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(labels)
    centres = np.stack([embeddings[labels == k].mean(axis=0) for k in ids])
    return ids, centres / (np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12)


def _nearest_centre(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    ids, centres = _centres(embeddings, labels)
    return ids[np.argmax(embeddings @ centres.T, axis=1)]


def _merge_centres(embeddings: np.ndarray, labels: np.ndarray, again: Any) -> np.ndarray:
    """Merge the two clusters with the most similar centres while again(cluster count, their similarity)."""
    while True:
        ids, centres = _centres(embeddings, labels)
        if len(ids) < 2:
            return labels
        similarity = centres @ centres.T
        np.fill_diagonal(similarity, -np.inf)
        a, b = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
        if not again(len(ids), float(similarity[a, b])):
            return labels
        labels = _nearest_centre(embeddings, np.where(labels == ids[b], ids[a], labels))


def _absorb_small(embeddings: np.ndarray, labels: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Clusters holding less than MIN_CLUSTER_SECONDS of windows join the nearest larger cluster."""
    while True:
        ids, centres = _centres(embeddings, labels)
        if len(ids) < 2:
            return labels
        sizes = np.array([seconds[labels == k].sum() for k in ids])
        small = int(np.argmin(sizes))
        if sizes[small] >= max(MIN_CLUSTER_SECONDS, MIN_CLUSTER_SHARE * seconds.sum()):
            return labels
        similarity = centres @ centres[small]
        similarity[small] = -np.inf
        labels = np.where(labels == ids[small], ids[int(np.argmax(similarity))], labels)


def _in_order(labels: np.ndarray) -> np.ndarray:
    order = {k: i for i, k in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[k] for k in labels.tolist()], dtype=np.int64)


def smooth_turns(
    embeddings: np.ndarray, labels: np.ndarray, bounds: list[tuple[float, float]], penalty: float | None = None
) -> np.ndarray:
    """Re-segmentation with a cost for changing speaker: within each stretch of overlapping windows, the
    label path that maximises the summed cosine to the cluster centres minus `penalty` per change
    (Viterbi). A single odd window inside someone's turn no longer becomes a turn of its own; a real
    change, where several windows agree, still does. Changes across a pause cost nothing."""
    penalty = SWITCH_PENALTY if penalty is None else penalty
    ids, centres = _centres(embeddings, labels)
    if len(ids) < 2 or penalty <= 0:
        return labels
    scores = embeddings @ centres.T  # (W, K)
    out = labels.copy()
    start = 0
    for end in range(1, len(bounds) + 1):
        if end < len(bounds) and bounds[end][0] < bounds[end - 1][1] + 1e-6:
            continue  # still the same stretch of speech
        total, back = scores[start].copy(), []
        for t in range(start + 1, end):
            stay_or_switch = total[:, None] - penalty * (1 - np.eye(len(ids)))  # [from, to]
            back.append(np.argmax(stay_or_switch, axis=0))
            total = stay_or_switch.max(axis=0) + scores[t]
        path = [int(np.argmax(total))]
        for pointers in reversed(back):
            path.append(int(pointers[path[-1]]))
        out[start:end] = ids[np.array(path[::-1])]
        start = end
    return out


# 4. frames -> segments


def frame_labels(
    regions: list[tuple[float, float]], bounds: list[tuple[float, float]], labels: np.ndarray, duration: float
) -> np.ndarray:
    """A label per FRAME of the recording: -1 outside speech, else the label of the window whose centre is
    nearest to the frame's centre."""
    frames = np.full(int(np.ceil(duration / FRAME)), -1, dtype=np.int64)
    if not bounds:
        return frames
    centres = np.array([(a + b) / 2 for a, b in bounds])
    order = np.argsort(centres)
    centres, sorted_labels = centres[order], labels[order]
    for start, end in regions:
        first, last = int(start / FRAME), min(int(np.ceil(end / FRAME)), len(frames))
        t = (np.arange(first, last) + 0.5) * FRAME
        right = np.clip(np.searchsorted(centres, t), 1, len(centres) - 1) if len(centres) > 1 else np.zeros_like(t, int)
        left = np.maximum(right - 1, 0)
        nearest = np.where(np.abs(centres[left] - t) <= np.abs(centres[right] - t), left, right)
        frames[first:last] = sorted_labels[nearest]
    return frames


def frame_runs(frames: np.ndarray) -> list[tuple[float, float, int]]:
    """(start, end, label) for every run of one label (>= 0) in the frames."""
    runs, start = [], None
    for i in range(len(frames) + 1):
        current = frames[i] if i < len(frames) else -1
        if start is not None and (current != frames[start]):
            runs.append((start * FRAME, i * FRAME, int(frames[start])))
            start = None
        if start is None and current >= 0:
            start = i
    return runs


# 5. one voice per speaker, and names


def _naming_speech(source: _Source, runs: list[tuple[float, float, int]], label: int) -> np.ndarray:
    """A cluster's longest turns, up to NAMING_SECONDS, as one waveform."""
    longest = sorted((r for r in runs if r[2] == label), key=lambda r: r[0] - r[1])
    pieces, total = [], 0.0
    for start, end, _ in longest:
        take = min(end - start, NAMING_SECONDS - total)
        if take <= 0:
            break
        pieces.append(source.piece(start, take))
        total += take
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def speaker_embedding(source: _Source, runs: list[tuple[float, float, int]], label: int, embedder: Any) -> tuple:
    """(embedding, net speech seconds) of a cluster's longest turns, up to NAMING_SECONDS; (None, 0) if no speech."""
    return _embed_speech(_naming_speech(source, runs, label), label, embedder)


def _embed_speech(wav: np.ndarray, label: int, embedder: Any) -> tuple:
    try:
        emb, report = embedder.embed_array_report(wav, SAMPLE_RATE, f"speaker {label + 1}")
    except AudioError:
        return None, 0.0
    return emb, (report.speech_seconds if report is not None else len(wav) / SAMPLE_RATE)


def voice_consistency(wav: np.ndarray, label: int, embedder: Any) -> float | None:
    """Cosine between the two halves of a cluster's naming speech (_naming_speech): what one person scores
    against themself at this length, in this recording (None when a half is under CONSISTENCY_SECONDS)."""
    half = len(wav) // 2
    if half < CONSISTENCY_SECONDS * SAMPLE_RATE:
        return None
    try:
        first, second = (embedder.embed_array(w, SAMPLE_RATE, f"speaker {label + 1}") for w in (wav[:half], wav[half:]))
    except AudioError:
        return None
    return float(first @ second)


def _recognise(voice: tuple, db: Any | None) -> Any | None:
    """The library's Recognition of a (embedding, seconds) voice; None without a library or an embedding."""
    emb, seconds = voice
    return db.recognize_embedding(emb, seconds) if db is not None and len(db) and emb is not None else None


def _enrolled_name(voice: tuple, db: Any | None) -> str | None:
    result = _recognise(voice, db)
    return None if result is None else result.name


def merge_same_voice(
    source: _Source,
    runs: list[tuple[float, float, int]],
    embedder: Any,
    threshold: Any,
    voices: dict[int, tuple] | None = None,
    only: set[int] | None = None,
    db: Any | None = None,
    self_check: bool = True,
) -> tuple[list[tuple[float, float, int]], dict[int, tuple]]:
    """Clusters whose long-speech embeddings are one person are merged, most alike first: windows of 1.5 s
    split a voice that 30 s of it does not. One person means all of: at least `threshold`(seconds); within
    SAME_VOICE_MARGIN of how alike each cluster's own two halves are (30 s of two different people can
    pass a threshold set on short utterances: measured 0.62-0.68 between LibriSpeech readers, against
    0.9+ for one reader; `self_check`); and not two different people enrolled in `db`. `only`: merge
    among these."""

    def measure(k: int, voice: tuple | None = None) -> tuple[tuple, float | None]:
        """A cluster's voice and half-vs-half cosine, from one read of its speech."""
        wav = _naming_speech(source, runs, k) if voice is None or self_check else None
        if voice is None:
            voice = _embed_speech(wav, k, embedder)
        return voice, (voice_consistency(wav, k, embedder) if self_check else None)

    labels = sorted({r[2] for r in runs}) if voices is None else list(voices)
    measured = {k: measure(k, None if voices is None else voices[k]) for k in labels}
    voices = {k: voice for k, (voice, _) in measured.items()}
    consistency = {k: c for k, (_, c) in measured.items()}
    names = {k: _enrolled_name(voices[k], db) for k in voices}

    def one_person(a: int, b: int, score: float) -> bool:
        if score < threshold(min(voices[a][1], voices[b][1])):
            return False
        if names[a] is not None and names[b] is not None and names[a] != names[b]:
            return False
        selves = [c for c in (consistency[a], consistency[b]) if c is not None]
        return not selves or score >= min(selves) - SAME_VOICE_MARGIN

    while True:
        known = [k for k, (emb, _) in voices.items() if emb is not None and (only is None or k in only)]
        best = None
        for i, a in enumerate(known):
            for b in known[i + 1 :]:
                score = float(voices[a][0] @ voices[b][0])
                if one_person(a, b, score) and (best is None or score > best[0]):
                    best = (score, a, b)
        if best is None:
            return runs, voices
        _, a, b = best
        runs = [(start, end, a if k == b else k) for start, end, k in runs]
        del voices[b], consistency[b], names[b]
        voices[a], consistency[a] = measure(a)
        names[a] = _enrolled_name(voices[a], db)


def turn_embedding(source: _Source, start: float, end: float, embedder: Any, cache: dict | None = None) -> Any:
    """One turn embedded on its own (None if it holds no usable speech); `cache` keeps it for a later step."""
    if cache is not None and (start, end) in cache:
        return cache[start, end]
    try:
        emb = embedder.embed_array(source.piece(start, end - start), SAMPLE_RATE, "turn")
    except AudioError:
        emb = None
    if cache is not None:
        cache[start, end] = emb
    return emb


def reassign_turns(
    source: _Source,
    runs: list[tuple[float, float, int]],
    embedder: Any,
    voices: dict[int, tuple],
    cache: dict | None = None,
) -> tuple[list[tuple[float, float, int]], dict[int, tuple]]:
    """Each turn of at least TURN_SECONDS is embedded on its own and goes to the speaker whose voice it is
    most like: a whole turn says more than the 1.5 s windows that labelled it (a stranger's opening turn
    once went to an enrolled speaker that way). Voices of speakers that changed are embedded again."""
    known = {k: emb for k, (emb, _) in voices.items() if emb is not None}
    if len(known) < 2:
        return runs, voices
    labels = list(known)
    centres = np.stack([known[k] for k in labels])
    moved, changed = [], set()
    for start, end, label in runs:
        if end - start >= TURN_SECONDS and label in known:
            emb = turn_embedding(source, start, end, embedder, cache)
            if emb is None:
                moved.append((start, end, label))
                continue
            best = labels[int(np.argmax(centres @ emb))]
            if best != label:
                changed |= {best, label}
                label = best
        moved.append((start, end, label))
    if not changed:
        return runs, voices
    voices = dict(voices)
    for k in changed:
        voices[k] = speaker_embedding(source, moved, k, embedder)
    return moved, voices


def claim_enrolled_turns(
    source: _Source,
    runs: list[tuple[float, float, int]],
    embedder: Any,
    voices: dict[int, tuple],
    names: dict[int, tuple[str, bool, float | None]],
    db: Any,
    threshold: Any,
    cache: dict | None = None,
) -> tuple[list[tuple[float, float, int]], dict[int, tuple]]:
    """Two enrolled people whose windows the clustering could not tell apart share a cluster, named after
    one of them. Each turn of at least TURN_SECONDS in a named cluster is scored against the voiceprints of
    the enrolled people no cluster is named after; the turns more like one of them than like the cluster's
    own name, at `threshold`(seconds), become a cluster of their own, kept only when their speech as a whole
    is recognised as that person."""
    claimed = {name for name, enrolled, _ in names.values() if enrolled}
    free = [name for name in db.names() if name not in claimed]
    if not free or not claimed:
        return runs, voices
    prints = np.stack([db.voiceprint(name) for name in free])
    own = {name: db.voiceprint(name) for name in claimed}
    claims: dict[str, set[int]] = {}
    for i, (start, end, label) in enumerate(runs):
        name, enrolled, _ = names[label]
        if not enrolled or end - start < TURN_SECONDS:
            continue
        emb = turn_embedding(source, start, end, embedder, cache)
        if emb is None:
            continue
        scores = prints @ emb
        best = int(np.argmax(scores))
        if scores[best] > float(own[name] @ emb) and scores[best] >= threshold(end - start):
            claims.setdefault(free[best], set()).add(i)
    voices = dict(voices)
    for name, turns in claims.items():
        label = max(voices) + 1
        trial = [(start, end, label if i in turns else k) for i, (start, end, k) in enumerate(runs)]
        voice = speaker_embedding(source, trial, label, embedder)
        if _enrolled_name(voice, db) != name:
            continue
        left = {runs[i][2] for i in turns}
        runs, voices[label] = trial, voice
        for k in left:
            voices[k] = speaker_embedding(source, runs, k, embedder)
    in_use = {k for *_, k in runs}  # a cluster whose every turn moved is gone
    return runs, {k: v for k, v in voices.items() if k in in_use}


def _best_claimants(found: dict[int, Any]) -> dict[str, int]:
    """{enrolled name: the cluster recognised as them with the highest score} from {cluster: Recognition}."""
    best: dict[str, int] = {}
    for k, result in found.items():
        if result is not None and result.name is not None:
            if result.name not in best or result.score > found[best[result.name]].score:
                best[result.name] = k
    return best


def join_name_claimants(
    source: _Source, runs: list[tuple[float, float, int]], embedder: Any, voices: dict[int, tuple], db: Any | None
) -> tuple[list[tuple[float, float, int]], dict[int, tuple]]:
    """Two clusters the library recognises as one enrolled person, the weaker within SAME_VOICE_MARGIN of
    the stronger's score against the voiceprint, are that person: one speaker in two rooms or on two
    microphones, too far apart for merge_same_voice's half-vs-half check but both close to the voiceprint
    enrolled elsewhere. The weaker joins the stronger. A stranger who merely passes the 1:N threshold
    scores well below the person themself (0.70 against 0.97 measured for FSDD voices) and stays apart:
    name_speakers leaves them unknown."""
    found = {k: _recognise(voices[k], db) for k in sorted(voices)}
    best = _best_claimants(found)
    joins = {
        k: best[result.name]
        for k, result in found.items()
        if result is not None and result.name is not None and best[result.name] != k
        and result.score >= found[best[result.name]].score - SAME_VOICE_MARGIN
    }  # fmt: skip
    if not joins:
        return runs, voices
    runs = [(a, b, joins.get(k, k)) for a, b, k in runs]
    voices = {k: v for k, v in voices.items() if k not in joins}
    for k in set(joins.values()):
        voices[k] = speaker_embedding(source, runs, k, embedder)
    return runs, voices


def name_speakers(voices: dict[int, tuple], db: Any | None) -> dict[int, tuple[str, bool, float | None]]:
    """{cluster: (name, enrolled, score)}: recognised against the library, else unknown-1, unknown-2, ...
    The clusters are different voices by now (merge_same_voice), so an enrolled name claimed by two of them
    goes to the one most like the voiceprint; the other is a stranger who sounds like that person."""
    found = {k: _recognise(voices[k], db) for k in sorted(voices)}
    best = _best_claimants(found)
    names: dict[int, tuple[str, bool, float | None]] = {}
    # a library made before "unknown-N" was reserved (utils.speaker_db.check_new_name) may hold one: skip it,
    # or a stranger's turns would carry an enrolled person's label
    taken = {n.casefold() for n in db.names()} if db is not None else set()
    unknown = 0
    for k, result in found.items():
        if result is not None and result.name is not None and best[result.name] == k:
            names[k] = (result.name, True, float(result.score))
        else:
            unknown += 1
            while f"unknown-{unknown}" in taken:
                unknown += 1
            names[k] = (f"unknown-{unknown}", False, None if result is None else float(result.score))
    return names


# the whole


def diarize(
    source: str | os.PathLike | np.ndarray,
    embedder: Any,
    db: Any | None = None,
    num_speakers: int | None = None,
    max_speakers: int = MAX_SPEAKERS,
    window: float = 1.5,
    hop: float = 0.75,
    prune: float | None = None,
    switch_penalty: float | None = None,
) -> Diarization:
    """Diarize a file (any length, any format the loader reads) or a 16 kHz array; see the module docstring."""
    audio = _Source(source)
    name = str(source) if audio.path is not None else "audio"
    probabilities = np.concatenate(
        [speech_probabilities(wav) for _, wav in audio.chunks()] or [np.zeros(0, dtype=np.float32)]
    )
    regions = speech_regions(probabilities)
    speech = sum(b - a for a, b in regions)
    if not regions:
        raise AudioError(f"no speech detected in {name}")
    bounds = window_bounds(regions, window, hop)
    embeddings = embed_windows(audio, bounds, embedder, window)
    seconds = np.array([min(b - a, hop) for a, b in bounds])
    labels = cluster_windows(embeddings, seconds, num_speakers, max_speakers, prune)
    labels = smooth_turns(embeddings, labels, bounds, switch_penalty)
    frames = frame_labels(regions, bounds, labels, audio.duration)
    runs = frame_runs(frames)
    if num_speakers is None:
        # the 1:N point, stricter than 1:1: merging two people costs more than leaving one person split
        runs, voices = merge_same_voice(
            audio, runs, embedder, _threshold_by_length("identification", embedder, db), db=db
        )
    else:
        voices = {k: speaker_embedding(audio, runs, k, embedder) for k in sorted({r[2] for r in runs})}
    turns: dict = {}  # turn embeddings: the turn check and the enrolled claim score the same turns
    runs, voices = reassign_turns(audio, runs, embedder, voices, turns)
    if num_speakers is None:
        runs, voices = join_name_claimants(audio, runs, embedder, voices, db)
    names = name_speakers(voices, db)
    unknown = {k for k, (_, enrolled, _) in names.items() if not enrolled}
    if num_speakers is None and len(unknown) > 1:
        # two voices nobody enrolled that the 1:1 verifier calls one person are one person (a speaker
        # recorded in two sessions, whose halves can differ more than two readers do: no self-check here,
        # where no name is at stake); enrolled names already tell the others apart
        same_person = _threshold_by_length("verification", embedder, db)
        runs, voices = merge_same_voice(audio, runs, embedder, same_person, voices, unknown, self_check=False)
        names = name_speakers(voices, db)
    if num_speakers is None and db is not None and len(db):
        identified = _threshold_by_length("identification", embedder, db)
        runs, voices = claim_enrolled_turns(audio, runs, embedder, voices, names, db, identified, turns)
        names = name_speakers(voices, db)
    segments = _merge_adjacent([Segment(a, b, *names[k]) for a, b, k in runs])
    speakers: dict[str, dict[str, Any]] = {}
    for s in segments:
        entry = speakers.setdefault(s.speaker, {"enrolled": s.enrolled, "score": s.score, "seconds": 0.0, "turns": 0})
        entry["seconds"] = round(entry["seconds"] + s.end - s.start, 2)
        entry["turns"] += 1
    for entry in speakers.values():
        entry["score"] = None if entry["score"] is None else round(entry["score"], 3)
    return Diarization(segments, audio.duration, speech, len(bounds), speakers)


def _threshold_by_length(kind: str, embedder: Any, db: Any | None) -> Any:
    """seconds -> threshold of `kind` ("verification" 1:1 or "identification" 1:N): a calibrated library's,
    measured by length, else the model's operating point (utils.operating_points, its one fallback rule)."""
    if db is not None and getattr(db, "calibration", None) is not None:
        return db.verification_threshold_for if kind == "verification" else db.identification_threshold
    fixed = embedder.operating_points.resolve(kind)
    return lambda seconds: fixed


def _merge_adjacent(segments: list[Segment]) -> list[Segment]:
    """Consecutive segments of one speaker less than FILL_GAP apart become one turn."""
    out: list[Segment] = []
    for s in segments:
        if out and out[-1].speaker == s.speaker and s.start - out[-1].end < FILL_GAP:
            out[-1] = Segment(out[-1].start, s.end, s.speaker, s.enrolled, s.score)
        else:
            out.append(s)
    return out


def plot_timeline(result: Diarization, path: str | os.PathLike, title: str = "") -> None:
    """One row per speaker, a bar per segment: who spoke when."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.speakers)
    fig, ax = plt.subplots(figsize=(12, 0.6 * len(names) + 1.4))
    colours = plt.get_cmap("tab10")
    for row, name in enumerate(names):
        spans = [(s.start, s.end - s.start) for s in result.segments if s.speaker == name]
        ax.broken_barh(spans, (row - 0.35, 0.7), color=colours(row % 10))
    ax.set_yticks(
        range(len(names)), [f"{n}{'' if result.speakers[n]['enrolled'] else ' (not enrolled)'}" for n in names]
    )
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.invert_yaxis()
    ax.set_xlim(0, max(result.duration, 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_title(title or "who spoke when")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    import io

    from utils.fileio import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
