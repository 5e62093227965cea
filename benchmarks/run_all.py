"""Run every CPU benchmark and print one table: what | ours | baseline | ratio, plus the machine.

Usage:
    python benchmarks/run_all.py                       # everything (tens of minutes on 2 cores)
    python benchmarks/run_all.py --quick               # reduced version, a few minutes
    python benchmarks/run_all.py --skip training --markdown_path /tmp/table.md

Each benchmark runs in its own process (benchmarks/embedding_speed.py,
scoring_speed.py, eval_speed.py, train_throughput.py) and hands back its rows as JSON; each row's
baseline was measured in the same run, interleaved with ours, so the ratio
("times faster than the baseline"; for training, samples/s ours / baseline) holds
even on a busy machine where the absolute figures do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PARTS = ("embedding", "scoring", "eval", "training")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--quick", action="store_true", help="reduced sizes and repeats (a few minutes)")
    add("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    add("--train_seconds", type=float, default=5.0, help="timed seconds per training recipe")
    add("--train_batch_sizes", type=int, nargs="+", default=None, help="default 32, --quick 2")
    add("--json_path", default=None, help="also write all rows and the machine as JSON")
    add("--markdown_path", default=None, help="also write the table as Markdown")
    return p


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_start": _load(),
    }


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_part(name: str, command: list[str], log: list[str]) -> tuple[dict | None, float]:
    """Run one benchmark script, streaming its output; returns (its JSON, seconds)."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *command], cwd=ROOT)
    seconds = time.perf_counter() - start
    json_path = Path(command[command.index("--json_path") + 1])
    if proc.returncode != 0 or not json_path.exists():
        log.append(f"{name} failed (exit {proc.returncode})")
        return None, seconds
    return json.loads(json_path.read_text()), seconds


def training_rows(result: dict) -> list[dict]:
    base: dict[tuple, float] = {}
    rows = []
    for r in result["rows"]:
        key = (r["batch_size"], r["amp"])
        if r["recipe"].startswith("original"):
            base[key] = r["samples_per_s"]
            continue
        if key in base:
            rows.append({
                "what": f"train step, CPU, batch {r['batch_size']}: {r['recipe']}",
                "ours": f"{r['samples_per_s']:.3g} samples/s",
                "baseline": f"{base[key]:.3g} samples/s (orig w64, spectrogram, max, 2.57 s)",
                "ratio": r["samples_per_s"] / base[key],
            })  # fmt: skip
    return rows


def format_table(rows: list[dict], info: dict[str, Any]) -> str:
    header = ["what", "ours", "baseline", "ratio"]
    body = [[r["what"], r["ours"], r["baseline"], f"x{r['ratio']:,.1f}" if r["ratio"] == r["ratio"] else "n/a"]
            for r in rows]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = [
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, Python {info['python']}; "
        f"load average at start {info['load_average_start']}, at end {info.get('load_average_end', 'n/a')}",
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from utils.config import print_arguments

    args = build_parser().parse_args(argv)
    if args.train_batch_sizes is None:
        args.train_batch_sizes = [2] if args.quick else [32]
    print_arguments(args)
    info = machine()
    quick = ["--quick"] if args.quick else []
    rows: list[dict] = []
    notes: list[str] = []
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="run_all_") as tmp:
        parts = {
            "embedding": [str(HERE / "embedding_speed.py"), *quick],
            "scoring": [str(HERE / "scoring_speed.py"), *quick],
            "eval": [str(HERE / "eval_speed.py"), *quick],
            "training": [str(HERE / "train_throughput.py"), "--device", "cpu", "--seconds", str(args.train_seconds),
                         "--batch_sizes", *map(str, args.train_batch_sizes)]
                        + (["--recipes", "original", "default (w16"] if args.quick else []),
        }  # fmt: skip
        for name, command in parts.items():
            if name in args.skip:
                continue
            result, timings[name] = run_part(name, [*command, "--json_path", f"{tmp}/{name}.json"], notes)
            if result is None:
                continue
            if name == "training":
                rows += training_rows(result)
                continue
            rows += result["rows"]
            for key in ("skipped", "resemblyzer"):
                if key in result:
                    notes.append(f"{name}: {key}: {result[key]}")
    info["load_average_end"] = _load()
    table = format_table(rows, info)
    print("\n" + table)
    print("ratio = baseline time / our time (training: our samples/s / baseline samples/s); higher is better")
    print("run time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    for note in notes:
        print(f"note: {note}")
    from utils.fileio import atomic_write_json, atomic_write_text

    if args.markdown_path:
        atomic_write_text(args.markdown_path, table + "\n")
    out = {"machine": info, "rows": rows, "notes": notes, "part_seconds": timings, "quick": args.quick}
    if args.json_path:
        atomic_write_json(args.json_path, out)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # utils/, for running as a script
    from utils.errors import run_cli

    run_cli(main)
