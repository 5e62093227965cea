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
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from utils.config import HelpFormatter

ROOT = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("VOICEPRINT_SHARED_DATA", ROOT.parent / "shared" / "data"))
MAX_VERIFY_SECONDS = 30.0


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


# export


def export_backbone(model: Any, num_bins: int, opset: int) -> bytes:
    """torch.onnx.export of the backbone with dynamic batch and time axes; returns the serialised model."""
    import torch

    from utils.embedder import ONNX_INPUT, ONNX_OUTPUT

    example = torch.randn(1, num_bins, 300)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # the TorchScript-based exporter needs no onnxscript; torch 2.9+ warns that it is no longer the default
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch", 2: "frames"}, ONNX_OUTPUT: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def add_metadata(model_bytes: bytes, info: dict[str, Any], source: str) -> bytes:
    """Store format + JSON model/feature config, threshold and meta as metadata_props."""
    import onnx
    import torch

    from utils.embedder import ONNX_FORMAT, ONNX_METADATA_KEYS

    proto = onnx.load_from_string(model_bytes)
    meta = dict(info.get("meta") or {}, exported_from=Path(source).name, torch_version=torch.__version__)
    values = {"format": ONNX_FORMAT, **{k: json.dumps(info[k] if k != "meta" else meta) for k in ONNX_METADATA_KEYS}}
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "voiceprint export_onnx.py"
    proto.doc_string = "speaker-embedding backbone: features (batch, F, frames) -> embedding (batch, D); see metadata"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def verify(model_bytes: bytes, model: Any, feature_config: dict[str, Any], files: list[Path]) -> list[float]:
    """Cosine distance between PyTorch and ONNX Runtime embeddings for each file (plus one batch of two)."""
    import numpy as np
    import torch

    from utils.audio import load_audio
    from utils.embedder import OnnxBackbone, onnx_info, onnx_session
    from utils.features import FeatureConfig, FeatureExtractor

    session = onnx_session(model_bytes)
    onnx_info(session)  # the metadata must read back
    backbone = OnnxBackbone(session)
    extractor = FeatureExtractor(FeatureConfig.from_dict(feature_config))
    wavs = [load_audio(f, max_seconds=MAX_VERIFY_SECONDS) for f in files]
    shortest = min(len(w) for w in wavs)
    inputs = [torch.from_numpy(w)[None] for w in wavs]
    inputs.append(torch.from_numpy(np.stack([w[:shortest] for w in wavs[:2]])))  # dynamic batch axis
    distances = []
    with torch.inference_mode():
        for wav in inputs:
            feats = extractor(wav)
            a = torch.nn.functional.normalize(model(feats).float(), dim=1)
            b = torch.nn.functional.normalize(backbone(feats).float(), dim=1)
            distances += (1.0 - (a * b).sum(dim=1).double()).abs().tolist()
    return distances


def export_onnx(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    opset: int = 17,
    verify_files: list[Path] | None = None,
    tolerance: float = 1e-4,
    num_verify: int = 4,
) -> float:
    """Export, verify against PyTorch, then write `output` atomically; returns the max cosine distance.

    Raises CheckpointError (nothing written) when the model cannot be loaded or exported, or when ONNX
    Runtime disagrees with PyTorch by more than `tolerance`.
    """
    from utils.checkpoint import CheckpointError, atomic_write_bytes, load_inference_model
    from utils.features import FeatureConfig

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CheckpointError("onnx is not installed: pip install onnx onnxruntime") from None
    model, info = load_inference_model(model_path, "cpu")
    num_bins = FeatureConfig.from_dict(info["feature_config"]).num_bins
    try:
        model_bytes = add_metadata(export_backbone(model, num_bins, opset), info, str(model_path))
    except Exception as exc:
        raise CheckpointError(f"ONNX export of {model_path} failed: {str(exc).strip().splitlines()[0]}") from None
    source = "the given files"
    if not verify_files:
        verify_files, source = default_verify_files(num_verify)
    if not verify_files:
        raise CheckpointError("no audio to verify the export on (pass --verify_files)")
    distances = verify(model_bytes, model, info["feature_config"], list(verify_files))
    worst = max(distances)
    print(f"verified on {len(verify_files)} recordings ({source}) + one batch of 2: "
          f"max cosine distance ONNX Runtime vs PyTorch {worst:.2e} (tolerance {tolerance:g})")  # fmt: skip
    if not worst < tolerance:
        raise CheckpointError(
            f"ONNX Runtime output differs from PyTorch: max cosine distance {worst:.2e} >= {tolerance:g}; "
            f"{output} not written"
        )
    atomic_write_bytes(output, model_bytes)
    return worst


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    from utils.audio import AudioError
    from utils.checkpoint import CheckpointError, resolve_model_path
    from utils.config import check_output_file, fail, print_arguments

    args = build_parser().parse_args(argv)
    args.model_path = resolve_model_path(args.model_path)
    if args.output is None:
        args.output = str(Path(args.model_path).with_suffix(".onnx"))
    if args.verbose:
        print_arguments(args)
    check_output_file(args.output, "--output")
    if Path(args.output).resolve() == Path(args.model_path).resolve():
        fail(f"--output {args.output} would overwrite the model being exported")
    files = [Path(f) for f in args.verify_files] if args.verify_files else None
    try:
        worst = export_onnx(args.model_path, args.output, args.opset, files, args.tolerance, args.num_verify)
    except (CheckpointError, AudioError) as exc:
        fail(str(exc))
    size = Path(args.output).stat().st_size / 1e6
    print(f"wrote {args.output} ({size:.1f} MB); max cosine distance {worst:.2e}")


if __name__ == "__main__":
    main()
