"""Training throughput (samples/s): the default recipe vs the original configuration, same run.

Usage:
    python benchmarks/train_throughput.py                       # CPU, all threads
    python benchmarks/train_throughput.py --device cuda --amp both --batch_sizes 128 256

Each row times full optimiser steps (features + backbone + ArcFace + AdamW) on
random waveforms, so data loading is excluded and only the model recipe is
compared. The ratio column is against the original configuration
(ResNet34 width 64, 257-bin spectrogram, max pooling, 2.57 s crops) measured
in the same process with the same batch size and precision.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.features import FeatureConfig, FeatureExtractor  # noqa: E402
from utils.heads import build_head  # noqa: E402
from utils.model import build_model  # noqa: E402

RECIPES = {
    "original (w64, spectrogram, max, 2.57 s)": dict(
        feature="spectrogram", width=64, pooling="max", emb=512, crop=2.57
    ),
    "default (w16, fbank, stats, 2.0 s)": dict(feature="fbank", width=16, pooling="stats", emb=256, crop=2.0),
    "default at equal crop (2.57 s)": dict(feature="fbank", width=16, pooling="stats", emb=256, crop=2.57),
    "w32 (fbank, stats, 2.0 s)": dict(feature="fbank", width=32, pooling="stats", emb=256, crop=2.0),
}


def measure(recipe: dict, batch_size: int, device: torch.device, amp: bool, seconds: float) -> float:
    fc = FeatureConfig(feature=recipe["feature"])
    extractor = FeatureExtractor(fc).to(device)
    model = build_model("resnet34", feat_dim=fc.num_bins, embedding_dim=recipe["emb"], width=recipe["width"],
                        pooling=recipe["pooling"]).to(device)  # fmt: skip
    head = build_head("arcface", recipe["emb"], 1000).to(device)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    wav = torch.randn(batch_size, int(recipe["crop"] * 16000), device=device) * 0.1
    label = torch.randint(0, 1000, (batch_size,), device=device)
    dtype = torch.bfloat16

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=amp):
            loss, _ = head(model(extractor(wav)), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up (cuDNN autotune, oneDNN primitive caches)
        step()
    sync()
    steps, start = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and steps >= 2:
            return steps * batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--amp", choices=("off", "on", "both"), default="off")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per row")
    parser.add_argument("--recipes", nargs="+", default=None, help="subset of recipe names (prefix match)")
    parser.add_argument("--json_path", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    amps = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    recipes = {k: v for k, v in RECIPES.items() if not args.recipes or any(k.startswith(r) for r in args.recipes)}
    rows = []
    for batch_size in args.batch_sizes:
        for amp in amps:
            baseline = None
            for label, recipe in recipes.items():
                rate = measure(recipe, batch_size, device, amp, args.seconds)
                if label.startswith("original"):
                    baseline = rate
                ratio = rate / baseline if baseline else float("nan")
                rows.append({"recipe": label, "batch_size": batch_size, "amp": amp, "samples_per_s": rate,
                             "ratio_vs_original": ratio})  # fmt: skip
                print(f"{label:45s} batch {batch_size:4d} amp {'on ' if amp else 'off'} "
                      f"{rate:9.1f} samples/s  x{ratio:6.2f} vs original", flush=True)  # fmt: skip
    if args.json_path:
        from utils.fileio import atomic_write_json

        atomic_write_json(args.json_path, {"device": name, "rows": rows})


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
