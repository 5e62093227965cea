"""eval.py end to end on one CPU thread, against the pretrained Resemblyzer encoder on the same files.

Usage:
    python benchmarks/eval_speed.py                       # 120 dev-clean files, both engines, Resemblyzer
    python benchmarks/eval_speed.py --files 40 --json_path runs/eval_speed.json

Each run is a fresh process pinned to one thread (OMP/MKL threads 1, torch threads 1, no decoding
workers), timed from start to exit, so Python start-up, imports and the model load count as well:
- `eval.py --engine torch` and `eval.py --engine onnx` on a list of the files (decode, speech
  detection, features, model, all-pairs scores, EER);
- Resemblyzer (optional package): the same decoder (utils.audio.load_audio), then its own
  preprocess_wav (level normalisation, webrtcvad trim) and embed_utterance per file, then all-pairs
  cosine scores.
The runs alternate round by round and each reports its median. The ratio is Resemblyzer's time
over ours (above 1: we are faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VOICEPRINT_SHARED_DATA", ROOT.parent / "shared" / "data"))
SPEAKERS = ("777", "1272", "1988", "2035", "2803")

RESEMBLYZER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from resemblyzer import VoiceEncoder, preprocess_wav
from utils.audio import load_audio
import torch
torch.set_num_threads(1)
encoder = VoiceEncoder("cpu", verbose=False)
paths = [line.split("\\t")[0] for line in open({list_path!r}) if line.strip()]
embeddings = np.stack([encoder.embed_utterance(preprocess_wav(load_audio(p), 16000)) for p in paths])
scores = embeddings @ embeddings.T
print(len(paths), float(scores.mean()))
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=120, help="dev-clean files (spread over its 5 dev speakers)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (median reported)")
    parser.add_argument("--model_path", default=str(ROOT / "models" / "voiceprint_resnet34.pt"))
    parser.add_argument("--quick", action="store_true", help="40 files, one round")
    parser.add_argument("--json_path", default=None, help="write the figures here (rows for benchmarks/run_all.py)")
    return parser


def timed(command: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        from utils.errors import UserError

        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"{command[1]} failed: {tail}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(ROOT))
    from utils.config import print_arguments
    from utils.fileio import atomic_write_text

    args = build_parser().parse_args(argv)
    if args.quick:
        args.files, args.repeats = min(args.files, 40), 1
    print_arguments(args)
    folder = SHARED_DATA / "librispeech" / "dev-clean"
    if not folder.is_dir():
        print(f"skipped: real speech not found at {folder} (set VOICEPRINT_SHARED_DATA)")
        return {"benchmark": "eval_speed", "skipped": f"no real speech at {folder}", "rows": []}
    per_speaker = -(-args.files // len(SPEAKERS))
    items = [(p, s) for s in SPEAKERS for p in sorted((folder / s).rglob("*.mp3"))[:per_speaker]][: args.files]
    audio_seconds = 0.0
    import soundfile as sf

    for path, _ in items:
        audio_seconds += sf.info(str(path)).duration
    with tempfile.TemporaryDirectory(prefix="eval_speed_") as work:
        list_path = Path(work) / "list.txt"
        atomic_write_text(list_path, "".join(f"{p}\t{s}\n" for p, s in items))
        ours = [sys.executable, "eval.py", "--list_path", str(list_path), "--model_path", args.model_path,
                "--device", "cpu", "--num_workers", "0"]  # fmt: skip
        runs = {
            "eval.py --engine torch": [*ours, "--engine", "torch"],
            "eval.py --engine onnx": [*ours, "--engine", "onnx"],
        }
        from importlib.util import find_spec

        if find_spec("resemblyzer") is None:
            print("Resemblyzer skipped: not installed (pip install resemblyzer)")
        else:
            runs["Resemblyzer"] = [sys.executable, "-c", RESEMBLYZER.format(root=str(ROOT), list_path=str(list_path))]
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, command in runs.items():
                times[name].append(timed(command))
    print(f"{len(items)} files, {audio_seconds / 60:.1f} min of speech, one thread, median of {args.repeats}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {"benchmark": "eval_speed", "files": len(items), "audio_seconds": audio_seconds, "seconds": medians,
              "rows": []}  # fmt: skip
    for name, seconds in medians.items():
        line = f"{name:24s} {seconds:7.1f} s  (RTF {seconds / audio_seconds:.4f})"
        if "Resemblyzer" in medians and name != "Resemblyzer":
            ratio = medians["Resemblyzer"] / seconds
            line += f"  Resemblyzer / this: x{ratio:.2f}"
            result["rows"].append({
                "what": f"{name}, {len(items)} files end to end, 1 thread",
                "ours": f"{seconds:.1f} s", "baseline": f"{medians['Resemblyzer']:.1f} s (Resemblyzer)", "ratio": ratio,
            })  # fmt: skip
        print(line)
    if args.json_path:
        from utils.fileio import atomic_write_json

        atomic_write_json(args.json_path, result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from utils.errors import run_cli

    run_cli(main)
