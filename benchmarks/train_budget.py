"""Does a CPU training run with a minutes budget end clearly better than after 2 steps, and steadily?

Usage:
    python benchmarks/train_budget.py                          # 10 minutes, idle then busy machine
    python benchmarks/train_budget.py --minutes 3 --modes idle --json_path runs/train_budget.json

The default recipe as a user runs it (`python train.py --max_minutes M --device cpu`, fresh
processes) on dataset/train_list.txt (create_data.py's suggested split), twice per mode:
- baseline: `--max_steps 2` (the model after 2 optimiser steps);
- budget: `--max_minutes M` (start-up and validation included).
Both are scored by train.py itself on its validation split (3 training speakers held out), so no
number here comes from the dev set. Modes: `idle`, and `busy`, where one CPU-bound process per core
runs beside training for the whole run, as on a shared machine; a budget in minutes must not leave
a busy run inside its warm-up. Printed per mode: validation EER after 2 steps and after M minutes
(their ratio), the steps trained, the EER of each validation (train.py validates as often as
--valid_share allows), the swing of the last 3 (max - min, in points) and the largest rise between two of
them (a falling EER is the run still improving, a rise is noise), and the thread counts
train.py's tuner chose.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of the budget run")
    parser.add_argument("--modes", nargs="+", choices=("idle", "busy"), default=["idle", "busy"])
    parser.add_argument("--train_list_path", default="dataset/train_list.txt", help="create_data.py's training list")
    parser.add_argument("--extra", default="", help="more train.py options for both runs (one string)")
    parser.add_argument("--json_path", default=None, help="write the figures here (rows for benchmarks/run_all.py)")
    return parser


def _spin(stop_at: float) -> None:
    """A busy neighbour: pure-Python work on one core until `stop_at`."""
    x = 0
    while time.time() < stop_at:
        for i in range(100_000):
            x ^= i


def train(args: argparse.Namespace, save_dir: Path, limit: list[str]) -> dict:
    """One train.py run in a fresh process; its train_log.csv rows and wall time."""
    from utils.errors import UserError

    command = [sys.executable, "train.py", "--train_list_path", args.train_list_path, "--device", "cpu",
               "--save_model", str(save_dir), *limit, *args.extra.split()]  # fmt: skip
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"train.py {' '.join(limit)} failed: {tail}")
    with open(save_dir / "train_log.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"rows": rows, "seconds": seconds, "stdout": proc.stdout}


def measure(mode: str, args: argparse.Namespace, work: Path) -> dict:
    spinners: list[multiprocessing.Process] = []
    if mode == "busy":
        stop_at = time.time() + args.minutes * 60 + 600  # outlives both runs; stopped below
        spinners = [
            multiprocessing.Process(target=_spin, args=(stop_at,), daemon=True) for _ in range(os.cpu_count() or 1)
        ]
        for spinner in spinners:
            spinner.start()
    try:
        baseline = train(args, work / f"{mode}_2_steps", ["--max_steps", "2"])
        budget = train(args, work / f"{mode}_budget", ["--max_minutes", f"{args.minutes:g}"])
    finally:
        for spinner in spinners:
            spinner.terminate()
    epoch_eers = [float(r["eer"]) for r in budget["rows"] if r.get("eer")]
    last = epoch_eers[-3:]
    return {
        "mode": mode,
        "eer_2_steps": float(baseline["rows"][-1]["eer"]),
        "eer_budget": epoch_eers[-1],
        "steps": int(budget["rows"][-1]["global_step"]),
        "budget_seconds": budget["seconds"],
        "epoch_eers": epoch_eers,
        "last_3_swing_points": 100 * (max(last) - min(last)),
        # a swing is a rise: falling EER over the last validations is the run still improving
        "last_3_largest_rise_points": max([0.0] + [100 * (b - a) for a, b in zip(last, last[1:])]),
        "warm_up_note": "rises at first by design" in budget["stdout"],
        "validations": len(epoch_eers),
        "thread_changes": [line.strip() for line in budget["stdout"].splitlines() if line.startswith("threads ")],
    }


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(ROOT))
    from utils.config import print_arguments

    args = build_parser().parse_args(argv)
    print_arguments(args)
    list_path = ROOT / args.train_list_path
    if not list_path.is_file():
        print(f"skipped: no training list at {list_path} (run create_data.py first, README section 2)")
        return {"benchmark": "train_budget", "skipped": f"no {args.train_list_path}", "rows": []}
    result: dict = {"benchmark": "train_budget", "minutes": args.minutes, "modes": {}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="train_budget_") as work:
        for mode in args.modes:
            figures = measure(mode, args, Path(work))
            result["modes"][mode] = figures
            ratio = figures["eer_2_steps"] / max(figures["eer_budget"], 1e-9)
            print(
                f"{mode}: validation EER {figures['eer_2_steps']:.2%} after 2 steps, {figures['eer_budget']:.2%} after "
                f"{args.minutes:g} min ({figures['steps']} steps, {figures['budget_seconds']:.0f} s; 2-step EER / this: x{ratio:.2f}); "
                f"per validation: {', '.join(f'{e:.1%}' for e in figures['epoch_eers'])}; last 3 swing "
                f"{figures['last_3_swing_points']:.1f} points (largest rise {figures['last_3_largest_rise_points']:.1f}); warm-up note in the log: {figures['warm_up_note']}; "
                f"threads: {'; '.join(figures['thread_changes']) or 'unchanged'}"
            )
            result["rows"].append({
                "what": f"train.py --max_minutes {args.minutes:g} --device cpu, {mode} machine: validation EER",
                "ours": f"{figures['eer_budget']:.2%}", "baseline": f"{figures['eer_2_steps']:.2%} (2 steps)",
                "ratio": ratio,
            })  # fmt: skip
    if args.json_path:
        from utils.fileio import atomic_write_json

        atomic_write_json(args.json_path, result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from utils.errors import run_cli

    run_cli(main)
