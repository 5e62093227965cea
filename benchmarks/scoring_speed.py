"""Scoring speed on CPU: all-pairs verification metrics and 1:N identification, against the original's loops.

Usage:
    python benchmarks/scoring_speed.py                         # 5k/20k/50k all pairs; 1k/100k/1M library
    python benchmarks/scoring_speed.py --quick                 # 5k/20k all pairs; 1k/100k library
    python benchmarks/scoring_speed.py --json_path out.json    # rows for benchmarks/run_all.py

All-pairs: `utils.metrics.all_pairs_metrics` (blocked float32 matrix products, streaming
histogram: EER, minDCF, TAR@FAR and the original's accuracy sweep) on random 256-d
embeddings clustered by speaker (10 utterances per speaker, per-utterance noise
tuned to a realistic ~5% EER). Baseline: the original evaluation, a Python double loop
over every pair computing the cosine with numpy, then a threshold sweep 0..0.99
step 0.01 for the best accuracy (no EER). The loop is far too slow to run on
20k embeddings, so it is timed on a sample of pairs and extrapolated linearly by
the number of pairs (the output says so).

1:N identification: one query against a library of N enrolled voiceprints
(random unit vectors; queries are other "utterances" of enrolled speakers, cosine
~0.6 with their enrolment). Exact search = one matrix-vector product + top-2 over
the library, stored float32 (numpy) or float16 (torch, half the memory). faiss
(optional, `pip install faiss-cpu`): a 4-bit product-quantised fast-scan index
(32 bytes per voiceprint) scanned exhaustively, and the same codes in an IVF index,
each reported with its top-1 agreement with exact search on 1,000 queries.
Searches run on one thread (a service answers queries in parallel), taking turns
query by query. Baseline: the original's Python loop over the library computing
one cosine per voiceprint (timed on up to 20k entries, extrapolated).
The ratio column is "times faster than the baseline".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from summary import row  # benchmarks/summary.py (the script folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
DIM = 256
NOISE_SIGMA, NOISE_SPREAD = 1.7, 0.3  # per-utterance noise: all-pairs EER ~5%, like the bundled model on dev-clean


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--pairs_sizes", type=int, nargs="*", default=[5000, 20000, 50000], help="embeddings for all-pairs scoring")
    add("--library_sizes", type=int, nargs="*", default=[1000, 100_000, 1_000_000], help="1:N library sizes")
    add("--queries", type=int, default=1000, help="queries for 1:N (latency and faiss agreement)")
    add("--latency_queries", type=int, default=50, help="queries timed one by one for the exact-search latency")
    add("--baseline_pairs", type=int, default=200_000, help="pairs the original loop is timed on")
    add("--threads", default="all", help="threads for all-pairs scoring ('all' or a number)")
    add("--search_threads", default="1", help="threads for one 1:N query (1: a service answers queries in parallel)")
    add("--quick", action="store_true", help="5k/20k all pairs, 1k/100k library, smaller samples")
    add("--skip_faiss", action="store_true")
    add("--json_path", default=None, help="write the summary rows here (for run_all.py)")
    return p


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def size_name(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (f"{n // 1000}k" if n >= 1000 else str(n))


# data


def clustered_embeddings(n: int, seed: int = 0, per_speaker: int = 10) -> tuple[Any, Any]:
    """(n, 256) unit float32 embeddings, `per_speaker` utterances per speaker, and their speaker labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    speakers = -(-n // per_speaker)
    centres = rng.standard_normal((speakers, DIM), dtype=np.float32)
    labels = np.repeat(np.arange(speakers), per_speaker)[:n]
    sigma = np.exp(rng.normal(np.log(NOISE_SIGMA), NOISE_SPREAD, size=(n, 1))).astype(np.float32)
    emb = centres[labels] + sigma * rng.standard_normal((n, DIM), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, labels


def random_library(n: int, seed: int = 1) -> Any:
    """(n, 256) random unit float32 voiceprints, generated in chunks (no float64 temporaries at 1M)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lib = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        chunk = rng.standard_normal((min(100_000, n - start), DIM), dtype=np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        lib[start : start + len(chunk)] = chunk
    return lib


def make_queries(lib: Any, count: int, similarity: float = 0.6, seed: int = 2) -> tuple[Any, Any]:
    """New 'utterances' of enrolled speakers: unit vectors with cosine ~`similarity` to a random enrolment."""
    import numpy as np

    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(lib), size=count)
    noise = rng.standard_normal((count, DIM), dtype=np.float32)
    noise -= (noise * lib[source]).sum(1, keepdims=True) * lib[source]  # orthogonal to the enrolment
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = similarity * lib[source] + np.sqrt(1 - similarity**2) * noise
    return np.ascontiguousarray(q, dtype=np.float32), source


# baselines: the original project's loops


def original_pair_loop(features: Any, labels: Any, max_pairs: int) -> tuple[float, int]:
    """The original eval loop over pairs i < j (cosine with numpy, Python lists), stopped after `max_pairs`.

    Returns (seconds, pairs done) including the original's accuracy sweep over those pairs.
    """
    import numpy as np

    def cosin_metric(x1: Any, x2: Any) -> float:
        return np.dot(x1, x2) / (np.linalg.norm(x1) * np.linalg.norm(x2))

    start = time.perf_counter()
    scores, y_true = [], []
    n = len(features)
    for i in range(n):
        feature_1 = features[i]
        for j in range(i + 1, n):
            scores.append(cosin_metric(feature_1, features[j]))
            y_true.append(int(labels[i] == labels[j]))
        if len(scores) >= max_pairs:
            break
    y_score, y = np.asarray(scores), np.asarray(y_true)
    best_accuracy = best_threshold = 0.0
    for i in range(100):
        threshold = i * 0.01
        accuracy = np.mean(((y_score >= threshold) == y).astype(int))
        if accuracy > best_accuracy:
            best_accuracy, best_threshold = accuracy, threshold  # noqa: F841 (kept as in the original)
    return time.perf_counter() - start, len(scores)


def original_identify(library: Any, feature: Any) -> tuple[int, float]:
    """The original recognition loop: one cosine per enrolled voiceprint, keep the best."""
    import numpy as np

    best, best_score = -1, 0.0
    for i, person_f in enumerate(library):
        dist = np.dot(feature, person_f) / (np.linalg.norm(feature) * np.linalg.norm(person_f))
        if dist > best_score:
            best, best_score = i, dist
    return best, best_score


# benchmarks


def all_pairs(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    from utils.metrics import all_pairs_metrics

    detail, rows = [], []
    for n in args.pairs_sizes:
        emb, labels = clustered_embeddings(n)
        pairs = n * (n - 1) // 2
        # interleave: baseline sample, ours, baseline sample again (medians of what fits the time)
        base_times, ours_times, metrics = [], [], {}
        rounds = 2 if n <= 20000 else 1
        for _ in range(rounds):
            seconds, done = original_pair_loop(emb, labels, min(args.baseline_pairs, pairs))
            base_times.append(seconds / done * pairs)
            seconds, metrics = timed(lambda e=emb, lab=labels: all_pairs_metrics(e, lab))
            ours_times.append(seconds)
        ours, base = statistics.median(ours_times), statistics.median(base_times)
        detail.append({"n": n, "pairs": pairs, "ours_seconds": ours, "baseline_seconds_extrapolated": base,
                       "baseline_sample_pairs": done, "eer": metrics["eer"], "mode": metrics["mode"]})  # fmt: skip
        print(f"all pairs {size_name(n):>4s} ({pairs:,} pairs): ours {ours:7.2f} s (EER {metrics['eer']:.2%}, "
              f"{metrics['mode']}); original loop {base:9.0f} s extrapolated from {done:,} pairs "
              f"-> x{base / ours:,.0f}", flush=True)  # fmt: skip
        rows.append(row(f"all-pairs EER, {size_name(n)} embeddings ({pairs / 1e6:,.0f}M pairs)", ours, base, "s",
                        "", f"orig loop, extrapolated from {done // 1000}k pairs"))  # fmt: skip
    return detail, rows


def interleaved_latency(fns: dict[str, Callable[[Any], Any]], queries: Any, count: int) -> dict[str, float]:
    """Median seconds per single query of each search, the searches taking turns query by query."""
    for fn in fns.values():
        fn(queries[0])  # warm-up (page the library in)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for q in queries[:count]:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def faiss_indexes(faiss: Any, lib: Any, queries: Any, exact_top1: Any, threads: int, build_threads: int) -> dict:
    """name -> (index, note) for the faiss indexes compared with exact search.

    - PQ64x4fs: every voiceprint as 64 4-bit product-quantiser codes (32 bytes instead of 1 KB), scanned
      exhaustively with SIMD "fast scan";
    - IVF<nlist>,PQ64x4fs: the same codes in an inverted file; nprobe is the smallest power of two reaching
      99% top-1 agreement with exact search on the queries (random isotropic voiceprints are the worst case
      for IVF: there are no clusters, so it has to probe many lists).
    """
    import numpy as np

    n = len(lib)
    rng = np.random.default_rng(3)
    out = {}
    faiss.omp_set_num_threads(build_threads)
    specs = ["PQ64x4fs"]
    if n >= 50_000:
        specs.append(f"IVF{1024 if n <= 200_000 else 2048},PQ64x4fs")
    for spec in specs:
        index = faiss.index_factory(DIM, spec, faiss.METRIC_INNER_PRODUCT)
        nlist = int(spec[3:].split(",")[0]) if spec.startswith("IVF") else 0
        train = lib[rng.choice(n, size=min(n, max(20_000, 40 * nlist)), replace=False)]
        build, _ = timed(lambda index=index, train=train: (index.train(train), index.add(lib)))
        name, nprobe = spec, 0
        if nlist:
            nprobe = nlist // 16
            while True:
                index.nprobe = nprobe
                agreement = float(np.mean(index.search(queries, 1)[1][:, 0] == exact_top1))
                if agreement >= 0.99 or nprobe >= nlist:
                    break
                nprobe *= 2
            name = f"{spec} nprobe {nprobe}"
        else:
            agreement = float(np.mean(index.search(queries, 1)[1][:, 0] == exact_top1))
        note = f"agreement {agreement:.1%}, {index.sa_code_size() * n / 1e6:.3g} MB of codes, built {build:.1f} s"
        out[f"faiss {name}"] = (index, note)
    faiss.omp_set_num_threads(threads)
    return out


def identification(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    import torch

    threads = resolve_threads(args.search_threads)
    # faiss builds use the same thread count: on a busy 2-core machine, 2 OpenMP threads made PQ training
    # 40x slower (0.9 s -> 41 s) because every tiny parallel region waits for a descheduled thread
    build_threads = threads
    torch.set_num_threads(threads)
    faiss = None
    if not args.skip_faiss:
        try:
            import faiss
        except ImportError:
            print("faiss skipped: not installed (pip install faiss-cpu)")
    print(f"1:N search and faiss builds on {threads} thread(s) (torch, faiss, BLAS)")
    detail, rows = [], []
    for n in args.library_sizes:
        item, item_rows = identify_library(n, args, faiss, threads, build_threads)
        detail.append(item)
        rows += item_rows
    return detail, rows


def identify_library(n: int, args: argparse.Namespace, faiss: Any, threads: int, build_threads: int) -> tuple:
    """Latency of each search method for one library size (a function, so the library is freed on return)."""
    import numpy as np
    import torch

    lib = random_library(n)
    queries, source = make_queries(lib, args.queries)
    lib_t = torch.from_numpy(lib)
    lib_h = lib_t.half()

    def exact_fp32(q: Any) -> Any:
        scores = lib @ q
        top = np.argpartition(scores, -2)[-2:]
        return top[np.argsort(-scores[top])]

    def exact_fp16(q: Any) -> Any:
        return torch.topk(torch.mv(lib_h, torch.from_numpy(q).half()), 2).indices.numpy()

    # reference: exact float32 top-1 of every query, batched
    exact_top1 = np.concatenate([(lib_t @ torch.from_numpy(queries[i : i + 256]).T).argmax(0).numpy()
                                 for i in range(0, len(queries), 256)])  # fmt: skip
    fp16_agreement = np.mean([exact_fp16(q)[0] == t for q, t in zip(queries[:200], exact_top1[:200])])
    notes = {
        "exact fp32 numpy": f"{lib.nbytes / 1e6:.0f} MB",
        "exact fp16 torch": f"{lib_h.numel() * 2 / 1e6:.0f} MB, agreement {fp16_agreement:.1%}",
    }
    fns: dict[str, Callable[[Any], Any]] = {"exact fp32 numpy": exact_fp32, "exact fp16 torch": exact_fp16}
    if faiss is not None:
        for name, (index, note) in faiss_indexes(faiss, lib, queries, exact_top1, threads, build_threads).items():
            fns[name] = lambda q, index=index: index.search(q[None], 2)
            notes[name] = note
    sample = min(n, 20000)
    fns["original loop"] = lambda q: original_identify(lib[:sample], q)
    count = args.latency_queries if n < 1_000_000 else max(args.latency_queries // 2, 5)
    with _blas_threads(threads):
        lat = interleaved_latency(fns, queries, count)
    base_lat = lat.pop("original loop") * n / sample
    truth = float(np.mean(exact_top1 == source))
    extrapolated = "" if sample == n else f" (extrapolated from {sample:,} entries)"
    print(f"1:N {size_name(n):>4s} library (exact top-1 = true speaker for {truth:.1%} of queries): "
          f"original loop {base_lat * 1000:.1f} ms/query{extrapolated}", flush=True)  # fmt: skip
    rows = []
    for name, t in lat.items():
        print(f"    {name:34s} {t * 1000:8.2f} ms/query  x{base_lat / t:8.0f}  ({notes[name]})", flush=True)
        label = name.split(" nprobe")[0]
        if name.startswith("faiss"):
            label += " (" + next(x for x in notes[name].split(", ") if x.startswith("agreement")) + ")"
        rows.append(row(f"1:N query, {size_name(n)} library: {label}", t * 1000, base_lat * 1000, "ms",
                        name.split(" ", 1)[1] if " nprobe" in name else "",
                        "orig loop" + (f", extrapolated from {size_name(sample)}" if extrapolated else "")))  # fmt: skip
    item = {"n": n, "latency_seconds": lat, "notes": notes, "baseline_seconds": base_lat, "baseline_sample": sample,
            "exact_is_true_speaker": truth}  # fmt: skip
    return item, rows


class _blas_threads:
    """Limit numpy's BLAS threads like torch's (threadpoolctl, when installed)."""

    def __init__(self, threads: int) -> None:
        self.threads, self.limiter = threads, None

    def __enter__(self) -> None:
        try:
            from threadpoolctl import threadpool_limits

            self.limiter = threadpool_limits(self.threads, user_api="blas")
        except ImportError:
            pass

    def __exit__(self, *exc: object) -> None:
        if self.limiter is not None:
            self.limiter.restore_original_limits()


def resolve_threads(value: str) -> int:
    return (os.cpu_count() or 1) if value == "all" else int(value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import torch

    from utils.config import print_arguments

    args = build_parser().parse_args(argv)
    if args.quick:
        args.pairs_sizes = [n for n in args.pairs_sizes if n <= 20000]
        args.library_sizes = [n for n in args.library_sizes if n <= 100_000]
        args.baseline_pairs = min(args.baseline_pairs, 100_000)
        args.latency_queries = min(args.latency_queries, 30)
    print_arguments(args)
    threads = resolve_threads(args.threads)
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}; all-pairs scoring on {threads} threads")
    result: dict[str, Any] = {"benchmark": "scoring_speed", "rows": [], "detail": {}}
    detail, rows = all_pairs(args)
    result["detail"]["all_pairs"], result["rows"] = detail, result["rows"] + rows
    detail, rows = identification(args)
    result["detail"]["identification"], result["rows"] = detail, result["rows"] + rows
    if args.json_path:
        from utils.fileio import atomic_write_json

        atomic_write_json(args.json_path, result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # utils/, for running as a script
    from utils.errors import run_cli

    run_cli(main)
