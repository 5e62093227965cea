r"""Create the training and test lists from a speech corpus.

Usage:
    # the original zhvoice layout: <dir>/text/infodata.json + MP3 files
    python create_data.py --dataset_dir dataset/zhvoice
    # one folder per speaker (VoxCeleb, CN-Celeb, LibriSpeech <spk>/<chapter>/*.flac)
    python create_data.py --dataset_dir ../shared/data/librispeech/dev-clean --dataset_format folder
    # all files in one folder, the speaker is in the file name
    python create_data.py --dataset_dir ../shared/data/librispeech/train-clean-100 --dataset_format flat \
        --speaker_regex '^(\d+)-'
    # several corpora at once (speaker ids get the folder name as prefix: dev-clean/84)
    python create_data.py --dataset_dir ../shared/data/librispeech/train-clean-100 ../shared/data/librispeech/dev-clean \
        --dataset_format flat folder --speaker_regex '^(\d+)-' \
        --test_speaker_ids dev-clean/777 dev-clean/1272 dev-clean/1988 dev-clean/2035 dev-clean/2803

Writes to --list_dir:
    train_list.txt, test_list.txt    <audio path>\t<integer label>
    speakers.txt, test_speakers.txt  <label>\t<speaker id> (labels follow the sorted speaker ids)
    skipped.txt                      <file>\t<reason> for every file that was not used
    create_data_args.json            the configuration of this run

Every file is decoded once (in parallel) and rejected when it is unreadable,
non-finite, silent or shorter than --min_duration; a bad file never stops the run.
With --check_speech the speech detector (silero-vad) also skips files that hold
(almost) no speech: noise, music, tones, empty takes.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports below: a Ctrl-C while they load ends in one line
    from utils.errors import hold_ctrl_c_until_main

    hold_ctrl_c_until_main()

import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

from utils.audio import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    AudioError,
    analyse_speech,
    audio_info,
    format_short_seconds,
    load_audio,
    resample,
)
from utils.config import HelpFormatter, arguments_json, check_output_dir, fail, print_arguments
from utils.errors import UserError, run_cli
from utils.fileio import deferred_interrupt, is_utf8

FORMATS = ("zhvoice", "folder", "flat")
CONVERTED_SUFFIX = ".16k.wav"  # name of the conversion of a source that is itself a .wav
SILENCE_PEAK = 1e-4


class DataError(UserError, ValueError):
    """A problem with the arguments or the corpus; one line for the user."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Create train/test list files (<audio path>\\t<label>) from a speech corpus.",
        formatter_class=HelpFormatter,
    )
    # data
    parser.add_argument(
        "--dataset_dir", nargs="+", default=["dataset/zhvoice"], help="corpus folder(s); several are merged"
    )
    parser.add_argument(
        "--dataset_format",
        nargs="+",
        default=["zhvoice"],
        choices=FORMATS,
        help="layout of each --dataset_dir (once for all, or once per dir): zhvoice = text/infodata.json "
        "(JSON lines with index, speaker, duration_ms); folder = <dir>/<speaker>/**/<audio>; "
        "flat = speaker taken from the file name with --speaker_regex",
    )
    parser.add_argument(
        "--speaker_regex",
        default=None,
        help=r"flat layout: group 1 of a regex search on the file name is the speaker, e.g. '^(\d+)-'",
    )
    parser.add_argument(
        "--speakers",
        nargs="+",
        default=None,
        help="use only these speaker ids; with several dirs, '<dir name>/<id>' filters only that dir "
        "(dirs named by no entry keep all speakers) and a plain '<id>' applies to every dir",
    )
    parser.add_argument("--list_dir", default="dataset", help="where the list files are written")
    # checks
    parser.add_argument("--min_duration", type=float, default=1.3, help="shortest usable recording, seconds")
    parser.add_argument(
        "--trust_duration",
        action="store_true",
        help="zhvoice: skip files whose duration_ms is below --min_duration without decoding them",
    )
    parser.add_argument(
        "--check_speech",
        type=float,
        nargs="?",
        const=0.5,
        default=None,
        metavar="SECONDS",
        help="also run the speech detector (silero-vad) on every file and skip those with less net speech than "
        "SECONDS (default when given: 0.5): noise, music, tones, empty takes (about 0.003 s per second of audio)",
    )
    parser.add_argument(
        "--num_workers", type=int, default=os.cpu_count() or 1, help="processes checking files (0 or 1: no pool)"
    )
    # split
    parser.add_argument(
        "--test_mode",
        default="speakers",
        choices=("speakers", "utterances", "none"),
        help="speakers: whole speakers are held out (open set, for EER; test labels only tell speakers apart); "
        "utterances: every --test_every-th utterance of the sorted list is held out, as the original did "
        "(closed set: test speakers are training speakers); none: everything is training data",
    )
    parser.add_argument(
        "--test_speakers",
        type=int,
        default=None,
        help="speakers mode: how many speakers to hold out (None: 10%% of them, at least 2)",
    )
    parser.add_argument("--test_speaker_ids", nargs="+", default=None, help="speakers mode: these test speakers")
    parser.add_argument("--test_every", type=int, default=200, help="utterances mode: every N-th utterance is test")
    parser.add_argument("--seed", type=int, default=0, help="chooses the test speakers")
    # conversion
    parser.add_argument(
        "--convert_to_wav",
        action="store_true",
        help="write a 16-bit 16 kHz mono WAV of every kept file (<name>.wav next to it, or under --wav_dir) "
        "and list the WAV; an existing WAV is reused only when it is a conversion of the same file",
    )
    parser.add_argument("--wav_dir", default=None, help="with --convert_to_wav: write the WAVs under this folder")
    parser.add_argument(
        "--delete_source",
        action="store_true",
        help="with --convert_to_wav: delete each source once its WAV is verified",
    )
    parser.add_argument("--verbose", action="store_true", help="print the whole configuration first")
    return parser


# discovery


@dataclass
class Item:
    path: str  # as written in the lists: os.path.join(dataset_dir, rel), never resolved
    rel: str  # relative to its dataset_dir
    speaker: str  # full id (prefixed with the dir tag when there are several dirs)
    raw_speaker: str
    tag: str
    duration_ms: float | None = None
    target: str | None = None  # WAV to write with --convert_to_wav


class Skip(NamedTuple):
    path: str
    category: str
    detail: str


def dir_tags(dirs: list[str]) -> list[str]:
    """Per-dir prefix for speaker ids: the folder name, made unique when two dirs share it."""
    tags: list[str] = []
    for d in dirs:
        base = os.path.basename(os.path.abspath(d)) or "root"
        tag, n = base, 2
        while tag in tags:
            tag, n = f"{base}-{n}", n + 1
        tags.append(tag)
    return tags


def scan_audio(root: str, prune: set[str]) -> list[str]:
    """Audio files below `root` (relative, sorted); follows folder symlinks once, skips hidden names.
    A symlink to a file or folder inside `root` is skipped: what it points to is listed where it lies (a
    link dave/link -> ../alice once made alice's files dave's, or both speakers', by walk order)."""
    found: list[str] = []
    seen: set[str] = set()
    top = os.path.realpath(root)

    def link_inside(path: str) -> bool:  # a dangling link stays, to be reported "missing"
        return os.path.islink(path) and os.path.exists(path) and os.path.realpath(path).startswith(top + os.sep)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or real in prune:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not link_inside(os.path.join(dirpath, d))]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS or link_inside(path):
                continue
            found.append(os.path.relpath(path, root))
    return sorted(found)


def drop_converted_copies(rels: list[str], root: str) -> tuple[list[str], int]:
    """Every recording, but not our own conversion of one that is listed too: `x.wav` beside `x.mp3`,
    `x.16k.wav` beside `x.wav` (a folder converted earlier with its originals kept would list every
    utterance twice). Our conversion is a 16-bit 16 kHz mono WAV: a WAV of another kind beside `x.mp3`, and
    `x.flac` beside `x.ogg`, are recordings of their own and stay (they were dropped unseen)."""

    def key(rel: str) -> str:
        if rel.lower().endswith(CONVERTED_SUFFIX):
            return rel[: -len(CONVERTED_SUFFIX)]
        return os.path.splitext(rel)[0]

    def rank(rel: str) -> int:
        lowered = rel.lower()
        return 2 if lowered.endswith(CONVERTED_SUFFIX) else 1 if lowered.endswith(".wav") else 0

    groups: dict[str, list[str]] = defaultdict(list)
    for rel in rels:
        groups[key(rel)].append(rel)
    kept = []
    for members in groups.values():
        first = min(rank(r) for r in members)
        kept += [r for r in members if rank(r) == first or not _is_our_wav(os.path.join(root, r))]
    return sorted(kept), len(rels) - len(kept)


def bad_text(text: str) -> bool:
    return "\t" in text or "\n" in text or "\r" in text


def discover(
    root: str,
    fmt: str,
    tag: str,
    multi: bool,
    regex: re.Pattern[str] | None,
    prune: set[str],
    wav_root: str | None = None,
) -> tuple[list[Item], list[Skip], int]:
    """Items of one dataset dir, files that have no usable speaker, and the number of converted copies ignored.

    `wav_root` is where --wav_dir puts this dir's conversions: zhvoice entries whose source was deleted
    after conversion are found there.
    """
    items: list[Item] = []
    skips: list[Skip] = []
    ignored = 0

    def add(rel: str, speaker: str, duration_ms: float | None = None, path: str | None = None) -> None:
        path = path or os.path.join(root, rel)
        if bad_text(path) or bad_text(speaker):
            skips.append(Skip(path, "bad name", "the path or speaker id contains a tab or newline"))
            return
        if not is_utf8(path) or not is_utf8(speaker):  # list files are UTF-8 text
            skips.append(Skip(path, "bad name", "the path or speaker id is not valid UTF-8"))
            return
        full = f"{tag}/{speaker}" if multi else speaker
        items.append(Item(path, rel, full, speaker, tag, duration_ms))

    if fmt == "zhvoice":
        info = os.path.join(root, "text", "infodata.json")
        if not os.path.isfile(info):
            raise DataError(f"{info} not found (zhvoice layout; use --dataset_format folder or flat for other corpora)")
        seen: set[str] = set()
        with open(info, encoding="utf-8-sig", errors="surrogateescape") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{info}:{number}"
                try:
                    line.encode("utf-8")  # a byte that is not UTF-8 (kept as a surrogate by the read above)
                    entry = json.loads(line)
                except (UnicodeEncodeError, ValueError, RecursionError):  # also JSON nested 100000 deep
                    skips.append(Skip(where, "bad metadata", "not valid JSON"))
                    continue
                if not isinstance(entry, dict) or not entry.get("index") or str(entry.get("speaker", "")).strip() == "":
                    skips.append(Skip(where, "bad metadata", "needs 'index' and 'speaker'"))
                    continue
                rel = os.path.normpath(str(entry["index"]))  # ./S0/u0.flac and S0//u0.flac are one file
                if os.path.isabs(rel) or rel.split(os.sep)[0] == "..":
                    # a path out of the corpus: --delete_source would delete there, --wav_dir write there
                    skips.append(Skip(where, "bad metadata", f"'index' {entry['index']!r} leads out of {root}"))
                    continue
                if rel in seen:
                    continue
                seen.add(rel)
                path = os.path.join(root, rel)
                if not os.path.lexists(path):
                    # converted to WAV and the MP3 deleted (by us or by the original script): use the WAV
                    stem = os.path.splitext(rel)[0] + ".wav"
                    for candidate in (os.path.join(root, stem), os.path.join(wav_root, stem) if wav_root else ""):
                        if candidate and os.path.isfile(candidate):
                            path = candidate
                            break
                duration = entry.get("duration_ms")
                duration_ms = float(duration) if isinstance(duration, int | float) else None
                add(rel, str(entry["speaker"]).strip(), duration_ms, path)
        return items, skips, ignored

    rels, ignored = drop_converted_copies(scan_audio(root, prune), root)
    for rel in rels:
        if fmt == "folder":
            parts = Path(rel).parts
            if len(parts) < 2:
                skips.append(Skip(os.path.join(root, rel), "no speaker", "not inside a speaker folder"))
                continue
            add(rel, parts[0])
        else:
            assert regex is not None
            match = regex.search(os.path.basename(rel))
            if not match or not match.group(1):
                skips.append(
                    Skip(
                        os.path.join(root, rel),
                        "no speaker",
                        f"file name does not match --speaker_regex {regex.pattern}",
                    )
                )
                continue
            add(rel, match.group(1))
    return items, skips, ignored


def resolve_ids(requested: list[str], speakers: dict[str, tuple[str, str]], option: str) -> tuple[set[str], set[str]]:
    """Full speaker ids named by `requested` (full id, or raw id in any dir) and the dir tags named by a prefix."""
    chosen: set[str] = set()
    tags: set[str] = set()
    unknown: list[str] = []
    for name in requested:
        if name in speakers:
            chosen.add(name)
            tag, raw = speakers[name]
            tags.add(tag if raw != name else "*")
            continue
        matches = {full for full, (_, raw) in speakers.items() if raw == name}
        if not matches:
            unknown.append(name)
        chosen |= matches
        tags.add("*")
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        examples = ", ".join(sorted(speakers)[:5])
        raise DataError(f"{option}: speaker(s) not found in the data: {shown} (known ids look like: {examples})")
    return chosen, tags


# checking and conversion


class Task(NamedTuple):
    index: int
    path: str
    min_seconds: float
    target: str | None
    delete_source: bool
    min_speech: float | None = None  # --check_speech: net speech (silero-vad) a file needs, seconds


class Result(NamedTuple):
    index: int
    category: str | None  # None: usable
    detail: str
    seconds: float
    path: str  # what the list should point to
    conversion: str | None  # written, reused, in place, conflict, failed
    conversion_detail: str


def _category(message: str) -> str:
    if "not found" in message:
        return "missing"
    if "is empty" in message or "no samples" in message:
        return "empty"
    if "NaN or infinite" in message:
        return "non-finite"
    if "directory" in message:
        return "not a file"
    return "undecodable"


def check_file(task: Task) -> Result:
    """Decode one file and judge it; runs in a worker process, never raises."""
    path = task.path
    try:
        if task.target is None:
            _, rate = audio_info(path)
            wav = load_audio(path, sample_rate=rate)  # native rate: no resampling needed to judge it
        else:
            rate = SAMPLE_RATE
            wav = load_audio(path, sample_rate=SAMPLE_RATE)
    except AudioError as exc:
        detail = str(exc).replace(f" {Path(path)}", "").rstrip(": ")
        return Result(task.index, _category(str(exc)), detail, 0.0, path, None, "")
    except Exception as exc:  # a bad file must never stop the run
        return Result(task.index, "undecodable", f"{type(exc).__name__}: {exc}", 0.0, path, None, "")
    seconds = len(wav) / rate
    if seconds < task.min_seconds:
        detail = f"{format_short_seconds(seconds)} s (need at least {task.min_seconds:g} s)"
        return Result(task.index, "too short", detail, seconds, path, None, "")
    if float(np.max(np.abs(wav))) < SILENCE_PEAK:
        return Result(task.index, "silent", f"peak below {SILENCE_PEAK:g}", seconds, path, None, "")
    if task.min_speech is not None:
        speech = speech_seconds(wav, rate)
        if speech < task.min_speech:
            detail = f"{speech:.1f} s of speech by silero-vad in {seconds:.1f} s (need at least {task.min_speech:g} s)"
            return Result(task.index, "no speech", detail, seconds, path, None, "")
    if task.target is None:
        return Result(task.index, None, "", seconds, path, None, "")
    final, conversion, detail = convert(path, task.target, wav, task.delete_source)
    return Result(task.index, None, "", seconds, final, conversion, detail)


def speech_seconds(wav: np.ndarray, rate: int) -> float:
    """Net speech in a recording by silero-vad (utils.audio.analyse_speech, as inference measures it)."""
    import torch

    torch.set_num_threads(1)  # one detector per worker process: the pool is the parallelism
    return analyse_speech(resample(wav, rate, SAMPLE_RATE)).speech_seconds


def _is_our_wav(path: str, num_samples: int | None = None) -> bool:
    """A 16-bit 16 kHz mono WAV (of `num_samples` samples, when given): what convert() writes."""
    try:
        info = sf.info(path)
    except Exception:
        return False
    return (
        info.format == "WAV"
        and info.subtype == "PCM_16"
        and info.samplerate == SAMPLE_RATE
        and info.channels == 1
        and (num_samples is None or info.frames == num_samples)
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _holds(path: str, pcm: np.ndarray) -> bool:
    """`path` is a 16-bit 16 kHz mono WAV of exactly these samples: a conversion of the same recording (another
    take of the same length, or a stale --wav_dir of another corpus, once passed for one and its source
    was deleted)."""
    if not _is_our_wav(path, len(pcm)):
        return False
    try:
        return bool(np.array_equal(sf.read(path, dtype="int16")[0], pcm))
    except Exception:
        return False


def convert(source: str, target: str, wav: np.ndarray, delete_source: bool) -> tuple[str, str, str]:
    """Write `wav` (16 kHz) to `target` as 16-bit PCM; returns (path to list, outcome, detail)."""
    if _is_our_wav(source, len(wav)):
        return source, "in place", ""  # already 16-bit 16 kHz mono WAV
    pcm = np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16)
    if os.path.lexists(target):
        if not _holds(target, pcm):
            return source, "conflict", f"{target} exists and is not a conversion of {source}; left untouched"
        outcome = "reused"
    else:
        try:
            folder = os.path.dirname(target) or "."
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
            try:
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a corpus file should read like its neighbours
                with os.fdopen(fd, "wb") as f:
                    sf.write(f, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
                    f.flush()
                    os.fsync(f.fileno())
                if os.path.lexists(target):  # appeared meanwhile: still never overwrite
                    raise FileExistsError(f"{target} appeared while converting")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except Exception as exc:
            return source, "failed", f"{target}: {type(exc).__name__}: {exc}"
        if not _holds(target, pcm):
            return source, "failed", f"{target} did not read back as written"
        outcome = "written"
    if delete_source:
        try:
            if not os.path.samefile(source, target):
                os.remove(source)
        except OSError as exc:
            return target, outcome, f"could not delete {source}: {exc}"
    return target, outcome, ""


def wav_target(item: Item, root: str, wav_dir: str | None, multi: bool) -> str:
    """Where the conversion of `item` goes: `<name>.wav` next to it or under --wav_dir (per-dir subfolder)."""
    base = os.path.splitext(item.rel)[0]
    if wav_dir:
        return os.path.join(wav_dir, item.tag, base + ".wav") if multi else os.path.join(wav_dir, base + ".wav")
    target = os.path.join(root, base + ".wav")
    return os.path.join(root, base + CONVERTED_SUFFIX) if target == item.path else target


def run_checks(tasks: list[Task], num_workers: int, desc: str) -> list[Result]:
    from tqdm import tqdm

    results: list[Result] = []
    with tqdm(total=len(tasks), desc=desc, unit="file", file=sys.stderr, dynamic_ncols=True) as bar:
        if num_workers <= 1 or len(tasks) < 2:
            for task in tasks:
                results.append(check_file(task))
                bar.update()
        else:
            from multiprocessing import Pool

            workers = min(num_workers, len(tasks))
            chunk = max(1, min(32, len(tasks) // (workers * 8)))
            # Ctrl-C is held while the workers start: a KeyboardInterrupt between a fork and the pool's
            # bookkeeping left workers that outlived the script (and held its output pipes open)
            with deferred_interrupt():
                pool = Pool(workers, initializer=_quiet_worker)
            with pool:
                for result in pool.imap_unordered(check_file, tasks, chunksize=chunk):
                    results.append(result)
                    bar.update()
    return sorted(results, key=lambda r: r.index)


def _quiet_worker() -> None:
    """Ctrl-C reaches the workers too (each then cleans up its temporary file): their KeyboardInterrupt
    tracebacks are not for the user, who sees the one line "interrupted" from the main process. check_file
    never raises, so nothing else is written to a worker's Python stderr."""
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - open for the worker's life


# splitting


def choose_test_speakers(speakers: list[str], count: int, seed: int) -> set[str]:
    """`count` speakers ranked by a seeded hash: stable, and adding a speaker rarely moves the others."""
    ranked = sorted(speakers, key=lambda s: hashlib.sha256(f"{seed}\0{s}".encode()).hexdigest())
    return set(ranked[:count])


def label_map(speakers: set[str] | list[str]) -> dict[str, int]:
    return {speaker: label for label, speaker in enumerate(sorted(speakers))}


def summarize(name: str, rows: list[tuple[str, str, float]]) -> str:
    hours = sum(seconds for _, _, seconds in rows) / 3600.0
    n_speakers, n_rows = len({s for _, s, _ in rows}), len(rows)
    return (
        f"{name}: {n_speakers} speaker{'s' * (n_speakers != 1)}, {n_rows} utterance{'s' * (n_rows != 1)}, {hours:.2f} h"
    )


# main


def validate(args: argparse.Namespace) -> tuple[list[str], re.Pattern[str] | None]:
    dirs = list(args.dataset_dir)
    formats = list(args.dataset_format)
    if len(formats) == 1:
        formats = formats * len(dirs)
    elif len(formats) != len(dirs):
        raise DataError(
            f"--dataset_format takes one value or one per --dataset_dir ({len(dirs)}), got {len(args.dataset_format)}"
        )
    if args.check_speech is not None and not (0 <= args.check_speech < 1e6):
        raise DataError(f"--check_speech must be 0 or more seconds, got {args.check_speech}")
    for d in dirs:
        if not os.path.isdir(d):
            raise DataError(f"dataset dir not found: {d}" if not os.path.exists(d) else f"not a directory: {d}")
    real = [os.path.realpath(d) for d in dirs]
    for i, a in enumerate(real):  # the same audio twice would become two "speakers" per real speaker
        for j, b in enumerate(real):
            if i < j and a == b:
                raise DataError(f"--dataset_dir {dirs[i]} and {dirs[j]} are the same folder")
            if i != j and b.startswith(a.rstrip(os.sep) + os.sep):
                raise DataError(f"--dataset_dir {dirs[j]} is inside {dirs[i]}: its files would be listed twice")
    regex = None
    if "flat" in formats:
        if not args.speaker_regex:
            raise DataError(r"--dataset_format flat needs --speaker_regex (e.g. '^(\d+)-' for 103-1240-0000.flac)")
        try:
            regex = re.compile(args.speaker_regex)
        except re.error as exc:
            raise DataError(f"--speaker_regex '{args.speaker_regex}' is not a valid regex: {exc}") from None
        if regex.groups < 1:
            raise DataError(f"--speaker_regex '{args.speaker_regex}' has no group: put the speaker id in (...)")
    elif args.speaker_regex:
        raise DataError("--speaker_regex is only used with --dataset_format flat")
    if args.trust_duration and "zhvoice" not in formats:
        raise DataError("--trust_duration only applies to --dataset_format zhvoice")
    if not math.isfinite(args.min_duration) or args.min_duration < 0:  # nan would pass every duration check
        raise DataError(f"--min_duration must be a non-negative number of seconds, got {args.min_duration}")
    if args.num_workers < 0:
        raise DataError("--num_workers must not be negative")
    if args.test_mode != "speakers" and (args.test_speakers is not None or args.test_speaker_ids):
        raise DataError("--test_speakers/--test_speaker_ids need --test_mode speakers")
    if args.test_speakers is not None and args.test_speaker_ids:
        raise DataError("give --test_speakers or --test_speaker_ids, not both")
    if args.test_speakers is not None and args.test_speakers < 1:
        raise DataError("--test_speakers must be at least 1 (use --test_mode none for no test set)")
    if args.test_mode == "utterances" and args.test_every < 1:
        raise DataError("--test_every must be at least 1")
    if (args.wav_dir or args.delete_source) and not args.convert_to_wav:
        raise DataError("--wav_dir and --delete_source need --convert_to_wav")
    return formats, regex


def find_items(
    args: argparse.Namespace, formats: list[str], regex: re.Pattern | None
) -> tuple[list, list, int, int, set[str]]:
    """Every audio file with a speaker id: (items, skips, WAV copies ignored, files left out by --speakers,
    the speakers named by --test_speaker_ids)."""
    dirs = list(args.dataset_dir)
    multi = len(dirs) > 1
    tags = dir_tags(dirs)
    prune = {os.path.realpath(args.wav_dir)} if args.wav_dir else set()
    items: list[Item] = []
    skips: list[Skip] = []
    ignored = 0
    for root, fmt, tag in zip(dirs, formats, tags):
        wav_root = (os.path.join(args.wav_dir, tag) if multi else args.wav_dir) if args.wav_dir else None
        found, bad, copies = discover(root, fmt, tag, multi, regex, prune, wav_root)
        if not found and not bad:
            raise DataError(f"no audio files found in {root} (extensions: {' '.join(AUDIO_EXTENSIONS)})")
        items += found
        skips += bad
        ignored += copies
    if not items:
        reasons = Counter(f"{skip.category}: {skip.detail}" for skip in skips).most_common(2)
        why = "; ".join(f"{count} x {reason}" for reason, count in reasons)
        raise DataError(f"no file could be listed ({why}): check --dataset_format / --speaker_regex")
    known = {item.speaker: (item.tag, item.raw_speaker) for item in items}
    excluded = 0
    if args.speakers:
        chosen, named_tags = resolve_ids(args.speakers, known, "--speakers")
        keep = [i for i in items if i.speaker in chosen or ("*" not in named_tags and i.tag not in named_tags)]
        excluded = len(items) - len(keep)
        items = keep
    requested_test: set[str] = set()
    if args.test_speaker_ids:
        requested_test, _ = resolve_ids(
            args.test_speaker_ids, {s: known[s] for s in {i.speaker for i in items}}, "--test_speaker_ids"
        )
    return items, skips, ignored, excluded, requested_test


def check_items(args: argparse.Namespace, formats: list[str], items: list, skips: list) -> tuple[list, Counter, list]:
    """Decode-check (and convert) every file in parallel: ((list path, speaker, seconds) rows, conversion counts,
    conversion problems); skipped files are appended to `skips`."""
    dirs = list(args.dataset_dir)
    multi = len(dirs) > 1
    tags = dir_tags(dirs)
    tasks: list[Task] = []
    for index, item in enumerate(items):
        fmt = formats[tags.index(item.tag)]
        if (
            args.trust_duration
            and fmt == "zhvoice"
            and item.duration_ms is not None
            and item.duration_ms < args.min_duration * 1000.0
        ):
            detail = f"duration_ms {item.duration_ms:g} (need at least {args.min_duration:g} s)"
            skips.append(Skip(item.path, "too short", detail))
            continue
        if args.convert_to_wav:
            item.target = wav_target(item, dirs[tags.index(item.tag)], args.wav_dir, multi)
        tasks.append(Task(index, item.path, args.min_duration, item.target, args.delete_source, args.check_speech))
    desc = "checking + converting" if args.convert_to_wav else "checking"
    results = run_checks(tasks, args.num_workers, desc)
    rows: list[tuple[str, str, float]] = []  # (list path, speaker, seconds)
    conversions: Counter[str] = Counter()
    problems: list[str] = []
    for result in results:
        item = items[result.index]
        if result.category is not None:
            skips.append(Skip(item.path, result.category, result.detail))
            continue
        rows.append((result.path, item.speaker, result.seconds))
        if result.conversion:
            conversions[result.conversion] += 1
        if result.conversion_detail:
            problems.append(result.conversion_detail)
    return rows, conversions, problems


def print_check_summary(args: argparse.Namespace, rows: list, skips: list, conversions: Counter, problems: list,
                        excluded: int, ignored: int) -> None:  # fmt: skip
    reasons = Counter(skip.category for skip in skips)
    reason_text = ", ".join(f"{name}: {count}" for name, count in sorted(reasons.items()))
    print(f"kept {len(rows)} files, skipped {len(skips)}" + (f" ({reason_text})" if skips else ""))
    if excluded:
        print(f"left out {excluded} files of speakers not named by --speakers")
    if ignored:
        print(f"ignored {ignored} files that are WAV conversions of another file with the same name")
    if args.convert_to_wav:
        print("converted to WAV: " + ", ".join(f"{k} {conversions[k]}" for k in ("written", "reused", "in place")))
        if conversions["conflict"] or conversions["failed"] or problems:
            print(
                f"warning: {conversions['conflict']} conversion conflict(s), {conversions['failed']} failure(s); "
                f"those files stay listed by their source path. First: {problems[0]}",
                file=sys.stderr,
            )


def split_rows(args: argparse.Namespace, rows: list, requested_test: set[str]) -> tuple[list, list, dict, dict]:
    """(train rows, test rows, train label map, test label map) by --test_mode."""
    if not rows:
        raise DataError("no usable audio left after the checks (see the reasons above)")
    rows.sort()
    speakers = sorted({s for _, s, _ in rows})
    if args.test_mode == "speakers":
        if args.test_speaker_ids:
            test_set = requested_test & set(speakers)
            lost = sorted(requested_test - test_set)
            if lost:
                print(f"warning: test speaker(s) with no usable audio: {', '.join(lost[:10])}", file=sys.stderr)
            if not test_set:
                raise DataError("none of --test_speaker_ids has usable audio")
        else:
            # at least 2 held-out speakers, or the test list has no different-speaker trials
            default_count = max(2, len(speakers) // 10) if len(speakers) >= 4 else 1
            count = args.test_speakers if args.test_speakers is not None else default_count
            if count >= len(speakers):
                raise DataError(
                    f"no speakers left for training: {len(speakers)} speaker(s), {count} held out for test "
                    "(lower --test_speakers or use --test_mode utterances/none)"
                )
            test_set = choose_test_speakers(speakers, count, args.seed)
        if len(test_set) == 1:
            print(
                "warning: only 1 test speaker: train.py and eval.py need at least 2 for verification trials "
                "(use --test_speakers 2 or more)",
                file=sys.stderr,
            )
        train_rows = [r for r in rows if r[1] not in test_set]
        test_rows = [r for r in rows if r[1] in test_set]
        train_labels = label_map({s for _, s, _ in train_rows})
        test_labels = label_map(test_set)
    elif args.test_mode == "utterances":
        train_rows = [r for n, r in enumerate(rows) if n % args.test_every != 0]
        test_rows = [r for n, r in enumerate(rows) if n % args.test_every == 0]
        train_labels = label_map(speakers)  # closed set: test utterances share the training labels
        test_labels = {s: train_labels[s] for s in sorted({s for _, s, _ in test_rows})}
        untrained = set(speakers) - {s for _, s, _ in train_rows}
        if untrained:
            print(f"warning: {len(untrained)} speaker(s) have no training utterance", file=sys.stderr)
    else:
        train_rows, test_rows = rows, []
        train_labels, test_labels = label_map(speakers), {}
    if not train_rows:
        raise DataError("no speakers left for training")
    counts = Counter(s for _, s, _ in test_rows)
    lonely = sorted(s for s, n in counts.items() if n < 2)
    if lonely:
        shown = ", ".join(lonely[:5]) + (" ..." if len(lonely) > 5 else "")
        print(
            f"warning: {len(lonely)} test speaker(s) have fewer than 2 test utterances, so no same-speaker "
            f"trials: {shown}",
            file=sys.stderr,
        )
    return train_rows, test_rows, train_labels, test_labels


def create_lists(args: argparse.Namespace) -> None:
    formats, regex = validate(args)
    check_output_dir(args.list_dir, "--list_dir")  # before checking every file of the corpus
    items, skips, ignored, excluded, requested_test = find_items(args, formats, regex)
    rows, conversions, problems = check_items(args, formats, items, skips)
    print_check_summary(args, rows, skips, conversions, problems, excluded, ignored)
    train_rows, test_rows, train_labels, test_labels = split_rows(args, rows, requested_test)
    # write
    write_outputs(args, train_rows, test_rows, train_labels, test_labels, skips)
    print(summarize("train", train_rows) + f" -> {os.path.join(args.list_dir, 'train_list.txt')}")
    print(summarize("test", test_rows) + f" -> {os.path.join(args.list_dir, 'test_list.txt')}")


def write_outputs(
    args: argparse.Namespace,
    train_rows: list[tuple[str, str, float]],
    test_rows: list[tuple[str, str, float]],
    train_labels: dict[str, int],
    test_labels: dict[str, int],
    skips: list[Skip],
) -> None:
    from utils.data import ListError, format_list
    from utils.fileio import atomic_write_files

    def clean(text: str) -> str:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # a file name that is not UTF-8
        return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    def speaker_map(labels: dict[str, int]) -> str:
        return "".join(f"{label}\t{speaker}\n" for speaker, label in sorted(labels.items(), key=lambda kv: kv[1]))

    out = args.list_dir
    try:
        texts = {
            "train_list.txt": format_list([(p, train_labels[s]) for p, s, _ in train_rows]),
            "test_list.txt": format_list([(p, test_labels[s]) for p, s, _ in test_rows]),
            "speakers.txt": speaker_map(train_labels),
            "test_speakers.txt": speaker_map(test_labels),
            "skipped.txt": "".join(f"{clean(s.path)}\t{s.category}: {clean(s.detail)}\n" for s in sorted(skips)),
        }
        files = {os.path.join(out, name): text.encode("utf-8") for name, text in texts.items()}
        files[os.path.join(out, "create_data_args.json")] = arguments_json(args)
        # one set: a failure while writing (a full disk) leaves the previous six files, never a mix
        atomic_write_files(files)
    except ListError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"cannot write the lists to {out}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.verbose:
        print_arguments(args)
    try:
        create_lists(args)
    except (DataError, AudioError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    run_cli(main)
