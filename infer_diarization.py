"""Who spoke when: split a recording into speaker turns and name the speakers the library knows.

Usage:
    python infer_diarization.py --audio_path meeting.wav
    python infer_diarization.py --audio_path meeting.mp3 --audio_db audio_db --json_path runs/meeting.json \
        --rttm_path runs/meeting.rttm --plot_path runs/meeting.png
    python infer_diarization.py --audio_path meeting.wav --num_speakers 3 --export_dir runs/unknown_voices

Speech regions come from the speech detector (silero-vad), 1.5 s windows every 0.75 s are embedded and
clustered (spectral clustering; the number of speakers is estimated unless --num_speakers is given),
every 0.1 s of speech takes its nearest window's speaker, and each speaker's longest speech is
recognised against --audio_db: an enrolled speaker gets their name (at the library's 1:N threshold),
the others are unknown-1, unknown-2, ... --export_dir writes each unknown speaker's longest turns as
WAV files, to listen to and then register: infer_recognition.py --register NAME --audio_path FILES.
Any length (the file is read in 60 s chunks), any format the loader reads (WAV/FLAC/OGG/MP3).
"""

from __future__ import annotations

import argparse
import warnings

from utils.config import HelpFormatter, check_output_dir, check_output_file, describe_model, fail, print_arguments
from utils.errors import run_cli

EXPORT_TURNS = 3  # longest turns written per unknown speaker
EXPORT_SECONDS = 15.0  # at most this much of each


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Who spoke when: speaker turns, named from the voiceprint library.",
        formatter_class=HelpFormatter,
    )
    # data
    parser.add_argument("--audio_path", required=True, help="the recording (WAV/FLAC/OGG/MP3, any length)")
    parser.add_argument("--audio_db", default=None, help="voiceprint library whose speakers are named")
    parser.add_argument("--num_speakers", type=int, default=None, help="how many speakers (default: estimated)")
    parser.add_argument("--max_speakers", type=int, default=8, help="the most speakers the estimate may find")
    # model
    parser.add_argument("--model_path", default="models/voiceprint_resnet34.pt", help="inference model file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    # output
    parser.add_argument("--json_path", default=None, help="write segments and speakers as JSON")
    parser.add_argument("--rttm_path", default=None, help="write the segments as RTTM (the standard format)")
    parser.add_argument("--plot_path", default=None, help="write a timeline picture (PNG)")
    parser.add_argument("--export_dir", default=None, help="write each unknown speaker's longest turns as WAV")
    parser.add_argument("--verbose", action="store_true", help="print the whole configuration first")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"
    if args.verbose:
        print_arguments(args)
    # cheap checks first: a typo fails before torch is imported
    from utils.audio import AudioError, audio_info

    for path, flag in (
        (args.json_path, "--json_path"),
        (args.rttm_path, "--rttm_path"),
        (args.plot_path, "--plot_path"),
    ):
        check_output_file(path, flag)
    check_output_dir(args.export_dir, "--export_dir")
    if args.num_speakers is not None and not 1 <= args.num_speakers <= 50:
        fail(f"--num_speakers must be 1..50, got {args.num_speakers}")
    if not 1 <= args.max_speakers <= 50:
        fail(f"--max_speakers must be 1..50, got {args.max_speakers}")
    try:
        audio_info(args.audio_path)
    except AudioError as exc:
        fail(str(exc))

    # model and library
    from pathlib import Path

    from utils.checkpoint import CheckpointError
    from utils.diarization import diarize
    from utils.embedder import Embedder
    from utils.speaker_db import SpeakerDB, SpeakerDBError

    try:
        embedder = Embedder(args.model_path, device=args.device)
        db = None
        if args.audio_db is not None:
            if not Path(args.audio_db).is_dir():
                fail(f"--audio_db {args.audio_db} is not a folder")
            db = SpeakerDB(args.audio_db, embedder)
        # diarize
        result = diarize(args.audio_path, embedder, db, args.num_speakers, args.max_speakers)
    except (AudioError, CheckpointError, SpeakerDBError) as exc:
        fail(str(exc))
    report(args, result)
    print(describe_model(embedder.model_path, embedder.info))

    # save
    from utils.fileio import atomic_write_json, atomic_write_text

    if args.json_path:
        atomic_write_json(args.json_path, {"audio_path": args.audio_path, **result.to_dict()})
    if args.rttm_path:
        atomic_write_text(args.rttm_path, result.to_rttm(Path(args.audio_path).stem))
    if args.plot_path:
        from utils.diarization import plot_timeline

        plot_timeline(result, args.plot_path, title=Path(args.audio_path).name)
    if args.export_dir:
        export_unknown(args, result)


def report(args: argparse.Namespace, result) -> None:
    enrolled = sum(1 for s in result.speakers.values() if s["enrolled"])
    library = f" ({enrolled} enrolled in {args.audio_db})" if args.audio_db else ""
    print(f"{args.audio_path}: {result.duration:.1f} s, {result.speech_seconds:.1f} s of speech, "
          f"{len(result.speakers)} speaker{'s' if len(result.speakers) != 1 else ''}{library}")  # fmt: skip
    for s in result.segments:
        score = f" ({s.score:.2f})" if s.enrolled and s.score is not None else ""
        print(f"  {s.start:8.2f} - {s.end:8.2f}  {s.speaker}{score}")
    for name, info in result.speakers.items():
        known = f"enrolled, similarity {info['score']:.2f}" if info["enrolled"] else "not enrolled"
        print(f"{name}: {info['seconds']:.1f} s in {info['turns']} turn{'s' if info['turns'] != 1 else ''} ({known})")


def export_unknown(args: argparse.Namespace, result) -> None:
    """Each unknown speaker's longest turns as 16-bit 16 kHz WAV files in --export_dir."""
    import io
    from pathlib import Path

    import soundfile as sf

    from utils.audio import load_audio
    from utils.fileio import atomic_write_bytes

    written = {}
    for name, info in result.speakers.items():
        if info["enrolled"]:
            continue
        turns = sorted((s for s in result.segments if s.speaker == name), key=lambda s: s.start - s.end)
        for k, turn in enumerate(turns[:EXPORT_TURNS], start=1):
            wav = load_audio(args.audio_path, start_seconds=turn.start, max_seconds=min(turn.end - turn.start,
                                                                                        EXPORT_SECONDS))  # fmt: skip
            buffer = io.BytesIO()
            sf.write(buffer, wav, 16000, subtype="PCM_16", format="WAV")
            path = Path(args.export_dir) / f"{name}_{k}.wav"
            atomic_write_bytes(path, buffer.getvalue())
            written.setdefault(name, []).append(str(path))
    for name, paths in written.items():
        print(f"{name}: listen to {', '.join(paths)}; to enrol them: "
              f"python infer_recognition.py --register NAME --audio_path {' '.join(paths)}")  # fmt: skip
    if not written:
        print("every speaker is enrolled: nothing to export")


if __name__ == "__main__":
    run_cli(main)
