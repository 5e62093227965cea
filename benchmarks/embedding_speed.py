"""Embedding speed on CPU: real-time factor of load + features + model on real speech, and feature extraction.

Usage:
    python benchmarks/embedding_speed.py                      # 5 s and 30 s clips, 1 thread and all threads
    python benchmarks/embedding_speed.py --quick              # 5 s clip, 1 thread, fewer repeats
    python benchmarks/embedding_speed.py --json_path out.json # rows for benchmarks/run_all.py

Real-time factor (RTF) = processing seconds / audio seconds (lower is faster); every
call loads the clip from its MP3 file (utils.audio.load_audio), computes the
features and runs the backbone, exactly as `Embedder.embed_array` does. Engines:
- the bundled model (ResNet34 w16, fbank, stats pooling) in PyTorch eager, as a
  traced + frozen TorchScript module (benchmark only), and in ONNX Runtime
  (`Embedder` on the .onnx file that export_onnx.py writes; exported to a temp folder here);
- the original configuration (ResNet34 w64, 257-bin spectrogram, max pooling,
  512-d), randomly initialised (speed only), in PyTorch eager;
- Resemblyzer (its own VAD trim + mel + LSTM) when it is installed.
Feature extraction: utils.features.FeatureExtractor on one batch of 32 x 3 s
against the original's per-item librosa loader (reimplemented below as the baseline).

Timings interleave all engines round by round and report medians, so the load
from other processes hits every engine alike. The ratio column is always
"how many times faster than the baseline" (baseline time / our time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from summary import row  # benchmarks/summary.py (the script folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VOICEPRINT_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEV_CLEAN = SHARED_DATA / "librispeech" / "dev-clean"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--model_path", default=str(ROOT / "models" / "voiceprint_resnet34.pt"))
    add("--clip_seconds", type=float, nargs="+", default=[5.0, 30.0])
    add("--threads", nargs="+", default=["1", "all"], help="thread counts to test ('all' = every core)")
    add("--repeats", type=int, default=5, help="timed rounds per engine (median reported)")
    add("--quick", action="store_true", help="5 s clip, 1 thread, 3 rounds")
    add("--skip_original", action="store_true", help="skip the (slow) original configuration")
    add("--skip_resemblyzer", action="store_true")
    add("--skip_features", action="store_true")
    add("--json_path", default=None, help="write the summary rows here (for run_all.py)")
    return p


# timing


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so background load is shared fairly."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def thread_counts(values: list[str]) -> list[int]:
    cores = os.cpu_count() or 1
    counts = [cores if v == "all" else int(v) for v in values]
    return list(dict.fromkeys(c for c in counts if c >= 1))


# clips


def pick_clips(clip_seconds: list[float]) -> dict[float, Path]:
    """The longest dev-clean file (32.6 s) for long clips; a mid-length one of another speaker for short ones."""
    files = sorted(DEV_CLEAN.rglob("*.mp3"), key=lambda f: (-f.stat().st_size, str(f)))
    longest = files[0]
    others = [f for f in files if f.parts[-3] != longest.parts[-3]]
    mid = others[len(others) // 3]  # 40 kbps MP3: size is proportional to duration
    return {s: (longest if s > 10 else mid) for s in clip_seconds}


def feature_files(count: int, min_bytes: int = 30_000) -> list[Path]:
    """`count` dev-clean files of at least ~6 s (40 kbps), spread over speakers."""
    files = [f for f in sorted(DEV_CLEAN.rglob("*.mp3")) if f.stat().st_size >= min_bytes]
    step = max(len(files) // count, 1)
    return files[::step][:count]


# engines


def original_loader(path: str, seconds: float, sr: int = 16000) -> Any:
    """The original project's evaluation loader (librosa), as the feature baseline.

    librosa.load, append the reversed signal, STFT (n_fft 512, win 400, hop 160), magnitude via
    magphase, crop to the frames of `seconds`, per-frame mean/std normalisation over frequency.
    (The original decoded the whole file; `duration` here decodes only what is used, which favours it.)
    """
    import librosa
    import numpy as np

    wav, _ = librosa.load(path, sr=sr, duration=seconds)
    extended = np.append(wav, wav[::-1])
    linear = librosa.stft(extended, n_fft=512, win_length=400, hop_length=160)
    mag, _ = librosa.magphase(linear)
    spec = mag[:, : int(seconds * sr) // 160 + 1]
    mean = np.mean(spec, 0, keepdims=True)
    std = np.std(spec, 0, keepdims=True)
    return ((spec - mean) / (std + 1e-5))[np.newaxis]


def original_features_in_memory(wav: Any) -> Any:
    """The same librosa steps on an already decoded waveform (features only)."""
    import librosa
    import numpy as np

    extended = np.append(wav, wav[::-1])
    mag, _ = librosa.magphase(librosa.stft(extended, n_fft=512, win_length=400, hop_length=160))
    spec = mag[:, : len(wav) // 160 + 1]
    return (spec - spec.mean(0, keepdims=True)) / (spec.std(0, keepdims=True) + 1e-5)


def make_torchscript(model: Any, num_bins: int) -> Any:
    """Traced + frozen + optimize_for_inference backbone (BN folded into convs); benchmark only."""
    import warnings

    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(model, torch.randn(1, num_bins, 300))
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def build_engines(
    model_path: str, work: Path, clips: list[Path], skip_original: bool, skip_resemblyzer: bool
) -> dict[str, Any]:
    """name -> Embedder-like object with embed_array(wav); built after torch.set_num_threads(threads)."""
    import copy

    import torch

    from utils.checkpoint import save_inference_model
    from utils.embedder import Embedder
    from utils.features import FeatureConfig
    from utils.model import build_model
    from utils.onnx_model import export_onnx

    engines: dict[str, Any] = {}
    eager = Embedder(model_path, device="cpu")
    engines["bundled eager"] = eager
    script = copy.copy(eager)
    script.model = make_torchscript(eager.model, eager.feature_config.num_bins)
    engines["bundled TorchScript"] = script
    onnx_path = work / "bundled.onnx"
    try:
        if not onnx_path.exists():
            export_onnx(model_path, onnx_path, verify_files=clips)  # fails unless it matches
        engines["bundled ONNX Runtime"] = Embedder(onnx_path)  # session threads = torch.get_num_threads()
    except Exception as exc:  # onnx/onnxruntime missing: report and go on
        print(f"ONNX Runtime skipped: {exc}")
    if not skip_original:
        original_path = work / "original.pt"
        if not original_path.exists():
            fc = FeatureConfig(feature="spectrogram")
            config = dict(name="resnet34", feat_dim=fc.num_bins, embedding_dim=512, width=64, pooling="max")
            torch.manual_seed(0)
            save_inference_model(original_path, build_model(**config).eval(), config, fc.to_dict(), None)
        engines["original eager"] = Embedder(original_path, device="cpu")
    if not skip_resemblyzer:
        resemblyzer = ResemblyzerEngine.create()
        if resemblyzer is not None:
            engines["Resemblyzer"] = resemblyzer
    return engines


class ResemblyzerEngine:
    """Resemblyzer's full pipeline on a decoded 16 kHz waveform: volume normalisation, VAD trim, mel, LSTM."""

    unavailable_reason: str | None = None

    def __init__(self, encoder: Any, preprocess: Callable) -> None:
        self.encoder, self.preprocess = encoder, preprocess

    @classmethod
    def create(cls) -> ResemblyzerEngine | None:
        import contextlib
        import io

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                from resemblyzer import VoiceEncoder, preprocess_wav

                return cls(VoiceEncoder("cpu"), preprocess_wav)
        except Exception as exc:  # not installed, or its webrtcvad cannot import
            cls.unavailable_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return None

    def embed_array(self, wav: Any, sample_rate: int = 16000) -> Any:
        return self.encoder.embed_utterance(self.preprocess(wav, source_sr=None))


# benchmarks


def embedding_rtf(args: argparse.Namespace, work: Path) -> tuple[list[dict], list[dict]]:
    import numpy as np
    import torch

    from utils.audio import load_audio

    clips = pick_clips(args.clip_seconds)
    detail, rows = [], []
    for threads in thread_counts(args.threads):
        torch.set_num_threads(threads)
        engines = build_engines(
            args.model_path, work, sorted(set(clips.values())), args.skip_original, args.skip_resemblyzer
        )
        for seconds, path in clips.items():
            audio_seconds = len(load_audio(path, max_seconds=seconds)) / 16000
            fns = {
                name: (lambda e=engine, p=path, s=seconds: e.embed_array(load_audio(p, max_seconds=s)))
                for name, engine in engines.items()
            }
            # correctness of the fast paths on this clip (cosine distance to eager)
            ref = engines["bundled eager"].embed_array(load_audio(path, max_seconds=seconds))
            dist = {
                n: float(1 - np.dot(ref, e.embed_array(load_audio(path, max_seconds=seconds))))
                for n, e in engines.items()
                if n.startswith("bundled ") and n != "bundled eager"
            }
            repeats = args.repeats if seconds <= 10 or "original eager" not in engines else max(2, args.repeats // 2)
            medians = interleaved_medians(fns, repeats)
            rtf = {name: t / audio_seconds for name, t in medians.items()}
            label = f"embed {audio_seconds:g} s clip, {threads} thread{'s' if threads > 1 else ''}"
            for name, value in rtf.items():
                detail.append({"clip_seconds": audio_seconds, "threads": threads, "engine": name, "rtf": value,
                               "median_seconds": medians[name], "cosine_distance_to_eager": dist.get(name)})  # fmt: skip
                note = f"  (cosine distance to eager {dist[name]:.1e})" if name in dist else ""
                print(f"{label:32s} {name:22s} RTF {value:8.4f}  ({medians[name] * 1000:8.1f} ms){note}", flush=True)
            base, eager = rtf.get("original eager"), rtf["bundled eager"]
            if base:
                rows.append(row(f"{label}: eager vs original", eager, base, "RTF", "", "orig config, eager"))
            for name in ("bundled TorchScript", "bundled ONNX Runtime"):
                if name in rtf:
                    rows.append(row(f"{label}: {name[8:]} vs eager", rtf[name], eager, "RTF", "", "bundled, eager"))
            fastest = min((n for n in rtf if n.startswith("bundled ")), key=rtf.get)
            if base and fastest != "bundled eager":
                rows.append(row(f"{label}: {fastest[8:]} vs original", rtf[fastest], base, "RTF", "",
                                "orig config, eager"))  # fmt: skip
            if "Resemblyzer" in rtf:
                rows.append(row(f"{label}: {fastest[8:]} vs Resemblyzer", rtf[fastest], rtf["Resemblyzer"], "RTF", "",
                                "Resemblyzer"))  # fmt: skip
    if not args.skip_resemblyzer and ResemblyzerEngine.unavailable_reason:
        print(f"Resemblyzer skipped: {ResemblyzerEngine.unavailable_reason}")
    return detail, rows


def feature_speed(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    import numpy as np
    import torch

    from utils.audio import load_audio
    from utils.features import FeatureConfig, FeatureExtractor

    files = [str(f) for f in feature_files(32)]
    seconds = 3.0
    fbank = FeatureExtractor(FeatureConfig(feature="fbank"))
    spectrogram = FeatureExtractor(FeatureConfig(feature="spectrogram"))
    wavs = [load_audio(f, max_seconds=seconds) for f in files]
    batch = torch.from_numpy(np.stack(wavs))
    # same features as the original (up to float32 rounding)?
    ref = original_features_in_memory(wavs[0])
    # the last 2 frames differ by design: the original mirrored the signal past its end, we pad with zeros
    diff = float(np.abs(spectrogram(batch[:1])[0].numpy()[:, :-2] - ref[:, :-2]).max())
    print(f"torch spectrogram vs the original librosa features: max abs difference {diff:.1e} (normalised units)")
    detail, rows = [], []
    repeats = max(args.repeats, 3)
    for threads in thread_counts(args.threads):
        torch.set_num_threads(threads)

        def ours_full(extractor: Any = fbank) -> Any:
            with torch.inference_mode():
                return extractor(torch.from_numpy(np.stack([load_audio(f, max_seconds=seconds) for f in files])))

        def ours_only(extractor: Any) -> Any:
            with torch.inference_mode():
                return extractor(batch)

        fns = {
            "load + fbank, torch batched": ours_full,
            "load + spectrogram, original librosa loader": lambda: [original_loader(f, seconds) for f in files],
            "fbank only, torch batched": lambda: ours_only(fbank),
            "spectrogram only, torch batched": lambda: ours_only(spectrogram),
            "spectrogram only, librosa per item": lambda: [original_features_in_memory(w) for w in wavs],
        }
        medians = interleaved_medians(fns, repeats)
        label = f"features 32 x 3 s, {threads} thread{'s' if threads > 1 else ''}"
        for name, value in medians.items():
            detail.append({"threads": threads, "what": name, "median_seconds": value})
            print(f"{label:32s} {name:45s} {value * 1000:8.1f} ms", flush=True)
        rows.append(row(f"{label}: load + features", medians["load + fbank, torch batched"] * 1000,
                        medians["load + spectrogram, original librosa loader"] * 1000, "ms", "torch fbank batch",
                        "orig librosa loader per item"))  # fmt: skip
        rows.append(row(f"{label}: features only", medians["fbank only, torch batched"] * 1000,
                        medians["spectrogram only, librosa per item"] * 1000, "ms", "torch fbank batch",
                        "librosa spectrogram per item"))  # fmt: skip
    return detail, rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from utils.config import print_arguments

    args = build_parser().parse_args(argv)
    if args.quick:
        args.clip_seconds = [s for s in args.clip_seconds if s <= 10] or [5.0]
        args.threads = ["1"]
        args.repeats = min(args.repeats, 3)
    print_arguments(args)
    result: dict[str, Any] = {"benchmark": "embedding_speed", "rows": [], "detail": {}}
    if not DEV_CLEAN.is_dir():
        print(f"skipped: real speech not found at {DEV_CLEAN} (set VOICEPRINT_SHARED_DATA)")
        result["skipped"] = f"no real speech at {DEV_CLEAN}"
    else:
        import torch

        print(f"torch {torch.__version__}, {os.cpu_count()} cores")
        with tempfile.TemporaryDirectory(prefix="embedding_speed_") as work:
            detail, rows = embedding_rtf(args, Path(work))
        result["detail"]["embedding"] = detail
        result["rows"] += rows
        if not args.skip_features:
            detail, rows = feature_speed(args)
            result["detail"]["features"] = detail
            result["rows"] += rows
        if ResemblyzerEngine.unavailable_reason:
            result["resemblyzer"] = f"skipped: {ResemblyzerEngine.unavailable_reason}"
    if args.json_path:
        from utils.fileio import atomic_write_json

        atomic_write_json(args.json_path, result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # utils/, for running as a script
    from utils.errors import run_cli

    run_cli(main)
