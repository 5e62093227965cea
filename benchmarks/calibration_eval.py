"""Do thresholds calibrated on a library's own recordings transfer? For each set: enrol every speaker
from --enrol clips, run SpeakerDB.calibrate(), then compare the calibrated 1:1 threshold with the set's
own EER threshold (all pairs of all its clips), and recognise the speakers' other clips and strangers
at the calibrated 1:N threshold.

Sets (../shared/data):
  valid   the 3 speakers train.py holds out of dataset/train_list.txt by default (dev-clean 251 652 1462)
  fsdd    Free Spoken Digit Dataset, 6 speakers (8 kHz digits, ~0.5 s)
  dev     LibriSpeech dev-clean 777 1272 1988 2035 2803: REPORT ONLY, never to choose a rule
Strangers for the 1:N check: train-clean-100 speakers (--strangers of them) for the LibriSpeech sets,
LibriSpeech dev-clean clips for FSDD.

    python benchmarks/calibration_eval.py --sets valid fsdd
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.config import print_arguments  # noqa: E402

SETS = {"valid": ("251", "652", "1462"), "dev": ("777", "1272", "1988", "2035", "2803")}  # valid: see below


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="models/voiceprint_resnet34.pt", help="model file")
    parser.add_argument("--sets", nargs="+", choices=("valid", "fsdd", "dev"), default=["valid", "fsdd"])
    parser.add_argument("--shared_data", default=str(ROOT.parent / "shared" / "data"), help="real speech folder")
    parser.add_argument("--enrol", type=int, default=5, help="clips enrolled per speaker")
    parser.add_argument("--tests", type=int, default=20, help="other clips recognised per speaker")
    parser.add_argument("--strangers", type=int, default=30, help="stranger clips")
    parser.add_argument("--json_path", default=None, help="also write the figures here")
    parser.add_argument("--verbose", action="store_true", help="print the configuration")
    return parser


def set_clips(name: str, data: Path, strangers: int) -> tuple[dict[str, list[Path]], list[Path]]:
    """({speaker: clips in a fixed spread order}, stranger clips)."""
    import random

    rng = random.Random(0)
    if name == "fsdd":
        by_speaker: dict[str, list[Path]] = {}
        for path in sorted((data / "fsdd").glob("*.wav")):
            by_speaker.setdefault(path.stem.split("_")[1], []).append(path)
        others = sorted((data / "librispeech" / "dev-clean").rglob("*.mp3"))
    else:
        by_speaker = {s: sorted((data / "librispeech" / "dev-clean" / s).rglob("*.mp3")) for s in SETS[name]}
        others = sorted((data / "librispeech" / "train-clean-100").glob("*.flac"))
    for clips in by_speaker.values():
        rng.shuffle(clips)  # enrolment and test clips from any chapter/session, as a user would record them
    rng.shuffle(others)
    return by_speaker, others[:strangers]


def evaluate_set(name: str, embedder, args: argparse.Namespace) -> dict:
    import numpy as np

    from utils.audio import AudioError
    from utils.metrics import compute_eer
    from utils.speaker_db import SpeakerDB

    if name == "valid":  # the speakers train.py really held out (utils.data.split_validation), not a guess
        from utils.data import read_list, split_validation

        held_out = {Path(p).parts[-3] for p, _ in split_validation(read_list("dataset/train_list.txt"), 3)[1]}
        if held_out != set(SETS["valid"]):
            raise SystemExit(f"error: dataset/train_list.txt holds out {sorted(held_out)}, not {SETS['valid']}")
    by_speaker, strangers = set_clips(name, Path(args.shared_data), args.strangers)
    # the set's own EER threshold: all pairs of all its clips (what the calibration should find)
    paths = [p for clips in by_speaker.values() for p in clips]
    labels = np.array([k for k, clips in enumerate(by_speaker.values()) for _ in clips])
    emb, speech, ok = [], [], []
    for path in paths:
        try:
            vector, report = embedder.embed_file_report(path)
        except AudioError:
            ok.append(False)
            continue
        emb.append(vector)
        speech.append(report.speech_seconds)
        ok.append(True)
    emb, speech, labels = np.stack(emb), np.array(speech), labels[np.array(ok)]
    upper = np.triu_indices(len(emb), k=1)
    scores = (emb @ emb.T)[upper]
    same = labels[upper[0]] == labels[upper[1]]
    eer, eer_threshold = compute_eer(scores, same.astype(int))
    shorter = np.minimum(speech[upper[0]], speech[upper[1]])  # the side a pair's calibrated threshold follows

    with tempfile.TemporaryDirectory(prefix="calibration-") as tmp:
        db = SpeakerDB(Path(tmp) / "db", embedder)
        tests = []
        for speaker, clips in by_speaker.items():
            if name == "fsdd":  # a digit is ~0.5 s, enrolment needs 1 s: each enrolment recording says 6 digits
                from utils.audio import load_audio

                for k in range(args.enrol):
                    db.register(speaker, [np.concatenate([load_audio(p) for p in clips[6 * k : 6 * k + 6]])])
                tests += [(p, speaker) for p in clips[6 * args.enrol : 6 * args.enrol + args.tests]]
                continue
            enrolled = 0
            for n, path in enumerate(clips):
                if enrolled == args.enrol:
                    tests += [(p, speaker) for p in clips[n : n + args.tests]]
                    break
                try:
                    db.register(speaker, [path])
                    enrolled += 1
                except AudioError:  # too little speech to enrol: the next clip
                    continue
        model_threshold = db.threshold
        calibration = db.calibrate()
        # the calibrated 1:1 thresholds applied trial by trial (each at its shorter side's speech seconds)
        per_trial = np.array([calibration.verification_at(s) for s in np.round(shorter, 2)])
        accepted_trials = scores >= per_trial
        false_reject, false_accept = float(np.mean(~accepted_trials[same])), float(np.mean(accepted_trials[~same]))
        right = total = 0
        for path, speaker in tests:
            try:
                result = db.recognize(path)
            except AudioError:
                continue
            total += 1
            right += result.name == speaker
        accepted = seen = 0
        for path in strangers:
            try:
                result = db.recognize(path)
            except AudioError:
                continue
            seen += 1
            accepted += result.name is not None
    return {
        "speakers": len(by_speaker),
        "set_eer": round(float(eer), 4),
        "set_eer_threshold": round(float(eer_threshold), 4),
        "median_pair_speech_seconds": round(float(np.median(shorter)), 2),
        "calibrated_1to1": calibration.verification_at(float(np.median(shorter))),
        "calibrated_1to1_whole_recordings": calibration.verification,
        "calibrated_by_speech": [list(row) for row in calibration.by_speech],
        "calibrated_false_reject": round(false_reject, 4),
        "calibrated_false_accept": round(false_accept, 4),
        "calibrated_1toN": calibration.identification,
        "model_1toN": round(float(model_threshold), 4),
        "identified": f"{right}/{total}",
        "identification_accuracy": right / max(total, 1),
        "strangers_accepted": f"{accepted}/{seen}",
    }


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.verbose:
        print_arguments(args)
    import torch

    from utils.embedder import Embedder

    torch.set_num_threads(1)
    embedder = Embedder(args.model_path, device="cpu")
    figures = {}
    for name in args.sets:
        row = evaluate_set(name, embedder, args)
        figures[name] = row
        print(
            f"{name}: set EER {row['set_eer']:.2%} at {row['set_eer_threshold']:.3f}; calibrated 1:1 "
            f"{row['calibrated_1to1']:.3f} at its median pair's {row['median_pair_speech_seconds']:.1f} s of speech "
            f"(off by {row['calibrated_1to1'] - row['set_eer_threshold']:+.3f}; whole recordings "
            f"{row['calibrated_1to1_whole_recordings']:.3f}), trial by trial: false rejects "
            f"{row['calibrated_false_reject']:.1%}, false accepts {row['calibrated_false_accept']:.1%}; "
            f"1:N {row['calibrated_1toN']:.3f} (model: {row['model_1toN']:.3f}); identified {row['identified']}, "
            f"strangers accepted {row['strangers_accepted']}",
            flush=True,
        )
    if args.json_path:
        from utils.fileio import atomic_write_json

        atomic_write_json(args.json_path, figures)


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
