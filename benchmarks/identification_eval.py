"""Open-set speaker identification on real speech with utils.speaker_db.SpeakerDB (in-process).

Enrols the 5 held-out dev-clean speakers (777 1272 1988 2035 2803) with their first
--enrol utterances each (sorted file names), recognises every other utterance of
theirs, then 100 clips of people never enrolled: --fsdd_clips FSDD digits (8 kHz,
~0.5 s, 6 speakers) and --train_clips train-clean-100 utterances (10-16 s, one per
speaker; --crop_seconds cuts every query). Prints identification accuracy and the strangers'
false-accept rate at the model's threshold (or --threshold), plus a few other points.

    python benchmarks/identification_eval.py                      # temporary library, enrols in-process
    python benchmarks/identification_eval.py --audio_db /tmp/lib  # a library enrolled with infer_recognition.py
    python benchmarks/identification_eval.py --json_path runs/identification.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.config import fail, print_arguments  # noqa: E402

SPEAKERS = ("777", "1272", "1988", "2035", "2803")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # data
    parser.add_argument("--shared_data", default=str(ROOT.parent / "shared" / "data"), help="real speech folder")
    parser.add_argument("--enrol", type=int, default=3, help="utterances per speaker to enrol")
    parser.add_argument("--fsdd_clips", type=int, default=50, help="FSDD strangers (clips of at least 0.3 s)")
    parser.add_argument("--train_clips", type=int, default=50, help="train-clean-100 strangers (one per speaker)")
    parser.add_argument(
        "--crop_seconds",
        type=float,
        default=0.0,
        help="crop every query (enrolled and strangers) to this length (0: whole)",
    )
    # library and model
    parser.add_argument("--audio_db", default=None, help="library folder (default: a temporary one)")
    parser.add_argument("--model_path", default=str(ROOT / "models" / "voiceprint_resnet34.pt"))
    parser.add_argument("--threshold", type=float, default=None, help="default: the model's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--json_path", default=None, help="also write the figures here")
    return parser


def compute_figures(threshold: float, enrolled_results: list, stranger_results: list, seconds: float) -> dict:
    """Identification accuracy, stranger false accepts and a threshold sweep from the recognition results."""
    import numpy as np

    n = len(enrolled_results)
    top1 = sum(r.best == spk for r, spk in enrolled_results)
    correct = sum(r.name == spk for r, spk in enrolled_results)
    rejected = sum(r.name is None for r, _ in enrolled_results)
    wrong = n - correct - rejected
    accepted = [r for r, _ in stranger_results if r.name is not None]
    by_source = {
        source: (
            sum(r.name is not None for r, s in stranger_results if s == source),
            sum(s == source for _, s in stranger_results),
        )
        for source in ("fsdd", "train-clean-100")
    }
    own = np.array([r.score for r, spk in enrolled_results if r.best == spk])
    other = np.array([r.score for r, _ in stranger_results])
    figures = {
        "threshold": threshold,
        "enrolled_utterances": n,
        "identification_accuracy": correct / n,
        "closed_set_top1": top1 / n,
        "false_reject_rate": rejected / n,
        "misidentified_rate": wrong / n,
        "strangers": len(stranger_results),
        "stranger_false_accept_rate": len(accepted) / max(len(stranger_results), 1),
        "stranger_false_accept_by_source": {k: {"accepted": a, "of": t} for k, (a, t) in by_source.items()},
        "stranger_score_p50_p95_max": [float(np.percentile(other, q)) for q in (50, 95, 100)],
        "enrolled_best_score_p5_p50": [float(np.percentile(own, q)) for q in (5, 50)],
        "seconds_per_clip": seconds / (n + len(stranger_results)),
    }
    # the trade-off around the operating point: the same scores at other thresholds
    sweep = {}
    for t in sorted({round(threshold, 2), 0.3, 0.35, 0.4, 0.45, 0.5}):
        acc = sum(r.best == spk and r.score >= t for r, spk in enrolled_results) / n
        far = sum(r.score >= t for r, _ in stranger_results) / max(len(stranger_results), 1)
        sweep[f"{t:.2f}"] = {"identification_accuracy": acc, "stranger_false_accept_rate": far}
    figures["threshold_sweep"] = sweep

    return figures


def print_figures(figures: dict, args: argparse.Namespace, num_speakers: int) -> None:
    n, sweep = figures["enrolled_utterances"], figures["threshold_sweep"]
    correct = round(figures["identification_accuracy"] * n)
    top1 = round(figures["closed_set_top1"] * n)
    accepted = round(figures["stranger_false_accept_rate"] * figures["strangers"])
    rejected, wrong = figures["false_reject_rate"], figures["misidentified_rate"]
    by_source = {k: (v["accepted"], v["of"]) for k, v in figures["stranger_false_accept_by_source"].items()}
    print(f"\nthreshold {figures['threshold']:.4f} (model's EER threshold unless --threshold)")
    print(f"enrolled speakers: {num_speakers} x {args.enrol} utterances; test utterances of theirs: {n}")
    print(f"  identification accuracy (right name, accepted): {correct}/{n} = {correct / n:.1%}")
    print(f"  closed-set top-1 (best match, any score):       {top1}/{n} = {top1 / n:.1%}")
    print(f"  rejected as unknown: {rejected:.1%}   accepted as the wrong person: {wrong:.1%}")
    print(f"strangers: {figures['strangers']}; false accepts: {accepted} = {figures['stranger_false_accept_rate']:.1%}")
    for source, (a, t) in by_source.items():
        print(f"  {source}: {a}/{t} accepted")
    print("threshold sweep (accuracy / stranger FAR):")
    for t, row in sweep.items():
        print(f"  {t}: {row['identification_accuracy']:.1%} / {row['stranger_false_accept_rate']:.1%}")
    print(f"{figures['seconds_per_clip'] * 1000:.0f} ms per clip on {args.device}, {args.threads} thread(s)")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print_arguments(args)
    import torch

    from utils.audio import SAMPLE_RATE, AudioError, audio_info, load_audio
    from utils.embedder import MIN_SECONDS, Embedder
    from utils.speaker_db import SpeakerDB

    torch.set_num_threads(args.threads)
    data = Path(args.shared_data)
    if not (data / "librispeech" / "dev-clean").is_dir():
        fail(f"real speech not found at {data} (need librispeech/dev-clean, train-clean-100 and fsdd)")

    # data
    enrol, tests = {}, []
    for spk in SPEAKERS:
        files = sorted((data / "librispeech" / "dev-clean" / spk).glob("*/*.mp3"), key=lambda p: p.name)
        enrol[spk] = files[: args.enrol]
        tests += [(path, spk) for path in files[args.enrol :]]
    fsdd = []
    for path in sorted((data / "fsdd").glob("*.wav"), key=lambda p: (int(p.stem.split("_")[2]), p.name)):
        frames, rate = audio_info(path)  # round-robin over digits and speakers; skip clips too short to embed
        if frames / rate >= MIN_SECONDS + 0.01 and len(fsdd) < args.fsdd_clips:
            fsdd.append(path)
    train = sorted((data / "librispeech" / "train-clean-100").glob("*.flac"))[: args.train_clips]
    strangers = [(p, "fsdd") for p in fsdd] + [(p, "train-clean-100") for p in train]

    # library
    embedder = Embedder(args.model_path, device=args.device)
    with tempfile.TemporaryDirectory(prefix="ident-eval-") as tmp:
        root = Path(args.audio_db or Path(tmp) / "audio_db")
        start = time.perf_counter()
        db = SpeakerDB(root, embedder, threshold=args.threshold)
        for spk in SPEAKERS:
            if spk not in db:
                db.register(spk, enrol[spk])
        missing = [spk for spk in SPEAKERS if spk not in db]
        if missing or set(db.names()) != set(SPEAKERS):
            fail(f"library {root} must hold exactly the speakers {' '.join(SPEAKERS)}, has {' '.join(db.names())}")
        print(f"library: {db.counts()} ({time.perf_counter() - start:.1f} s)")

        # scoring
        def recognise(path: Path) -> object:
            if args.crop_seconds > 0:
                wav = load_audio(path, max_seconds=args.crop_seconds)
                return db.recognize(wav, SAMPLE_RATE)
            return db.recognize(path)

        start = time.perf_counter()
        enrolled_results = [(recognise(path), spk) for path, spk in tests]
        stranger_results = []
        for path, source in strangers:
            try:
                stranger_results.append((recognise(path), source))
            except AudioError as exc:
                print(f"skipped {path.name}: {exc}")
        seconds = time.perf_counter() - start

    # figures
    figures = compute_figures(db.threshold, enrolled_results, stranger_results, seconds)
    print_figures(figures, args, len(SPEAKERS))
    if args.json_path:
        from utils.fileio import atomic_write_json

        atomic_write_json(args.json_path, figures)


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
