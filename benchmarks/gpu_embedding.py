"""Embedding throughput on a GPU against the CPU, measured in the same run (issue 7: GPU figures).

Usage:
    python benchmarks/gpu_embedding.py --audio_dir <folder of real speech> [--device cuda]
    python benchmarks/gpu_embedding.py --audio_dir ../shared/data/librispeech/dev-clean/777 --device cpu  # dry run

Rows (medians of --repeats rounds, after a warm-up):
- one 5 s clip at a time (latency): Embedder.embed_array on the device vs on 1 CPU thread;
- batches of 5 s clips (throughput, clips/s and real-time factor): Embedder.embed_waveforms, the
  batched path eval.py-style bulk extraction uses, for batch sizes --batch_sizes;
- whole files end to end (decode + features + model): Embedder.embed_files over the folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--audio_dir", required=True, help="folder searched recursively for audio files (real speech)")
    add("--model_path", default=str(ROOT / "models" / "voiceprint_resnet34.pt"))
    add("--device", default="cuda")
    add("--batch_sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    add("--clip_seconds", type=float, default=5.0)
    add("--repeats", type=int, default=5)
    add("--json_path", default=None)
    return p


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from utils.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, load_audio
    from utils.config import print_arguments
    from utils.embedder import Embedder
    from utils.fileio import atomic_write_json

    args = build_parser().parse_args(argv)
    print_arguments(args)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")

    # data: real speech, cut or tiled to equal-length clips
    files = sorted(p for p in Path(args.audio_dir).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        sys.exit(f"error: no audio files in {args.audio_dir}")
    n = int(args.clip_seconds * SAMPLE_RATE)
    clips = [np.resize(load_audio(f), n).astype(np.float32) for f in files]
    audio_seconds = sum(len(load_audio(f)) for f in files) / SAMPLE_RATE

    # engines
    torch.set_num_threads(1)
    cpu = Embedder(args.model_path, device="cpu")
    dev = Embedder(args.model_path, device=device)
    rows = []

    def row(what: str, ours: float, base: float, unit: str) -> None:
        rows.append({"what": what, "device": ours, "cpu_1_thread": base, "unit": unit, "ratio": base / ours})
        print(
            f"{what:<44} {args.device}: {ours * 1000:9.2f} ms   cpu 1 thread: {base * 1000:9.2f} ms   x{base / ours:.1f}"
        )

    # one clip at a time
    t_dev = timed(lambda: dev.embed_array(clips[0]), args.repeats, sync)
    t_cpu = timed(lambda: cpu.embed_array(clips[0]), args.repeats, lambda: None)
    row(f"one {args.clip_seconds:g} s clip (latency)", t_dev, t_cpu, "s per clip")

    # batches
    for batch in args.batch_sizes:
        wavs = [clips[i % len(clips)] for i in range(batch)]
        t_dev = timed(lambda wavs=wavs: dev.embed_waveforms(wavs), args.repeats, sync)
        t_cpu = (
            timed(lambda wavs=wavs: cpu.embed_waveforms(wavs), max(1, args.repeats // 2), lambda: None)
            if batch <= 64
            else None
        )
        clips_per_s = batch / t_dev
        rtf = t_dev / (batch * args.clip_seconds)
        line = f"batch {batch:>4} x {args.clip_seconds:g} s: {clips_per_s:9.1f} clips/s on {args.device}, RTF {rtf:.2e}"
        if t_cpu is not None:
            line += f"; cpu 1 thread {batch / t_cpu:.1f} clips/s, x{t_cpu / t_dev:.1f}"
        print(line)
        rows.append({"what": f"batch {batch}", "clips_per_s": clips_per_s, "rtf": rtf,
                     "cpu_clips_per_s": None if t_cpu is None else batch / t_cpu})  # fmt: skip

    # whole files, decode included
    t_dev = timed(lambda: dev.embed_files(files, num_workers=0), 2, sync)
    t_cpu = timed(lambda: cpu.embed_files(files, num_workers=0), 1, lambda: None)
    print(
        f"{len(files)} whole files ({audio_seconds:.0f} s of speech), decode included: "
        f"{args.device} RTF {t_dev / audio_seconds:.4f}, cpu 1 thread RTF {t_cpu / audio_seconds:.4f}, x{t_cpu / t_dev:.1f}"
    )
    rows.append({"what": "whole files", "device_rtf": t_dev / audio_seconds, "cpu_rtf": t_cpu / audio_seconds})
    # same embeddings on both devices
    a = dev.embed_files(files[:4], num_workers=0)[0]
    b = cpu.embed_files(files[:4], num_workers=0)[0]
    worst = float(np.max(1.0 - np.sum(a * b, axis=1)))
    print(f"max cosine distance {args.device} vs cpu: {worst:.2e}")
    rows.append({"what": "max cosine distance device vs cpu", "value": worst})
    if args.json_path:
        atomic_write_json(args.json_path, rows)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # utils/, for running as a script
    from utils.errors import run_cli

    run_cli(main)
