"""Export an inference model's backbone to ONNX for fast CPU inference with ONNX Runtime.

Usage:
    python export_onnx.py                                            # models/voiceprint_resnet34.pt -> .onnx
    python export_onnx.py --model_path runs/w16/inference.pt --output models/w16.onnx
    python infer_contrast.py --model_path models/voiceprint_resnet34.onnx ...   # any inference script

Only the backbone is exported (features (B, F, T) -> embedding (B, D), dynamic
batch and time axes): the features stay in torch (utils/features.py is the only
feature code), so an .onnx model computes exactly the training features. The
feature config, model config, EER threshold and training metadata are stored as
ONNX metadata_props (JSON), so the .onnx file is self-describing.

After the export, ONNX Runtime and PyTorch embed a few real recordings
(../shared/data/librispeech/dev-clean, or the audio/ demo clips when that folder
is absent); the export fails, writing nothing, unless every cosine distance is
below --tolerance. The output is written atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from utils.config import HelpFormatter
from utils.errors import run_cli

ROOT = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("VOICEPRINT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = p.add_argument
    # model
    add("--model_path", default="models/voiceprint_resnet34.pt", help="inference model (.pt) to export")
    add("--output", default=None, help="ONNX file to write (default: model_path with .onnx)")
    add("--opset", type=int, default=17, help="ONNX opset version")
    # verification
    add("--verify_files", nargs="*", default=None, help="audio files to compare on (default: real speech)")
    add(
        "--num_verify",
        type=int,
        default=4,
        help="how many recordings verify the export when --verify_files is not given",
    )
    add("--tolerance", type=float, default=1e-4, help="largest accepted cosine distance ONNX vs PyTorch")
    p.add_argument("--verbose", action="store_true", help="print the whole configuration first")
    return p


# verification audio


def default_verify_files(count: int) -> tuple[list[Path], str]:
    """One LibriSpeech dev-clean utterance per speaker (the longest of the first few), else the demo clips."""
    dev_clean = SHARED_DATA / "librispeech" / "dev-clean"
    if dev_clean.is_dir():
        files = []
        for speaker in sorted(p for p in dev_clean.iterdir() if p.is_dir())[:count]:
            candidates = sorted(speaker.rglob("*.mp3"))[:8]
            if candidates:
                files.append(max(candidates, key=lambda f: f.stat().st_size))  # longest: exercises long inputs
        if files:
            return files, f"real speech from {dev_clean}"
    return sorted((ROOT / "audio").glob("*.wav"))[:count], "the audio/ demo clips (../shared/data not found)"


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    from utils.audio import AudioError
    from utils.checkpoint import CheckpointError, resolve_model_path
    from utils.config import check_output_file, fail, print_arguments
    from utils.onnx_model import export_onnx

    args = build_parser().parse_args(argv)
    args.model_path = resolve_model_path(args.model_path)
    if args.output is None:
        args.output = str(Path(args.model_path).with_suffix(".onnx"))
    if args.verbose:
        print_arguments(args)
    if str(args.model_path).lower().endswith(".onnx"):
        fail(f"--model_path {args.model_path} is an ONNX model already: give the .pt it was exported from")
    check_output_file(args.output, "--output")
    if not str(args.output).lower().endswith(".onnx"):
        # the scripts pick ONNX Runtime by the suffix: an ONNX model named .pt loads nowhere
        fail(f"--output {args.output} must end in .onnx")
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        fail(f"--tolerance is a cosine distance above 0, got {args.tolerance}")
    if Path(args.output).resolve() == Path(args.model_path).resolve():
        fail(f"--output {args.output} would overwrite the model being exported")
    files, source = ([Path(f) for f in args.verify_files], "the given files") if args.verify_files else (None, "")
    if files is None:
        files, source = default_verify_files(args.num_verify)
    try:
        worst = export_onnx(args.model_path, args.output, args.opset, files, args.tolerance, source)
    except (CheckpointError, AudioError) as exc:
        fail(str(exc))
    size = Path(args.output).stat().st_size / 1e6
    print(f"wrote {args.output} ({size:.1f} MB); max cosine distance {worst:.2e}")


if __name__ == "__main__":
    run_cli(main)
