"""Speaker recognition against a library of enrolled voices (audio_db/<name>/*.wav), from the microphone or files.

Interactive (microphone), as in the original:
    python infer_recognition.py
    Choose: 0 = register, 1 = recognise (q to quit): 0      -> Enter, speak for --record_seconds, type the name
    Choose: 0 = register, 1 = recognise (q to quit): 1      -> Enter, speak: "Recognised: alice, similarity: 0.92 ..."

File mode (no microphone needed):
    python infer_recognition.py --register alice --audio_path a1.wav a2.flac a3.mp3
    python infer_recognition.py --recognize unknown.wav --json_path result.json
    python infer_recognition.py --list
    python infer_recognition.py --remove alice
    python infer_recognition.py --calibrate     # thresholds measured on the library's own recordings

Live (microphone): "now speaking: alice (0.78)" / "unknown" / "no speech", updated 4 times a second from
the last 2 s of audio, until Ctrl-C (or --live_seconds):
    python infer_recognition.py --live

`--calibrate` scores the enrolled recordings against each other (needs at least 2 speakers with 2 or more
recordings each), stores the 1:1 and 1:N thresholds in audio_db/.voiceprint_calibration.json and prints them
with their trial counts; every later recognition, infer_server.py and infer_contrast.py --audio_db use them.

Embeddings are cached in audio_db/.voiceprint_cache.npz: a restart embeds only new or
changed recordings (the count is printed). `--json_path` writes the result as JSON:
recognition {"name": <name or null>, "score", "runner_up", "runner_up_score", "best", "speech_seconds"} (a list
of those, each with "path", when several files are given; a file that fails gives {"path",
"error"}, the others are still recognised, and the exit status is 1), register {"name",
"recordings", "new": [speech report + "consistency"], "warnings"}, list {"speakers": {name: count}}, remove
{"removed": name}, calibrate {"verification", "identification", trial counts}.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from utils.config import HelpFormatter, check_output_file, check_threshold, describe_model, fail, print_arguments
from utils.errors import run_cli

COUNTDOWN_STEP = 0.7  # seconds per step of the 3-2-1 countdown before recording
LIST_NAMES_UP_TO = 20  # above this many speakers the interactive start-up prints a count instead of every name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # library and model
    parser.add_argument("--audio_db", default="audio_db", help="library folder: <name>/*.wav (or <name>.wav)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="similarity needed to accept a speaker (default: the library's --calibrate threshold, else the "
        "model's 1:N recognition threshold)",
    )
    parser.add_argument("--model_path", default="models/voiceprint_resnet34.pt", help="inference model file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    # microphone
    parser.add_argument("--record_seconds", type=float, default=3.0, help="length of each microphone recording")
    parser.add_argument("--live", action="store_true", help="who is speaking now, from the microphone, continuously")
    parser.add_argument(
        "--live_seconds", type=float, default=None, help="--live: stop after this long (default: Ctrl-C)"
    )
    parser.add_argument("--live_audio", default=None, help="--live: also keep what was heard as a 16 kHz WAV here")
    # file mode
    parser.add_argument("--register", metavar="NAME", default=None, help="enrol NAME from --audio_path files")
    parser.add_argument("--audio_path", nargs="+", metavar="FILE", default=None, help="recordings for --register")
    parser.add_argument("--recognize", nargs="+", metavar="FILE", default=None, help="who is speaking in FILE(s)")
    parser.add_argument("--list", action="store_true", help="list enrolled speakers and their recording counts")
    parser.add_argument("--remove", metavar="NAME", default=None, help="delete an enrolled speaker")
    parser.add_argument(
        "--calibrate", action="store_true", help="measure and store the library's own 1:1 and 1:N thresholds"
    )
    parser.add_argument("--json_path", default=None, help="also write the result of file mode as JSON here")
    parser.add_argument("--verbose", action="store_true", help="print the whole configuration first")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        print_arguments(args)
    check_output_file(args.json_path, "--json_path")
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"

    try:
        return _run(args)
    except Exception as exc:
        if _is_user_error(exc):
            fail(str(exc))
        raise


def _is_user_error(exc: BaseException) -> bool:
    """Errors about the user's input or machine (one line, no traceback); bugs still show a traceback."""
    from utils.errors import UserError

    return isinstance(exc, UserError)  # audio, microphone, library, calibration, model file


def _run(args: argparse.Namespace) -> int:
    from utils.speaker_db import MIN_REGISTER_SECONDS, SpeakerDB, validate_name

    modes = [
        m
        for m in ("register", "recognize", "list", "remove", "calibrate", "live")
        if getattr(args, m) not in (None, False)
    ]
    if len(modes) > 1:
        fail(f"choose one of --{', --'.join(modes)}")
    mode = modes[0] if modes else "interactive"
    if args.audio_path is not None and mode != "register":
        fail("--audio_path goes with --register NAME")
    if not args.record_seconds > 0:
        fail(f"--record_seconds must be positive, got {args.record_seconds}")
    check_threshold(args.threshold)
    # cheap checks first, so bad input never waits for the model to load
    if mode == "register":
        validate_name(args.register)  # reserved names: checked by the library, which knows who exists
        if not args.audio_path:
            fail("--register NAME needs --audio_path FILE [FILE ...]")
        _check_files(args.audio_path, min_seconds=MIN_REGISTER_SECONDS)
    elif mode == "recognize" and len(args.recognize) == 1:  # several files: each reports its own error
        _check_files(args.recognize)
    elif mode == "remove":
        validate_name(args.remove)
    elif mode in ("interactive", "live"):
        _check_microphone()
    if args.live_seconds is not None and not (mode == "live" and 0 < args.live_seconds < 1e6):
        fail("--live_seconds goes with --live and must be a positive number of seconds")
    if args.live_audio is not None:
        if mode != "live":
            fail("--live_audio goes with --live")
        check_output_file(args.live_audio, "--live_audio")

    if mode in ("list", "remove"):  # no embeddings needed: skip loading the model
        db = SpeakerDB(args.audio_db, None, threshold=args.threshold)
        return _list(db, args) if mode == "list" else _remove(db, args)

    from utils.embedder import Embedder

    embedder = Embedder(args.model_path, device=args.device)
    db = SpeakerDB(args.audio_db, embedder, threshold=args.threshold)

    by_length = ""
    if db.calibration is not None and db.calibration.by_speech and args.threshold is None:
        by_length = ", calibrated by length: lower for short recordings"

    def about() -> None:  # what answered: the library and the model
        print(
            f"library {args.audio_db}: {_count(len(db), 'speaker')}, {_recordings(sum(db.counts().values()))}, "
            f"{_count(db.embedded_at_load, 'new recording')} embedded (threshold {db.threshold:.2f}{by_length})"
        )
        print(describe_model(embedder.model_path, embedder.info))

    if mode == "interactive":
        about()
        return _interactive(db, args)
    if mode == "live":
        about()
        return _live(db, args)
    if mode == "calibrate":
        code = _calibrate(db, args)
    else:
        code = _register(db, args) if mode == "register" else _recognize(db, args)
    about()  # the answer first
    return code


def _check_files(paths: list[str], min_seconds: float = 0.0) -> None:
    """Missing, undecodable or too-short files fail before the model loads (seconds, not a torch start-up)."""
    from utils.audio import AudioError, audio_info, format_short_seconds

    for path in paths:
        if Path(path).is_dir():
            raise AudioError(f"expected an audio file but got a directory: {path}")
        frames, rate = audio_info(path)
        seconds = frames / rate if rate else 0.0
        if seconds < min_seconds:
            raise AudioError(
                f"{path} is too short: {format_short_seconds(seconds)} s (need at least {min_seconds:g} s to register)"
            )


def _check_microphone() -> None:
    from utils.record import NO_DEVICE_MESSAGE, MicrophoneError, has_input_device

    if not has_input_device():
        try:
            import pyaudio  # noqa: F401
        except ImportError:
            from utils.record import record

            record(1.0)  # raises the one-line "PyAudio is not installed ..." error
        raise MicrophoneError(NO_DEVICE_MESSAGE)


def _write_json(path: str | None, obj: Any) -> None:
    if path:
        from utils.fileio import atomic_write_json

        atomic_write_json(path, obj, ensure_ascii=False)
        print(f"wrote {path}")


# file mode


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _recordings(count: int) -> str:
    return _count(count, "recording")


def _register(db: Any, args: argparse.Namespace) -> int:
    enrolment = db.enrol(args.register, args.audio_path)
    print(f"Registered {enrolment.name}: {_recordings(enrolment.count)} ({len(args.audio_path)} new).")
    _print_enrolment(enrolment, args.audio_path)
    _write_json(args.json_path, enrolment.to_dict())
    return 0


def _print_enrolment(enrolment: Any, labels: list[str]) -> None:
    """One line per new recording (speech, level, SNR, match with the others), then the warnings."""
    for label, report, match in zip(labels, enrolment.reports, enrolment.consistency):
        snr = f", SNR {report.snr_db:.0f} dB" if report.snr_db is not None else ""
        matches = f", matches the others {match:.2f}" if match is not None else ""
        print(f"  {label}: {report.speech_seconds:.1f} s of speech, level {report.speech_level_dbfs:.0f} dBFS{snr}"
              f"{matches}")  # fmt: skip
    for warning in enrolment.warnings:
        print(f"warning: {warning}")


def _recognize(db: Any, args: argparse.Namespace) -> int:
    from utils.audio import AudioError

    if len(args.recognize) == 1:  # one file: its problem is the command's one-line error
        result = db.recognize(args.recognize[0])
        print(f"{args.recognize[0]}: {_describe(result)}")
        _write_json(args.json_path, {**result.to_dict(), "path": args.recognize[0]})
        return 0
    results, failed = [], 0
    for path in args.recognize:  # a batch: a bad file is reported and the others still get their answer
        try:
            result = db.recognize(path)
        except AudioError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr, flush=True)
            results.append({"path": path, "error": str(exc)})
            continue
        print(f"{path}: {_describe(result)}", flush=True)
        results.append({**result.to_dict(), "path": path})
    _write_json(args.json_path, results)
    if failed:
        print(f"error: {failed} of {len(results)} files could not be recognised (see above)", file=sys.stderr)
    return 1 if failed else 0


def _calibrate(db: Any, args: argparse.Namespace) -> int:
    calibration = db.calibrate()
    print(calibration.describe())
    _write_json(args.json_path, calibration.to_dict())
    return 0


def _list(db: Any, args: argparse.Namespace) -> int:
    counts = db.counts()
    print(f"library {args.audio_db}: {_count(len(counts), 'speaker')}")
    for name, count in counts.items():
        print(f"{name}: {_recordings(count)}")
    _write_json(args.json_path, {"speakers": counts})
    return 0


def _remove(db: Any, args: argparse.Namespace) -> int:
    name = args.remove.strip()
    left = db.remove(name)
    print(f"Removed {name}; {_count(len(db), 'speaker')} left.")
    if left:  # not recordings: the library never deletes what it did not make
        print(f"left alone in {args.audio_db}/{name}: {', '.join(left)}")
    _write_json(args.json_path, {"removed": name, "left_alone": left})
    return 0


def _describe(result: Any) -> str:
    runner = f" (runner-up: {result.runner_up} {result.runner_up_score:.2f})" if result.runner_up is not None else ""
    speech = f" [{result.speech.speech_seconds:.1f} s of speech]" if result.speech is not None else ""
    if result.name is not None:
        return f"Recognised: {result.name}, similarity: {result.score:.2f}{runner}{speech}"
    score, threshold = f"{result.score:.2f}", f"{result.threshold:.2f}"
    if score == threshold:  # 0.749 vs 0.75 must not read "0.75 < 0.75"
        score, threshold = f"{result.score:.4f}", f"{result.threshold:.4f}"
    return f"Unknown speaker (best: {result.best} {score} < threshold {threshold}){speech}"


# microphone


def _live(db: Any, args: argparse.Namespace) -> int:
    """Who is speaking now: one line per change (a terminal: one line rewritten in place, with a meter)."""
    from utils.live import LiveRecognizer
    from utils.record import level_meter, stream

    if not len(db):
        print(f"warning: no speakers registered in {args.audio_db}: everyone is 'unknown'")
    live = LiveRecognizer(db)
    timeline, heard, shown = [], [], None
    tty = sys.stdout.isatty()
    print("listening (Ctrl-C to stop)", flush=True)
    try:
        for block in stream(args.live_seconds):
            if args.live_audio:
                heard.append(block)
            for state in live.push(block):
                timeline.append(state.to_dict())
                if tty:
                    meter = level_meter(10 ** (state.level_dbfs / 20))
                    print(f"\r{state.time:7.2f} s  {meter}  {state.text():<48}", end="", flush=True)
                elif state.text() != shown:
                    print(f"{state.time:7.2f} s  {state.text()}", flush=True)
                shown = state.text()
    finally:  # Ctrl-C too: what was heard and decided is kept
        if tty:
            print()
        if args.live_audio and heard:
            import io

            import numpy as np
            import soundfile as sf

            from utils.fileio import atomic_write_bytes

            buffer = io.BytesIO()
            sf.write(buffer, np.concatenate(heard), 16000, subtype="PCM_16", format="WAV")
            atomic_write_bytes(args.live_audio, buffer.getvalue())
        _write_json(args.json_path, {"timeline": timeline})
    return 0


def _record_with_meter(record: Any, seconds: float) -> Any:
    """A 3-2-1 countdown, then the recording with a live level meter and the time left on one line."""
    from utils.record import level_meter, level_problem

    for n in (3, 2, 1):
        print(f"\rRecording in {n}...", end="", flush=True)
        time.sleep(COUNTDOWN_STEP)
    shown = {"at": -1.0}

    def show(elapsed: float, peak: float) -> None:
        if elapsed - shown["at"] >= 0.1:  # ~10 updates a second is smooth and cheap
            shown["at"] = elapsed
            print(f"\rRecording {level_meter(peak)}  {max(seconds - elapsed, 0):.1f} s left ", end="", flush=True)

    wav = record(seconds, on_level=show)
    print(f"\rDone: {seconds:g} s recorded.{' ' * 40}")
    problem = level_problem(wav)
    if problem:
        print(f"warning: the recording is {problem}")
    return wav


def _interactive(db: Any, args: argparse.Namespace) -> int:
    from utils.audio import AudioError
    from utils.record import MicrophoneError, record
    from utils.speaker_db import SpeakerDBError

    counts = db.counts()
    if len(counts) <= LIST_NAMES_UP_TO:
        for name in counts:
            print(f"Loaded {name} audio.")
    seconds = args.record_seconds
    try:
        while True:
            choice = input("Choose: 0 = register, 1 = recognise (q to quit): ").strip().lower()
            if choice in ("q", "quit", "exit"):
                return 0
            if choice not in ("0", "1"):
                print("Please type 0, 1 or q.")
                continue
            try:
                input(f"Press Enter, then speak for {seconds:g} s: ")
                wav = _record_with_meter(record, seconds)
                if choice == "0":
                    name = input("Name: ")
                    enrolment = db.enrol(name, [wav])
                    print(f"Registered {enrolment.name}: {_recordings(enrolment.count)}.")
                    _print_enrolment(enrolment, ["recording"])
                elif len(db) == 0:
                    print("No speakers registered yet: choose 0 to register someone first.")
                else:
                    print(_describe(db.recognize(wav)))
            except (AudioError, SpeakerDBError, MicrophoneError) as exc:
                print(f"error: {exc}", file=sys.stderr)  # one bad attempt does not end the session
    except EOFError:  # end of input: a normal end of the session (Ctrl-C is "interrupted", exit 130)
        print()
        return 0


if __name__ == "__main__":
    run_cli(main)
