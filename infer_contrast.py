"""Compare two recordings: are they the same person?

Usage:
    python infer_contrast.py --audio_path1=audio/a1.wav --audio_path2=audio/a2.wav
    python infer_contrast.py --audio_path1=audio/a1.wav --audio_path2=audio/b2.wav --threshold 0.4 --json_path out.json
    python infer_contrast.py --audio_path1=audio/a1.wav --audio_path2=audio/a2.wav --audio_db audio_db  # its threshold

Both whole recordings are embedded; the score is their cosine similarity. They are called the same person
when score >= threshold; the default threshold is the EER threshold stored in the model file.
"""

from __future__ import annotations

import argparse
import warnings

from utils.config import HelpFormatter, check_output_file, check_threshold, describe_model, fail, print_arguments
from utils.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Decide whether two recordings are the same speaker.",
        formatter_class=HelpFormatter,
    )
    # data
    parser.add_argument("--audio_path1", default="audio/a1.wav", help="first recording")
    parser.add_argument("--audio_path2", default="audio/b2.wav", help="second recording")
    # model
    parser.add_argument("--model_path", default="models/voiceprint_resnet34.pt", help="inference model file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="same person when similarity >= threshold (default: --audio_db's calibrated 1:1 threshold, else the "
        "model's stored 1:1 threshold)",
    )
    parser.add_argument(
        "--audio_db",
        default=None,
        help="use the 1:1 threshold this voiceprint library measured (infer_recognition.py --calibrate)",
    )
    # output
    parser.add_argument("--json_path", default=None, help="also write the result here as JSON")
    parser.add_argument("--verbose", action="store_true", help="print the whole configuration first")
    return parser


def library_calibration(audio_db: str, embedder: object) -> object | None:
    """The library's calibration (utils.calibration.LibraryCalibration; said out loud when there is none)."""
    from pathlib import Path

    from utils.calibration import load_calibration
    from utils.speaker_db import model_fingerprint

    if not Path(audio_db).is_dir():
        fail(f"--audio_db {audio_db} is not a folder")
    calibration = load_calibration(audio_db, model_fingerprint(embedder))
    if calibration is None:
        print(f"warning: {audio_db} is not calibrated for this model (infer_recognition.py --calibrate): "
              "using the model's threshold")  # fmt: skip
    return calibration


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"
    if args.verbose:
        print_arguments(args)
    # torch is not imported yet: check the cheap things first so a typo fails in well under a second
    from utils.audio import AudioError, audio_info

    check_output_file(args.json_path, "--json_path")
    check_threshold(args.threshold)
    try:
        audio_info(args.audio_path1)
        audio_info(args.audio_path2)
    except AudioError as exc:
        fail(str(exc))

    # model
    from utils.checkpoint import CheckpointError
    from utils.embedder import Embedder

    try:
        embedder = Embedder(args.model_path, device=args.device)
        threshold = embedder.operating_points.resolve("verification", args.threshold)
        calibration = library_calibration(args.audio_db, embedder) if args.audio_db and args.threshold is None else None
        # compare
        emb1, speech1 = embedder.embed_file_report(args.audio_path1)
        emb2, speech2 = embedder.embed_file_report(args.audio_path2)
    except (AudioError, CheckpointError) as exc:
        fail(str(exc))
    if calibration is not None:  # the library measured its threshold by length: the shorter side decides
        threshold = calibration.verification_at(min(speech1.speech_seconds, speech2.speech_seconds))
    score = float(emb1 @ emb2)  # both are unit length
    same = score >= threshold
    verdict = "are the same person" if same else "are not the same person"
    print(f"{args.audio_path1} and {args.audio_path2} {verdict}, similarity: {score:.4f} (threshold {threshold:.3f})")
    print(f"speech used: {speech1.speech_seconds:.1f} s and {speech2.speech_seconds:.1f} s")
    probability = None
    if embedder.operating_points.calibration is not None:  # eval.py --fit_calibration stored one in the model
        from utils.calibration import ScoreCalibration

        calibration = ScoreCalibration.from_dict(embedder.operating_points.calibration)
        probability = float(calibration.probability(score, speech1.seconds, speech2.seconds))
        print(f"probability of the same person: {probability:.2f} (calibrated on {calibration.measured_on})")
    for path, speech in ((args.audio_path1, speech1), (args.audio_path2, speech2)):
        for problem in speech.problems():
            print(f"warning: {path}: {problem}")
    print(describe_model(embedder.model_path, embedder.info))

    if args.json_path:
        from utils.fileio import atomic_write_json

        result = {
            "score": score,
            "threshold": float(threshold),
            "same_speaker": bool(same),
            "audio_path1": args.audio_path1,
            "audio_path2": args.audio_path2,
            "probability_same": probability,
            "speech1": speech1.to_dict(),
            "speech2": speech2.to_dict(),
        }
        atomic_write_json(args.json_path, result)


if __name__ == "__main__":
    run_cli(main)
