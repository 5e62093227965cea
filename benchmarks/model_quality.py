"""How well a model holds up on voices it never heard: EER on several real-speech sets, the original's
demo pairs at the model's stored threshold, and level invariance. One row per model (and, with
--resemblyzer, the pretrained Resemblyzer encoder on the same files, for reference).

Sets (all from ../shared/data, none used for training):
  valid   the 3 training speakers train.py holds out by default (--valid_speakers 3): for CHOOSING
  fsdd    Free Spoken Digit Dataset, 6 speakers x --fsdd_per_speaker digits (all ten digits mixed; 8 kHz, ~0.5 s)
  seed    the original's Chinese clips: a_1/a_2 and b_1/b_2 same, a_x/b_y different (verdicts)
  level   mean cosine between a clip and the same clip 20 dB and 40 dB quieter (1.0 = level-invariant)
  dev     the 5 speaker-disjoint dev-clean speakers: REPORT ONLY, once, on the final model

    python benchmarks/model_quality.py --model_path runs/a/inference.pt runs/b/inference.pt --sets valid fsdd seed level
    python benchmarks/model_quality.py --sets dev fsdd seed level --resemblyzer   # the final report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.config import fail, print_arguments  # noqa: E402

SETS = ("valid", "fsdd", "seed", "level", "dev")
DEV_SPEAKERS = ("777", "1272", "1988", "2035", "2803")
SEED_PAIRS = (("a_1", "a_2", True), ("b_1", "b_2", True), ("a_1", "b_1", False), ("a_1", "b_2", False),
              ("a_2", "b_1", False), ("a_2", "b_2", False))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", nargs="+", default=["models/voiceprint_resnet34.pt"], help="model files")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=["valid", "fsdd", "seed", "level"])
    parser.add_argument("--shared_data", default=str(ROOT.parent / "shared" / "data"), help="real speech folder")
    parser.add_argument("--train_list_path", default="dataset/train_list.txt", help="list the valid set is cut from")
    parser.add_argument("--fsdd_per_speaker", type=int, default=50, help="FSDD clips per speaker")
    parser.add_argument("--resemblyzer", action="store_true", help="also score the pretrained Resemblyzer encoder")
    parser.add_argument("--json_path", default=None, help="write the figures as JSON")
    parser.add_argument("--verbose", action="store_true", help="print the configuration")
    return parser


def set_files(name: str, shared: Path, train_list: str, fsdd_per_speaker: int) -> tuple[list[str], list[int]]:
    """(paths, integer speaker labels) of an all-pairs set."""
    from utils.data import read_list, split_validation

    if name == "valid":
        _, valid = split_validation(read_list(train_list), 3)
        return [p for p, _ in valid], [label for _, label in valid]
    if name == "dev":
        paths = [str(p) for s in DEV_SPEAKERS for p in sorted((shared / "librispeech/dev-clean" / s).rglob("*.mp3"))]
        return paths, [DEV_SPEAKERS.index(Path(p).parts[-3]) for p in paths]
    if name == "fsdd":
        by_speaker: dict[str, list[str]] = {}

        # every digit equally (the k-th take of digits 0-9, then the next take): text-independent trials
        def take_then_digit(path: Path) -> tuple[int, int]:
            digit, _, take = path.stem.split("_")
            return int(take), int(digit)

        for path in sorted((shared / "fsdd").glob("*.wav"), key=take_then_digit):
            by_speaker.setdefault(path.stem.split("_")[1], []).append(str(path))
        speakers = sorted(by_speaker)
        paths = [p for s in speakers for p in by_speaker[s][:fsdd_per_speaker]]
        return paths, [speakers.index(Path(p).stem.split("_")[1]) for p in paths]
    raise ValueError(name)


class ResemblyzerReference:
    """The pretrained Resemblyzer encoder as its package uses it (preprocess_wav + embed_utterance)."""

    def __init__(self) -> None:
        import warnings

        warnings.filterwarnings("ignore")
        from resemblyzer import VoiceEncoder, preprocess_wav

        self.encoder, self.preprocess = VoiceEncoder("cpu", verbose=False), preprocess_wav
        self.threshold = None
        self.model_path = "resemblyzer (pretrained)"

    def embed_array(self, wav, sample_rate: int = 16000, name: str = "audio"):
        return self.encoder.embed_utterance(self.preprocess(wav, source_sr=sample_rate))

    def embed_file(self, path: str):
        from utils.audio import load_audio

        return self.embed_array(load_audio(path))


def measure(embedder, sets: list[str], args: argparse.Namespace) -> dict:
    import numpy as np

    from utils.audio import AudioError, load_audio
    from utils.metrics import all_pairs_metrics

    shared = Path(args.shared_data)
    out: dict = {"model": embedder.model_path, "threshold": embedder.threshold}
    for name in sets:
        if name in ("valid", "dev", "fsdd"):
            paths, labels = set_files(name, shared, args.train_list_path, args.fsdd_per_speaker)
            emb, kept = [], []
            for path, label in zip(paths, labels):
                try:
                    emb.append(embedder.embed_file(path))
                    kept.append(label)
                except AudioError:
                    continue  # FSDD has a few clips under the minimum length
            m = all_pairs_metrics(np.stack(emb), np.array(kept))
            out[name] = {"eer": m["eer"], "eer_threshold": m["threshold"], "min_dcf": m["min_dcf"], "files": len(kept)}
        elif name == "seed":
            clips = {stem: embedder.embed_file(str(shared / "seed_samples" / f"{stem}.wav")) for stem in
                     ("a_1", "a_2", "b_1", "b_2")}  # fmt: skip
            threshold = embedder.threshold
            rows = []
            for a, b, same in SEED_PAIRS:
                score = float(clips[a] @ clips[b])
                right = None if threshold is None else (score >= threshold) == same
                rows.append({"pair": f"{a}/{b}", "same": same, "score": score, "right": right})
            out["seed"] = {"pairs": rows, "right": sum(bool(r["right"]) for r in rows), "of": len(rows)}
        elif name == "level":
            paths, _ = set_files("valid", shared, args.train_list_path, 0)
            cos = {20: [], 40: []}
            for path in paths[::12][:20]:
                wav = load_audio(path, max_seconds=8)
                ref = embedder.embed_array(wav)
                for db in cos:
                    cos[db].append(float(ref @ embedder.embed_array(wav * 10 ** (-db / 20))))
            out["level"] = {f"minus_{db}_db": float(np.mean(v)) for db, v in cos.items()}
    return out


def row(result: dict) -> str:
    parts = [f"{result['model']}"]
    for name in ("valid", "dev", "fsdd"):
        if name in result:
            r = result[name]
            parts.append(f"{name} EER {r['eer']:.2%} (thr {r['eer_threshold']:.3f}, minDCF {r['min_dcf']:.3f})")
    if "seed" in result:
        s = result["seed"]
        scores = " ".join(f"{r['pair']} {r['score']:.3f}" for r in s["pairs"])
        parts.append(f"seed {s['right']}/{s['of']} right at {result['threshold']} [{scores}]")
    if "level" in result:
        lv = result["level"]
        parts.append(f"level cos -20 dB {lv['minus_20_db']:.4f}, -40 dB {lv['minus_40_db']:.4f}")
    return "\n  ".join(parts)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.verbose:
        print_arguments(args)
    if not Path(args.shared_data).is_dir():
        fail(f"shared data not found: {args.shared_data}")
    from utils.embedder import Embedder

    results = []
    for path in args.model_path:
        results.append(measure(Embedder(path, device="cpu"), args.sets, args))
        print(row(results[-1]), flush=True)
    if args.resemblyzer:
        results.append(measure(ResemblyzerReference(), [s for s in args.sets if s != "seed"], args))
        print(row(results[-1]), flush=True)
    if args.json_path:
        from utils.fileio import atomic_write_json

        atomic_write_json(args.json_path, results)


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
