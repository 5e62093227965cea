"""The voiceprint library: a folder of recordings per person, embedded once and cached on disk.

    from utils.embedder import Embedder
    from utils.speaker_db import SpeakerDB
    db = SpeakerDB("audio_db", Embedder("models/voiceprint_resnet34.pt"))   # scans and embeds (cached)
    db.register("alice", [wav1, wav2, "alice_3.flac"])                      # arrays (16 kHz) or files
    result = db.recognize(wav)          # Recognition(name="alice" or None, score, runner_up, runner_up_score)

Layout of the folder (`root`):

    root/<name>/*.wav|flac|ogg|mp3|opus   several recordings of one person (register writes 16-bit 16 kHz WAV)
    root/<name>.wav                        the original flat layout: a person with one recording (still read)
    root/.voiceprint_cache.npz             embeddings + a JSON index, one file (np.savez, loaded without pickle)
    root/.lock                             fcntl.flock lock taken around every write
    root/.staging/, root/.voiceprint_journal.json   a registration or removal in progress (see below)

Cache: one .npz holding `embeddings` (N, D) float32 and `index`, UTF-8 JSON bytes
{"version", "model", "dim", "files": [{"path", "size", "mtime_ns", "row"}]} (`row` -1
marks a file that failed to decode, so it is not retried until it changes). Both live in
the same file, so a crash can never pair an index with the wrong matrix. Entries are
keyed by the path relative to `root` plus (size, mtime_ns): only new or changed files
are embedded again. `model` is the sha256 of the model file (plus the VAD setting); a
different model throws the whole cache away. An unreadable cache is a warning and a
rebuild, never an error.

Concurrency: register/remove/cache writes hold an exclusive flock on root/.lock and
re-read the folder and the cache after taking it, so two processes enrolling at the
same time both keep their speakers and neither loses the other's cache entries.
Inside one process a re-entrant thread lock serialises writers; readers
(`recognize`) use an immutable snapshot and never wait.

All-or-nothing writes: a registration first writes its recordings into root/.staging/, then
commits by writing one journal file (atomically) that lists the renames; a removal's journal
lists the recordings to delete. The journal is then carried out and deleted. A kill or Ctrl-C
before the commit leaves the old library (staged files are cleaned at the next write), after
it the next open finishes the journal: either the old or the new state, never a mix. Removal
deletes only the speaker's recordings (audio files); anything else in the folder is left
alone and reported. Symlinks that lead outside the library are ignored with a warning.

A person's voiceprint is the L2-normalised mean of their recording embeddings;
recognition is one matrix product of the query with all voiceprints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import threading
import unicodedata
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utils.audio import (
    AUDIO_EXTENSIONS,
    MIN_SPEECH_SECONDS,
    SAMPLE_RATE,
    AudioError,
    Recording,
    SpeechReport,
    as_float_audio,
    check_speech,
    load_audio,
    prepare_recording,
    require_speech,
)
from utils.calibration import (
    PIECE_SECONDS,
    LibraryCalibration,
    Piece,
    calibrate_library,
    load_calibration,
    save_calibration,
)
from utils.errors import UserError
from utils.operating_points import FALLBACK, OperatingPoints

if TYPE_CHECKING:
    from utils.embedder import Embedder

CACHE_NAME = ".voiceprint_cache.npz"
LOCK_NAME = ".lock"
JOURNAL_NAME = ".voiceprint_journal.json"
STAGING_NAME = ".staging"
CACHE_VERSION = 1
MAX_NAME_CHARS = 64
MAX_NAME_BYTES = 200  # below NAME_MAX (255) even with a ".wav" suffix
INVISIBLE_CATEGORIES = ("Cf", "Co", "Cn", "Zl", "Zp")
# labels of people nobody enrolled, matched on the NFKC form with any dash, digit and space ("no\xa0speech",
# "unknown\u20111" and "unknown-١" look the same on a page)
RESERVED_NAME = re.compile(r"unknown(\s*[-\u2010-\u2015\u2212\ufe58\ufe63\uff0d]\s*\d+)?|no\s+speech", re.IGNORECASE)
MIN_REGISTER_SECONDS = 1.0  # an enrolment shorter than this gives a poor voiceprint


class SpeakerDBError(UserError, ValueError):
    """Bad name, unknown speaker, unusable library folder; the message is one line for the user."""


class CacheWarning(UserWarning):
    """The embedding cache could not be read or written; it is rebuilt (or skipped), nothing is lost."""


class UnknownSpeakerError(SpeakerDBError):
    """A name with no recordings in the library."""


class SpeakerExistsError(SpeakerDBError):
    """A new registration under a name that is taken (adding recordings must be explicit)."""


class VoiceMismatchError(SpeakerDBError):
    """Recordings offered for an existing speaker that are not recognised as that speaker."""


class LibraryWarning(UserWarning):
    """Something in the library folder is ignored (a symlink leading outside it)."""


# names


def validate_name(name: str) -> str:
    """The stripped, NFC-normalised name, or SpeakerDBError when it could not safely be a folder name inside
    the library. NFC: "Zoë" typed as e + combining diaeresis (macOS, some browsers) is the same speaker.
    Normalised before the length checks: NFC can lengthen a name (U+0958 becomes two code points)."""
    if isinstance(name, str):
        name = unicodedata.normalize("NFC", name)
    return _checked_name(name)


def check_new_name(name: str) -> str:
    """validate_name, and not a label the toolkit gives people who are not enrolled ("unknown", "unknown-2",
    "no speech"): an enrolled "unknown-1" would be told apart from diarization's first stranger by nothing
    but a flag, and in RTTM or live mode not at all."""
    name = validate_name(name)
    if RESERVED_NAME.fullmatch(unicodedata.normalize("NFKC", name)):
        raise SpeakerDBError(f"speaker name {name!r} is reserved for people who are not enrolled: choose another")
    return name


def _checked_name(name: str) -> str:
    if not isinstance(name, str):
        raise SpeakerDBError(f"speaker name must be text, got {type(name).__name__}")
    clean = name.strip()
    shown = repr(clean[:40] + ("..." if len(clean) > 40 else ""))
    if not clean:
        raise SpeakerDBError("speaker name is empty")
    if len(clean) > MAX_NAME_CHARS:
        raise SpeakerDBError(f"speaker name is too long: {len(clean)} characters (at most {MAX_NAME_CHARS})")
    if "/" in clean or "\\" in clean:
        raise SpeakerDBError(f"speaker name {shown} must not contain '/' or '\\'")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in clean):  # NUL, newlines, escapes, lone surrogates
        raise SpeakerDBError(f"speaker name {shown} contains control characters")
    if any(unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in clean):
        # zero-width joiners/spaces, bidi overrides ('admin\u202egnp.exe' shows as 'adminexe.png'), BOMs,
        # private-use and unassigned code points: names that look like another name
        raise SpeakerDBError(f"speaker name {shown} contains invisible or text-direction characters")
    if clean.startswith("."):  # also '.' and '..'; dot-files are the library's own (cache, lock)
        raise SpeakerDBError(f"speaker name {shown} must not start with '.'")
    if len(clean.encode("utf-8")) > MAX_NAME_BYTES:
        raise SpeakerDBError(f"speaker name is too long: {len(clean.encode('utf-8'))} bytes (at most {MAX_NAME_BYTES})")
    return clean


def _is_valid_name(name: str) -> bool:
    """Folder names on disk are taken as they are (an older library may hold decomposed names)."""
    try:
        return _checked_name(name) == name
    except SpeakerDBError:
        return False


# results


@dataclass
class Recognition:
    """Who spoke: `name` is None ("unknown") when the best score is below the threshold.

    `runner_up` is always the second-ranked speaker (None with one speaker); `best`
    is the top-ranked speaker even when it is below the threshold.
    """

    name: str | None
    score: float
    runner_up: str | None
    runner_up_score: float | None
    best: str | None = None
    threshold: float | None = None
    speech: SpeechReport | None = None  # what the recording held (net speech seconds, level, SNR)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "score": self.score,
            "runner_up": self.runner_up,
            "runner_up_score": self.runner_up_score,
            "best": self.best,  # the top-ranked speaker, also when `name` is None (unknown)
            "threshold": self.threshold,  # the one this recording was judged at (calibrated: by its length)
            "speech_seconds": None if self.speech is None else round(self.speech.speech_seconds, 3),
        }


ENOUGH_SPEECH_SECONDS = 3.0  # a voiceprint from less speech than this is unreliable: ask for more


@dataclass
class Enrolment:
    """What a registration did and how good it is: per-recording speech reports, each new recording's
    similarity to the speaker's other recordings, and warnings a user can act on."""

    name: str
    count: int  # recordings the speaker has now
    reports: list[SpeechReport]  # of the new recordings, in order
    consistency: list[float | None]  # cosine to the mean of the speaker's other recordings (None: no other)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "recordings": self.count,
            "new": [
                {**r.to_dict(), "consistency": None if c is None else round(c, 3)}
                for r, c in zip(self.reports, self.consistency)
            ],  # fmt: skip
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class _Entry:
    """One recording on disk: where, which version (size, mtime_ns), its embedding (None: it failed)."""

    speaker: str
    size: int
    mtime_ns: int
    embedding: np.ndarray | None
    error: str | None = None


@dataclass(frozen=True)
class _Snapshot:
    """What recognition reads: replaced as a whole, so a reader never sees half an update."""

    names: tuple[str, ...]
    counts: dict[str, int]
    voiceprints: np.ndarray  # (S, D), L2-normalised rows in the order of `names`


# the library


class SpeakerDB:
    """A folder of speakers' recordings with cached embeddings; see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike,
        embedder: Embedder | None,
        threshold: float | None = None,
        sync: bool = True,
    ) -> None:
        """Open (and by default sync) the library; `embedder=None` opens it for listing/removing only."""
        self.root = Path(root)
        if self.root.is_symlink() and not self.root.exists():
            raise SpeakerDBError(
                f"speaker library {self.root} is a symlink to {os.readlink(self.root)}, which does not exist"
            )
        if self.root.exists() and not self.root.is_dir():
            raise SpeakerDBError(f"speaker library {self.root} is not a folder")
        self.embedder = embedder
        # the 1:N operating point (utils/operating_points.py); without a model nothing is scored
        points = embedder.operating_points if embedder is not None else OperatingPoints(identification=FALLBACK)
        self.fingerprint = model_fingerprint(embedder) if embedder is not None else None
        # thresholds measured on this library's own recordings (--calibrate) win over the model's
        self.calibration = load_calibration(self.root, self.fingerprint) if embedder is not None else None
        if self.calibration is not None:
            points = OperatingPoints(self.calibration.verification, self.calibration.identification, "this library")
        self.threshold = points.resolve("identification", threshold)
        self._threshold_given = threshold is not None  # a user's threshold is not replaced by calibration
        # 1:1: how alike two recordings of one person must be (contrast, enrolment consistency checks)
        self.verification_threshold = points.verification if points.verification is not None else FALLBACK
        self._entries: dict[str, _Entry] = {}  # relative path -> entry
        self._cache_damaged = False  # the cache file could not be read: rewrite it even if nothing changed
        self._disk_state: tuple | None = None  # _disk_token() after the last sync: refresh() compares with it
        self._mutex = threading.RLock()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._warned: set[str] = set()  # symlinks already warned about
        self._snapshot = _Snapshot((), {}, np.zeros((0, 0), dtype=np.float32))
        self.embedded_at_load = self.sync() if sync else 0

    @property
    def cache_path(self) -> Path:
        return self.root / CACHE_NAME

    # reading

    def names(self) -> list[str]:
        return list(self._snapshot.names)

    def counts(self) -> dict[str, int]:
        """Usable recordings per speaker (files that failed to decode are not counted)."""
        return dict(self._snapshot.counts)

    def __len__(self) -> int:
        return len(self._snapshot.names)

    def __contains__(self, name: object) -> bool:
        return name in self._snapshot.counts

    def voiceprint(self, name: str) -> np.ndarray:
        snapshot = self._snapshot
        if name not in snapshot.counts:
            raise SpeakerDBError(f"unknown speaker: {name}")
        return snapshot.voiceprints[snapshot.names.index(name)].copy()

    # syncing with the folder

    def sync(self) -> int:
        """Scan the folder, embed only new or changed files, drop removed ones; returns how many were embedded."""
        with self._locked(write=False):
            return self._sync_locked()

    def refresh(self) -> int:
        """Sync only if another process changed the library since our last sync (two stat calls otherwise).

        Every change made through SpeakerDB (register, remove, here or in another process) rewrites the
        cache file or the folder listing; recordings copied into an existing speaker's folder by hand are
        picked up by sync() (a restart, or GET /speakers in the server).
        """
        if self._disk_state is not None and self._disk_token() == self._disk_state:
            return 0
        return self.sync()

    def _disk_token(self) -> tuple:
        def stamp(path: Path) -> tuple | None:
            try:
                st = path.stat()
            except OSError:
                return None
            return st.st_ino, st.st_mtime_ns, st.st_size

        return stamp(self.root), stamp(self.cache_path)

    def _sync_locked(self, extra: dict[str, _Entry] | None = None) -> int:
        """The body of sync; the caller holds the lock. `extra`: entries already embedded (just registered)."""
        if (self.root / JOURNAL_NAME).is_file() and self._lock_fd is not None:
            self._finish_journal()  # a registration or removal committed by a process that was killed
        on_disk_cache = self._read_cache()
        files = self._scan()
        entries: dict[str, _Entry] = {}
        todo: list[tuple[str, str, int, int]] = []
        for rel, (speaker, size, mtime_ns) in files.items():
            known = None
            for source in (extra or {}, self._entries, on_disk_cache or {}):
                candidate = source.get(rel)
                if candidate is not None and (candidate.size, candidate.mtime_ns) == (size, mtime_ns):
                    known = candidate
                    break
            if known is not None:
                entries[rel] = _Entry(speaker, size, mtime_ns, known.embedding, known.error)
            else:
                todo.append((rel, speaker, size, mtime_ns))
        if todo and self.embedder is None:
            for rel, speaker, size, mtime_ns in todo:  # listing only: count the file, embed it some other time
                entries[rel] = _Entry(speaker, size, mtime_ns, None)
            todo = []
        embedded = 0
        for rel, speaker, size, mtime_ns in todo:
            try:
                emb = self.embedder.embed_file(self.root / rel)
                entries[rel] = _Entry(speaker, size, mtime_ns, np.asarray(emb, dtype=np.float32))
                embedded += 1
            except AudioError as exc:
                warnings.warn(f"skipping {self.root / rel}: {exc}", CacheWarning, stacklevel=3)
                entries[rel] = _Entry(speaker, size, mtime_ns, None, str(exc))
        self._entries = entries
        stale = on_disk_cache is None or self._cache_damaged or _differs(entries, on_disk_cache)
        if self.embedder is not None and stale:
            self._write_cache()
        self._rebuild_snapshot()
        self._disk_state = self._disk_token()  # under the lock: no other writer can change it meanwhile
        return embedded

    def _scan(self) -> dict[str, tuple[str, int, int]]:
        """relative path -> (speaker, size, mtime_ns) for every recording in the folder.

        Speaker names are NFC-normalised (a folder written in decomposed form by another system is the same
        speaker); symlinks that lead outside the library are ignored with a warning."""
        found: dict[str, tuple[str, int, int]] = {}
        if not self.root.is_dir():
            return found
        for item in sorted(os.scandir(self.root), key=lambda e: e.name):
            if item.name.startswith("."):
                continue
            try:
                if not self._inside(item):
                    continue
                if item.is_dir():
                    if not _is_valid_name(item.name):
                        continue
                    speaker = unicodedata.normalize("NFC", item.name)
                    for sub in sorted(os.scandir(item.path), key=lambda e: e.name):
                        if _is_audio(sub.name) and sub.is_file() and self._inside(sub):
                            st = sub.stat()
                            found[f"{item.name}/{sub.name}"] = (speaker, st.st_size, st.st_mtime_ns)
                elif _is_audio(item.name) and item.is_file():
                    speaker = Path(item.name).stem  # the original flat layout: root/<name>.wav
                    if _is_valid_name(speaker):
                        st = item.stat()
                        found[item.name] = (unicodedata.normalize("NFC", speaker), st.st_size, st.st_mtime_ns)
            except OSError:  # removed while we looked (another process): the next sync sees the new state
                continue
        return found

    def _inside(self, entry: os.DirEntry) -> bool:
        """False (with one warning) for a symlink whose target is outside the library or does not exist."""
        if not entry.is_symlink():
            return True
        target = os.path.realpath(entry.path)
        root = os.path.realpath(self.root)
        if os.path.commonpath([target, root]) == root and os.path.exists(target):
            return True
        if entry.path not in self._warned:
            self._warned.add(entry.path)
            warnings.warn(f"ignoring {entry.path}: a symlink leading outside the library", LibraryWarning, stacklevel=5)
        return False

    def _folder_of(self, name: str) -> Path:
        """The speaker's folder on disk: root/<name>, or a folder whose name is `name` in another Unicode form."""
        direct = self.root / name
        if direct.exists() or direct.is_symlink() or not self.root.is_dir():
            return direct
        for entry in os.scandir(self.root):
            if unicodedata.normalize("NFC", entry.name) == name and entry.is_dir(follow_symlinks=False):
                return Path(entry.path)
        return direct

    # all-or-nothing writes: stage, commit one journal, carry it out (see the module docstring)

    def _commit(self, journal: dict[str, list]) -> None:
        """Write the journal (the commit point) and carry it out; the caller holds the write lock."""
        from utils.fileio import atomic_write_json, deferred_interrupt

        with deferred_interrupt():  # Ctrl-C waits for the few renames that belong together
            atomic_write_json(self.root / JOURNAL_NAME, journal)
            self._finish_journal()

    def _finish_journal(self) -> None:
        """Carry out a committed journal left by this or a killed process (idempotent), then delete it."""
        from utils.fileio import fsync_dir

        path = self.root / JOURNAL_NAME
        if not path.is_file():
            return
        try:
            journal = json.loads(path.read_text(encoding="utf-8"))
            moves = [(self._within(a), self._within(b)) for a, b in journal.get("add", [])]
            deletes = [self._within(rel) for rel in journal.get("delete", [])]
            folders = [self._within(rel) for rel in journal.get("rmdir", [])]
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            warnings.warn(f"ignoring unreadable {path}: {exc}", LibraryWarning, stacklevel=4)
            return
        try:
            for source, target in moves:
                if source.is_file():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, target)
            for target in deletes:
                target.unlink(missing_ok=True)  # a symlinked speaker folder: the link itself, never its target
            for folder in folders:
                try:
                    folder.rmdir()  # only when nothing but the removed recordings was in it
                except OSError:
                    pass
            fsync_dir(self.root)
            path.unlink()
        except OSError as exc:
            raise SpeakerDBError(f"cannot finish the library change in {self.root}: {exc.strerror}") from None

    def _within(self, rel: str) -> Path:
        """A journal path, refused unless it stays inside the library."""
        if not isinstance(rel, str) or os.path.isabs(rel) or ".." in Path(rel).parts or not rel:
            raise ValueError(f"path {rel!r} leaves the library")
        return self.root / rel

    def _clear_staging(self) -> None:
        """Staged files of a registration that never committed (killed or interrupted before its journal)."""
        staging = self.root / STAGING_NAME
        if staging.is_dir() and not staging.is_symlink():
            for stale in staging.iterdir():
                if stale.is_file() or stale.is_symlink():
                    stale.unlink(missing_ok=True)

    def _rebuild_snapshot(self) -> None:
        groups: dict[str, list[np.ndarray]] = {}
        for entry in self._entries.values():
            if entry.error is None:
                groups.setdefault(entry.speaker, []).append(entry.embedding)
        names = tuple(sorted(groups))
        counts = {name: len(groups[name]) for name in names}
        if self.embedder is None or not names:  # nothing to compare with (or no model to compare)
            self._snapshot = _Snapshot(names, counts, np.zeros((0, self._dim()), dtype=np.float32))
            return
        means = np.stack([np.mean(np.stack(groups[name]), axis=0) for name in names]).astype(np.float32)
        means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-12
        self._snapshot = _Snapshot(names, counts, means)

    def _dim(self) -> int:
        return int(getattr(self.embedder, "embedding_dim", 0) or 0)

    # recognition

    def recognize(self, wav: np.ndarray | str | os.PathLike | Recording, sample_rate: int = SAMPLE_RATE) -> Recognition:
        """Who is speaking in `wav` (an array at `sample_rate`, an audio file, or a prepared Recording)."""
        if self.embedder is None:
            raise SpeakerDBError("this library was opened without a model: it cannot recognise")
        if len(self) == 0:
            raise SpeakerDBError(f"no speakers registered in {self.root}: register someone first")
        if isinstance(wav, Recording):
            emb, speech = self.embedder.embed_recording(wav)
        elif isinstance(wav, (str, os.PathLike)):
            emb, speech = self.embedder.embed_file_report(wav)
        else:
            emb, speech = self.embedder.embed_array_report(as_float_audio(wav), sample_rate)
        seconds = None if speech is None else speech.speech_seconds
        return dataclasses.replace(self.recognize_embedding(emb, seconds), speech=speech)

    def identification_threshold(self, speech_seconds: float | None = None) -> float:
        """The 1:N threshold for a recording with this much net speech (calibrated libraries measure it by
        length: short recordings score lower for the right speaker too)."""
        if self.calibration is None or self._threshold_given:
            return self.threshold
        return self.calibration.identification_at(speech_seconds)

    def verification_threshold_for(self, speech_seconds: float | None = None) -> float:
        """The 1:1 threshold for a pair whose shorter recording holds this much net speech."""
        if self.calibration is None:
            return self.verification_threshold
        return self.calibration.verification_at(speech_seconds)

    def recognize_embedding(self, emb: np.ndarray, speech_seconds: float | None = None) -> Recognition:
        """Best and second-best speaker for one embedding: one matrix product, no loop over speakers."""
        snapshot = self._snapshot
        if not snapshot.names:
            raise SpeakerDBError(f"no speakers registered in {self.root}: register someone first")
        emb = np.asarray(emb, dtype=np.float32).reshape(-1)
        if emb.shape[0] != snapshot.voiceprints.shape[1]:
            raise SpeakerDBError(
                f"embedding has {emb.shape[0]} dimensions but the library's voiceprints have "
                f"{snapshot.voiceprints.shape[1]}"
            )
        emb = emb / (np.linalg.norm(emb) + 1e-12)
        scores = snapshot.voiceprints @ emb
        order = np.argsort(-scores)[:2]
        best = snapshot.names[order[0]]
        score = float(scores[order[0]])
        runner_up = snapshot.names[order[1]] if len(order) > 1 else None
        runner_up_score = float(scores[order[1]]) if len(order) > 1 else None
        threshold = self.identification_threshold(speech_seconds)
        name = best if score >= threshold else None
        return Recognition(name, score, runner_up, runner_up_score, best=best, threshold=threshold)

    def calibrate(self) -> LibraryCalibration:
        """Measure the 1:1 and 1:N thresholds on the enrolled recordings, store them in the library folder
        (used by every later recognition, the server and infer_contrast.py --audio_db) and apply them."""
        if self.embedder is None:
            raise SpeakerDBError("this library was opened without a model: it cannot be calibrated")
        self.sync()
        entries = [e for e in self._entries.values() if e.embedding is not None]
        embeddings = np.stack([e.embedding for e in entries]) if entries else np.zeros((0, self._dim()))
        keys = [k for k, e in self._entries.items() if e.embedding is not None]
        pieces, seconds = self._calibration_pieces(keys) if len(entries) else ({}, None)
        calibration = calibrate_library(
            embeddings, [e.speaker for e in entries], self.fingerprint or "", pieces, seconds
        )
        with self._locked(write=True):
            save_calibration(self.root, calibration)
        self.calibration = calibration
        self.threshold, self.verification_threshold = calibration.identification, calibration.verification
        return calibration

    def _calibration_pieces(self, keys: list[str]) -> tuple[dict[float, list[Piece]], list[float] | None]:
        """Each enrolled recording cut into pieces of PIECE_SECONDS (those with speech, embedded), and each
        recording's own net speech seconds; ({}, None) when a recording cannot be read back."""
        pieces: dict[float, list[Piece]] = {cut: [] for cut in PIECE_SECONDS}
        seconds = []
        for index, key in enumerate(keys):
            try:
                wav = load_audio(self.root / key)
                seconds.append(check_speech(wav, SAMPLE_RATE, MIN_SPEECH_SECONDS, key).speech_seconds)
            except AudioError:
                return {}, None
            for cut in PIECE_SECONDS:
                size = int(cut * SAMPLE_RATE)
                for start in range(0, len(wav) - size + 1, size):
                    piece = wav[start : start + size]
                    try:
                        report = check_speech(piece, SAMPLE_RATE, MIN_SPEECH_SECONDS)
                    except AudioError:
                        continue  # a pause: no piece
                    embedding = self.embedder.embed_waveforms([piece])[0]
                    pieces[cut].append(Piece(embedding, index, report.speech_seconds))
        return pieces, seconds

    # writing

    def register(
        self,
        name: str,
        recordings: Sequence[np.ndarray | str | os.PathLike],
        sample_rate: int = SAMPLE_RATE,
    ) -> int:
        """Add recordings of `name` (see `enrol`); returns how many recordings the speaker has now."""
        return self.enrol(name, recordings, sample_rate).count

    def enrol(
        self,
        name: str,
        recordings: Sequence[np.ndarray | str | os.PathLike | Recording],
        sample_rate: int = SAMPLE_RATE,
        add: bool | None = None,
    ) -> Enrolment:
        """Save each recording as root/<name>/<timestamp-uuid>.wav (16-bit, 16 kHz), embed it, and judge it.

        Everything is decoded, checked (speech by silero-vad: at least MIN_REGISTER_SECONDS of it per
        recording) and embedded before anything is written, so a bad recording leaves the library untouched.
        `add`: None creates the speaker or adds to them (the owner at the command line); False only creates
        (SpeakerExistsError when the name is taken); True only adds, and every recording must be recognised
        as `name` at the library's 1:N threshold (VoiceMismatchError otherwise): nobody can slip their own
        voice into someone else's voiceprint.
        """
        if self.embedder is None:
            raise SpeakerDBError("this library was opened without a model: it cannot register")
        name = validate_name(name)
        if name not in self.names():  # an older library's "unknown-1" may still be added to
            check_new_name(name)
        if isinstance(recordings, (str, os.PathLike, np.ndarray, Recording)):
            recordings = [recordings]
        recordings = list(recordings)
        if not recordings:
            raise SpeakerDBError(f"no recordings given for {name}")
        prepared: list[tuple[bytes, np.ndarray]] = []
        reports: list[SpeechReport] = []
        for i, recording in enumerate(recordings):
            prepared_recording = self._load_recording(recording, sample_rate, i)
            pcm = (np.clip(prepared_recording.wav, -1.0, 1.0) * 32767.0).round().astype("<i2")
            # embed exactly what is stored (16-bit), so a later re-embed of the file gives the same vector;
            # already checked for speech: no second pass of the detector
            stored = Recording(pcm.astype(np.float32) / 32767.0, prepared_recording.report)
            emb = self.embedder.embed_recording(stored)[0]
            prepared.append((_wav_bytes(pcm), np.asarray(emb, dtype=np.float32)))
            reports.append(prepared_recording.report)
        from utils.fileio import atomic_write_bytes, remove_stale_temp_files

        with self._locked(write=True):
            self._sync_locked()  # finishes a journal a killed writer left, sees the current speakers
            self._check_add(name, add, [emb for _, emb in prepared], reports)
            remove_stale_temp_files(self.root)  # under the write lock: no other writer is active
            self._clear_staging()
            twins = [n for n in self.names() if n != name and n.casefold() == name.casefold()]
            if twins:
                raise SpeakerDBError(
                    f"speaker name {name!r} differs from the registered {twins[0]!r} only in letter case: "
                    f"use {twins[0]!r} to add recordings, or another name"
                )
            folder = self._folder_of(name)
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise SpeakerDBError(f"cannot register {name}: {folder} exists and is not a folder")
            prepared, reports, skipped = self._drop_duplicates(folder, prepared, reports)
            moves, extra = [], {}
            for data, _ in prepared:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
                file_name = f"{stamp}-{uuid.uuid4().hex[:12]}.wav"
                atomic_write_bytes(self.root / STAGING_NAME / file_name, data)
                moves.append([f"{STAGING_NAME}/{file_name}", f"{folder.name}/{file_name}"])
            if moves:
                self._commit({"add": moves})
            for (_, emb), (_, rel) in zip(prepared, moves):
                st = (self.root / rel).stat()
                extra[rel] = _Entry(name, st.st_size, st.st_mtime_ns, emb)
            self._sync_locked(extra)
        enrolment = self._judge(name, [emb for _, emb in prepared], reports, list(extra))
        enrolment.warnings[:0] = skipped
        return enrolment

    def _check_add(self, name: str, add: bool | None, new: list[np.ndarray], reports: list[SpeechReport]) -> None:
        if add is None:
            return
        exists = name in self._snapshot.counts
        if not add and exists:
            raise SpeakerExistsError(
                f"speaker {name} is already registered: adding recordings to them must be explicit "
                "(add=true), and they must match their voiceprint"
            )
        if add and not exists:
            raise UnknownSpeakerError(f"unknown speaker: {name} (register them first)")
        if add:
            voiceprint = self.voiceprint(name)
            for i, (emb, report) in enumerate(zip(new, reports)):
                score = float(emb @ voiceprint)
                threshold = self.identification_threshold(report.speech_seconds)
                if score < threshold:
                    raise VoiceMismatchError(
                        f"recording {i + 1} does not match {name}'s voiceprint (similarity {score:.2f} < "
                        f"{threshold:.2f}): nothing added"
                    )

    def _drop_duplicates(
        self, folder: Path, prepared: list[tuple[bytes, np.ndarray]], reports: list[SpeechReport]
    ) -> tuple[list[tuple[bytes, np.ndarray]], list[SpeechReport], list[str]]:
        """Recordings identical (same content) to one the speaker already has, or to an earlier one of the
        same call, are not added twice: a voiceprint must not count one take as several."""
        seen = set()
        if folder.is_dir():
            for item in folder.iterdir():
                if _is_audio(item.name) and item.is_file() and not item.is_symlink():
                    seen.add(hashlib.sha256(item.read_bytes()).hexdigest())
        kept, kept_reports, skipped = [], [], []
        for i, ((data, emb), report) in enumerate(zip(prepared, reports)):
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                skipped.append(f"recording {i + 1} is identical to one already enrolled: not added again")
                continue
            seen.add(digest)
            kept.append((data, emb))
            kept_reports.append(report)
        if not kept:
            raise SpeakerDBError(f"every recording given is already enrolled for {folder.name}: nothing added")
        return kept, kept_reports, skipped

    def _judge(self, name: str, new: list[np.ndarray], reports: list[SpeechReport], keys: list[str]) -> Enrolment:
        """Consistency of each new recording with the speaker's others, and the warnings to show."""
        entries = [e for key, e in self._entries.items() if e.speaker == name and e.embedding is not None]
        others_of = {key: [e.embedding for k, e in self._entries.items() if e.speaker == name and k != key
                           and e.embedding is not None] for key in keys}  # fmt: skip
        consistency: list[float | None] = []
        for emb, key in zip(new, keys):
            others = others_of[key]
            if not others:
                consistency.append(None)
                continue
            mean = np.mean(others, axis=0)
            consistency.append(float(emb @ (mean / (np.linalg.norm(mean) + 1e-12))))
        limit = self.verification_threshold
        warnings_ = []
        for i, (report, score) in enumerate(zip(reports, consistency)):
            label = f"recording {i + 1}"
            warnings_ += [f"{label}: {problem}" for problem in report.problems()]
            if score is not None and score < limit:
                warnings_.append(f"{label} does not sound like {name}'s other recordings (similarity {score:.2f} < "
                                 f"{limit:.2f}): a different person, or a broken microphone?")  # fmt: skip
        speech = sum(r.speech_seconds for r in reports)
        if len(entries) == len(new) and speech < ENOUGH_SPEECH_SECONDS:
            warnings_.append(f"only {speech:.1f} s of speech: record more (at least {ENOUGH_SPEECH_SECONDS:g} s in "
                             "total, from 2-3 recordings) for a reliable voiceprint")  # fmt: skip
        return Enrolment(name, self._snapshot.counts.get(name, 0), reports, consistency, warnings_)

    def _load_recording(
        self, recording: np.ndarray | str | os.PathLike | Recording, sample_rate: int, index: int
    ) -> Recording:
        name = None if isinstance(recording, (str, os.PathLike)) else f"recording {index + 1}"
        if isinstance(recording, Recording):  # prepared by the caller (the server): checked once, not twice
            require_speech(recording.report, MIN_REGISTER_SECONDS, name)
            return recording
        return prepare_recording(
            recording, sample_rate, name, min_seconds=MIN_REGISTER_SECONDS, min_speech_seconds=MIN_REGISTER_SECONDS
        )

    def remove(self, name: str) -> list[str]:
        """Delete a speaker's recordings (root/<name>/ audio files, a legacy root/<name>.<ext>) in one
        all-or-nothing step; SpeakerDBError when `name` has no recordings here. Anything else in the speaker's
        folder is left alone: returns those names (the folder itself stays then)."""
        name = validate_name(name)
        with self._locked(write=True):
            self._sync_locked()
            folder = self._folder_of(name)
            recordings = sorted(rel for rel, entry in self._entries.items() if entry.speaker == name)
            if folder.is_symlink():
                recordings = [r for r in recordings if not r.startswith(f"{folder.name}/")] + [folder.name]
            if not recordings:
                if folder.is_dir():
                    raise SpeakerDBError(
                        f"{name} is not an enrolled speaker: {folder} holds no recordings (nothing removed)"
                    )
                raise UnknownSpeakerError(f"unknown speaker: {name}")
            gone = set(recordings)
            left = []
            if folder.is_dir() and not folder.is_symlink():
                left = sorted(p.name for p in folder.iterdir() if f"{folder.name}/{p.name}" not in gone)
            self._commit({"delete": recordings, "rmdir": [folder.name] if folder.is_dir() else []})
            self._sync_locked()
        return left

    # lock

    @contextmanager
    def _locked(self, write: bool) -> Iterator[None]:
        """Exclusive flock on root/.lock (re-entrant in this process). Without a writable folder: no lock."""
        with self._mutex:
            if self._lock_depth == 0:
                self._lock_fd = self._open_lock(create=write)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    _release(self._lock_fd)
                    self._lock_fd = None

    def _open_lock(self, create: bool) -> int | None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; single-process use only
            return None
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            return None
        try:
            fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if create and (self.root / LOCK_NAME).is_dir():
                raise SpeakerDBError(
                    f"{self.root / LOCK_NAME} is a folder, not the library's lock file: move it away"
                ) from None
            if create:
                raise SpeakerDBError(f"cannot write to the speaker library {self.root}: {exc.strerror}") from None
            return None  # a read-only library can still be read
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    # cache

    def _read_cache(self) -> dict[str, _Entry] | None:
        """Entries from the cache file for this model; None when it is missing, unreadable or for another model."""
        if self.embedder is None:
            return None
        path = self.cache_path
        self._cache_damaged = False
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                index = json.loads(bytes(data["index"]).decode("utf-8"))
                embeddings = np.asarray(data["embeddings"], dtype=np.float32)
            if index.get("version") != CACHE_VERSION:
                return None
            if index.get("model") != self.fingerprint:
                return None  # another model: every file is embedded again
            dim = self._dim()
            if embeddings.ndim != 2 or (dim and embeddings.shape[1] != dim and len(embeddings)):
                raise ValueError(f"embeddings have shape {embeddings.shape}")
            entries: dict[str, _Entry] = {}
            for item in index["files"]:
                row = int(item["row"])
                emb = embeddings[row].copy() if row >= 0 else None
                error = None if row >= 0 else str(item.get("error", "could not be embedded"))
                if emb is not None and not np.isfinite(emb).all():
                    raise ValueError(f"non-finite embedding for {item['path']}")
                entries[str(item["path"])] = _Entry(
                    str(item.get("speaker", "")), int(item["size"]), int(item["mtime_ns"]), emb, error
                )
        except Exception as exc:  # any damage (truncated zip, bad JSON, wrong keys): rebuild, never fail
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"embedding cache {path} is unreadable ({reason}); rebuilding it", CacheWarning, stacklevel=4)
            self._cache_damaged = True
            return {}
        return entries

    def _write_cache(self) -> None:
        """Write the cache atomically; the caller holds the lock. A read-only folder only costs a warning."""
        if not self.root.is_dir():
            return
        files, rows = [], []
        for rel, entry in sorted(self._entries.items()):
            item: dict[str, Any] = {"path": rel, "speaker": entry.speaker, "size": entry.size}
            item["mtime_ns"] = entry.mtime_ns
            if entry.error is None:
                item["row"] = len(rows)
                rows.append(entry.embedding)
            else:
                item["row"] = -1
                item["error"] = entry.error
            files.append(item)
        dim = self._dim() or (len(rows[0]) if rows else 0)
        embeddings = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), dtype=np.float32)
        index = {"version": CACHE_VERSION, "model": self.fingerprint, "dim": dim, "files": files}
        from utils.fileio import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez(buffer, embeddings=embeddings, index=np.frombuffer(json.dumps(index).encode("utf-8"), np.uint8))
        try:
            atomic_write_bytes(self.cache_path, buffer.getvalue())
        except OSError as exc:
            warnings.warn(f"cannot write embedding cache {self.cache_path}: {exc.strerror}", CacheWarning, stacklevel=4)


# helpers


def _release(fd: int) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _is_audio(file_name: str) -> bool:
    return not file_name.startswith(".") and Path(file_name).suffix.lower() in AUDIO_EXTENSIONS


def _differs(entries: dict[str, _Entry], cached: dict[str, _Entry]) -> bool:
    if entries.keys() != cached.keys():
        return True
    return any((e.size, e.mtime_ns) != (cached[k].size, cached[k].mtime_ns) for k, e in entries.items())


def _wav_bytes(pcm: np.ndarray) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def model_fingerprint(embedder: Any) -> str:
    """sha256 of the model file (3 MB: ~10 ms) plus the settings that change embeddings."""
    explicit = getattr(embedder, "fingerprint", None)
    if isinstance(explicit, str):
        return explicit
    digest = hashlib.sha256()
    model_path = getattr(embedder, "model_path", None)
    if model_path and Path(model_path).is_file():
        with open(model_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:  # an in-memory embedder: fall back to its description
        digest.update(repr(getattr(embedder, "info", type(embedder).__name__)).encode())
    digest.update(f"|vad={bool(getattr(embedder, 'vad', False))}".encode())
    return digest.hexdigest()
