"""Evaluate a speaker-verification model: EER, minDCF, TAR@FAR, optional AS-norm, DET plot.

Usage:
    # every unordered pair of different utterances of a list is a trial
    python eval.py --list_path dataset/test_list.txt --model_path models/voiceprint_resnet34.pt
    # an explicit VoxCeleb-style trials file: "<1|0> <audio a> <audio b>" per line
    python eval.py --trials_path voxceleb1_test.txt
    # adaptive score normalisation against a cohort (e.g. the training list), plus JSON and plots
    python eval.py --cohort_list_path dataset/train_list.txt --json_path eval.json --plot_dir plots

Whole recordings are embedded (long ones segment by segment); on a CPU the backbone runs in ONNX Runtime
(--engine auto; --engine torch keeps PyTorch). A file that cannot be decoded is skipped
with a warning and counted; its pairs / trials are left out.

The original's "best accuracy" threshold sweep (here over the whole cosine range, -1.00 to 1.00, step 0.01) is printed next to the accuracy of
always answering "different speaker": with all pairs, most trials are non-target, so accuracy says little.
EER and minDCF are the numbers to compare.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports below: a Ctrl-C while they load ends in one line
    from utils.errors import hold_ctrl_c_until_main

    hold_ctrl_c_until_main()

import argparse
import dataclasses
import io
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.config import HelpFormatter, check_output_dir, check_output_file, describe_model, fail, print_arguments
from utils.errors import UserError, run_cli
from utils.metrics import cohort_stats

AS_NORM_MAX_UTTERANCES = 5000  # all-pairs AS-norm keeps every score: 5000 utterances = 12.5 M pairs (100 MB)
PLOT_MAX_PAIRS = 2_000_000
P_TARGETS = (0.01, 0.001)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate speaker verification (EER, minDCF, TAR@FAR) on a list or a trials file.",
        formatter_class=HelpFormatter,
    )
    # data
    parser.add_argument(
        "--list_path",
        default="dataset/test_list.txt",
        help="<audio path>\\t<label> list (create_data.py's; relative paths are relative to the working folder, as "
        "create_data.py writes them); every pair of different utterances is a trial (ignored with --trials_path)",
    )
    parser.add_argument(
        "--trials_path",
        default=None,
        help="VoxCeleb-style trials '<1|0> <audio a> <audio b>'; paths as given or relative to the trials file",
    )
    # model
    parser.add_argument("--model_path", default="models/voiceprint_resnet34.pt", help="inference model file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--num_workers", type=int, default=2, help="audio decoding worker processes")
    parser.add_argument(
        "--engine",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="backbone runtime: onnx (ONNX Runtime, exported in memory at start, ~1.5x faster on a CPU), torch, "
        "or auto (onnx on a CPU when onnxruntime is installed, else torch)",
    )
    # score normalisation
    parser.add_argument(
        "--cohort_list_path",
        default=None,
        help="enable AS-norm with a cohort from this list (e.g. the training list; speakers should not be test speakers)",
    )
    parser.add_argument("--cohort_size", type=int, default=400, help="cohort files to embed (one per speaker first)")
    parser.add_argument("--top_k", type=int, default=300, help="AS-norm: highest cohort scores used per side")
    # output
    parser.add_argument("--json_path", default=None, help="write the metrics here as JSON")
    parser.add_argument(
        "--plot_dir", default=None, help="write det_curve.png, score_histogram.png (and reliability.png) here"
    )
    parser.add_argument(
        "--fit_calibration",
        default=None,
        metavar="OUT.pt",
        help="fit a score calibration (probability of 'same speaker' from the score and the two lengths) on "
        "these trials and write a copy of the model carrying it. Fit on a validation list, evaluate elsewhere",
    )
    parser.add_argument("--verbose", action="store_true", help="print the whole configuration first")
    return parser


# trials


def read_trials(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """Read '<1|0> <audio a> <audio b>' lines; each path is used as given when it exists, else relative to the file."""
    from utils.data import ListError, read_text_file

    path = Path(path)
    text = read_text_file(path, "trials")
    base = path.parent
    resolved: dict[str, str] = {}

    def resolve(name: str) -> str:
        if name not in resolved:
            candidate = base / name
            use_base = not os.path.isabs(name) and not os.path.exists(name) and candidate.exists()
            resolved[name] = str(candidate) if use_base else name
        return resolved[name]

    trials = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ListError(f"{path}:{number}: expected '<1|0> <audio a> <audio b>', found {len(fields)} fields")
        if fields[0] not in ("0", "1"):
            raise ListError(f"{path}:{number}: label {fields[0]!r} is not 1 (same speaker) or 0 (different)")
        trials.append((int(fields[0]), resolve(fields[1]), resolve(fields[2])))
    if not trials:
        raise ListError(f"trials file {path} has no trials")
    return trials


# scores


def pair_scores(emb: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 1_000_000) -> np.ndarray:
    """Cosine scores of rows a[k] and b[k] of unit-length embeddings (vectorised, in chunks)."""
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", emb[a[s : s + chunk]], emb[b[s : s + chunk]], dtype=np.float64)
    return out


def upper_pair_scores(emb: np.ndarray, labels: np.ndarray, block_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Scores and same-speaker flags of every pair i < j, in row-major order (blocked matrix products)."""
    n = len(emb)
    scores, same = [], []
    cols = np.arange(n)
    for r0 in range(0, n, block_rows):
        r1 = min(r0 + block_rows, n)
        keep = cols[None, :] > np.arange(r0, r1)[:, None]
        scores.append((emb[r0:r1] @ emb.T)[keep].astype(np.float64))
        same.append((labels[r0:r1, None] == labels[None, :])[keep])
    return np.concatenate(scores), np.concatenate(same)


def sample_pair_scores(
    emb: np.ndarray, labels: Sequence[int] | np.ndarray, max_pairs: int = PLOT_MAX_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and target flags of at most about `max_pairs` pairs i < j (see sample_pairs)."""
    labels = np.asarray(labels)
    a, b = sample_pairs(labels, max_pairs, seed)
    return pair_scores(emb, a, b), labels[a] == labels[b]


def sample_pairs(labels: np.ndarray, max_pairs: int = PLOT_MAX_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs i < j (index arrays) for plotting or fitting, at most about `max_pairs` of them.

    Small sets give every pair. Larger ones are sampled deterministically and per class: every target pair
    when there are at most max_pairs / 2 of them, else max_pairs / 2 drawn with replacement, and max_pairs / 2
    non-target pairs drawn with replacement. That keeps each class's score density and FAR / FRR curve unbiased
    even when targets are rare.
    """
    n = len(labels)
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, k=1)
    rng = np.random.default_rng(seed)
    half = max_pairs // 2
    # target pairs: pick a speaker in proportion to its number of pairs, then two different utterances of it
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    weights = counts * (counts - 1) / 2.0
    parts_a, parts_b = [], []
    if 0 < weights.sum() <= half:  # few enough target pairs: take every one of them (a loop over speakers)
        for s, c in zip(starts, counts):
            i, j = np.triu_indices(c, k=1)
            parts_a.append(members[s + i])
            parts_b.append(members[s + j])
    elif weights.sum() > 0:
        spk = rng.choice(len(counts), size=half, p=weights / weights.sum())
        i = rng.integers(0, counts[spk])
        j = rng.integers(0, counts[spk] - 1)
        j = j + (j >= i)  # a different member
        parts_a.append(members[starts[spk] + i])
        parts_b.append(members[starts[spk] + j])
    # non-target pairs: uniform pairs with different labels (rejection; fine unless nearly all pairs are targets)
    got = 0
    while got < half:
        a = rng.integers(0, n, size=half)
        b = rng.integers(0, n, size=half)
        ok = labels[a] != labels[b]
        a, b = a[ok][: half - got], b[ok][: half - got]
        if not len(a):
            break
        parts_a.append(a)
        parts_b.append(b)
        got += len(a)
    return np.concatenate(parts_a), np.concatenate(parts_b)


# AS-norm


def cohort_items(items: Sequence[tuple[str, int]], size: int) -> list[tuple[str, int]]:
    """Up to `size` items: one per speaker first (in label order), then second utterances, and so on."""
    by_speaker: dict[int, list[str]] = {}
    for path, label in items:
        by_speaker.setdefault(label, []).append(path)
    chosen: list[tuple[str, int]] = []
    rank = 0
    while len(chosen) < size:
        added = False
        for label in sorted(by_speaker):
            if rank < len(by_speaker[label]) and len(chosen) < size:
                chosen.append((by_speaker[label][rank], label))
                added = True
        if not added:
            break
        rank += 1
    return chosen


def speaker_means(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit-length mean embedding of each speaker (the cohort: one row per speaker)."""
    speakers, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(speakers), emb.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, emb.astype(np.float64))
    sums /= np.linalg.norm(sums, axis=1, keepdims=True) + 1e-12
    return sums.astype(np.float32)


def as_norm_all_pairs(
    emb: np.ndarray, labels: np.ndarray, cohort: np.ndarray, top_k: int, block_rows: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """AS-norm scores of every pair i < j (row-major) and their target flags.

    Same formula as utils.metrics.as_norm, but each utterance's cohort statistics are computed once
    instead of once per trial (n * C instead of n^2 * C work).
    """
    mu, sd = cohort_stats(emb @ cohort.T, top_k)
    n = len(emb)
    cols = np.arange(n)
    scores, same = [], []
    for r0 in range(0, n, block_rows):
        r1 = min(r0 + block_rows, n)
        keep = cols[None, :] > np.arange(r0, r1)[:, None]
        s = (emb[r0:r1] @ emb.T).astype(np.float64)
        z = 0.5 * ((s - mu[r0:r1, None]) / sd[r0:r1, None] + (s - mu[None, :]) / sd[None, :])
        scores.append(z[keep])
        same.append((labels[r0:r1, None] == labels[None, :])[keep])
    return np.concatenate(scores), np.concatenate(same)


def as_norm_trials(
    emb: np.ndarray, a: np.ndarray, b: np.ndarray, raw: np.ndarray, cohort: np.ndarray, top_k: int
) -> np.ndarray:
    """utils.metrics.as_norm over explicit trials, with each file's cohort statistics computed once."""
    mu, sd = cohort_stats(emb @ cohort.T, top_k)
    return 0.5 * ((raw - mu[a]) / sd[a] + (raw - mu[b]) / sd[b])


# report


def format_report(m: dict[str, Any], title: str) -> str:
    pct = 100.0 * m["always_different_accuracy"]
    lines = [
        f"{title}",
        f"  trials: {m['num_trials']:,} ({m['num_target']:,} target / {m['num_nontarget']:,} non-target)",
        f"  EER: {100 * m['eer']:.2f}% (threshold {m['threshold']:.4f})",
        f"  minDCF (p_target 0.01): {m['min_dcf']:.4f}",
        f"  minDCF (p_target 0.001): {m['min_dcf_0.001']:.4f}",
        f"  TAR at FAR 1%: {100 * m['tar_at_far_1pct']:.2f}% (threshold {m['threshold_at_far_1pct']:.4f})"
        f"   TAR at FAR 0.1%: {100 * m['tar_at_far_0.1pct']:.2f}%",
        f"  best accuracy (thresholds -1.00..1.00): {100 * m['best_accuracy']:.2f}% at {m['best_accuracy_threshold']:.2f}"
        f"   vs always answering 'different': {pct:.2f}%",
        f"  (accuracy is {'meaningless' if pct >= 90 else 'a weak measure'} here: {pct:.1f}% of trials are"
        " non-target; compare EER and minDCF)",
    ]
    return "\n".join(lines)


def save_plots(
    plot_dir: str | os.PathLike,
    curves: list[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]],
) -> list[str]:
    """det_curve.png (all curves) and score_histogram.png (first curve; others get score_histogram_<name>.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.special import ndtri

    from utils.fileio import atomic_write_bytes
    from utils.metrics import det_curve

    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Any, name: str) -> None:
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        plt.close(fig)
        atomic_write_bytes(plot_dir / name, buffer.getvalue())
        written.append(str(plot_dir / name))

    # DET on normal-deviate axes
    ticks = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    lo, hi = 0.0005, 0.5
    fig, ax = plt.subplots(figsize=(6, 6))
    for name, scores, labels, m in curves:
        far, frr, _ = det_curve(scores, labels)
        x, y = ndtri(np.clip(far, lo, 1 - lo)), ndtri(np.clip(frr, lo, 1 - lo))  # zero rates sit on the edge
        if len(x) > 20000:  # a million-point line draws slowly and looks the same thinned
            keep = np.unique(np.linspace(0, len(x) - 1, 20000).astype(int))
            x, y = x[keep], y[keep]
        (line,) = ax.plot(x, y, label=f"{name}: EER {100 * m['eer']:.2f}%, minDCF {m['min_dcf']:.3f}")
        e = ndtri(np.clip(m["eer"], lo, hi))
        ax.plot([e], [e], "o", color=line.get_color(), markersize=7)
    ax.plot(ndtri([lo, hi]), ndtri([lo, hi]), ":", color="grey", linewidth=0.8, label="FAR = FRR")
    ax.set_xticks(ndtri(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(ndtri(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(ndtri(lo), ndtri(hi))
    ax.set_ylim(ndtri(lo), ndtri(hi))
    ax.set_xlabel("false acceptance rate (%)")
    ax.set_ylabel("false rejection rate (%)")
    ax.set_title("DET curve (dot: EER)")
    ax.grid(True, linewidth=0.4)
    ax.legend(loc="lower left", fontsize=8)  # the curve runs from top left to bottom right: this corner is free
    fig.tight_layout()
    save(fig, "det_curve.png")

    # score densities
    for n, (name, scores, labels, m) in enumerate(curves):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        bins = np.linspace(scores.min(), scores.max(), 101)
        classes = (
            (~labels, "different speaker", m["num_nontarget"], "tab:blue"),
            (labels, "same speaker", m["num_target"], "tab:red"),
        )
        for mask, label, total, colour in classes:
            shown = int(mask.sum())
            count = f"{total:,}" if shown == total else f"{total:,}, {shown:,} sampled"
            ax.hist(scores[mask], bins=bins, density=True, alpha=0.5, color=colour, label=f"{label} ({count})")
        ax.axvline(m["threshold"], color="black", linestyle="--", label=f"EER threshold {m['threshold']:.3f}")
        ax.set_xlabel(f"{name} score")
        ax.set_ylabel("density")
        ax.set_title(f"{name} scores: EER {100 * m['eer']:.2f}%")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save(fig, "score_histogram.png" if n == 0 else f"score_histogram_{name.replace(' ', '_').lower()}.png")
    return written


# main


def _embed(embedder: Any, paths: list[str], num_workers: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of `paths` and a mask of the ones that decoded; each failure is one warning line."""
    emb, errors = embedder.embed_files(paths, num_workers=num_workers, progress=True, skip_errors=True)
    ok = np.array([e is None for e in errors], dtype=bool)
    for error in errors:
        if error is not None:
            print(f"warning: skipped {what} file: {error}", file=sys.stderr)
    return emb, ok


def _metrics(fn: Any, *args: Any) -> dict[str, Any]:
    try:
        return fn(*args, p_targets=P_TARGETS)
    except ValueError as exc:
        fail(str(exc).splitlines()[0])


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.verbose:
        print_arguments(args)
    check_output_file(args.json_path, "--json_path")
    check_output_dir(args.plot_dir, "--plot_dir")
    check_output_file(args.fit_calibration, "--fit_calibration")
    if args.fit_calibration and Path(args.fit_calibration).resolve() == Path(args.model_path).resolve():
        fail("--fit_calibration writes a copy of the model: give another file than --model_path")
    try:
        run(args)
    except UserError as exc:  # bad audio, list or model: one line
        fail(str(exc))


def check_inputs(args: argparse.Namespace) -> tuple[list | None, list | None, list | None]:
    """(trials, list items, cohort items), read and checked before the slow imports (torch) and the model load."""
    for flag, path in (
        ("--trials_path" if args.trials_path else "--list_path", args.trials_path or args.list_path),
        ("--cohort_list_path", args.cohort_list_path),
        ("--model_path", args.model_path),
    ):
        if path and not Path(path).is_file():
            what = {"--trials_path": "trials", "--list_path": "list", "--cohort_list_path": "cohort list"}
            fail(f"{what.get(flag, 'model')} file not found: {path}")
    from utils.data import read_list

    if args.num_workers < 0:
        fail("--num_workers must be 0 or more")
    if args.cohort_size < 1 or args.top_k < 1:
        fail("--cohort_size and --top_k must be at least 1")
    trials, items = None, None
    if args.trials_path:
        trials = read_trials(args.trials_path)
        repeated = len(trials) - len({(label, *sorted((a, b))) for label, a, b in trials})
        if repeated:  # kept (the file is the protocol), but they weigh twice in every rate
            print(f"warning: {repeated} repeated trial(s) in {args.trials_path} are counted again", file=sys.stderr)
    else:
        items = read_list(args.list_path)
        if len({label for _, label in items}) < 2:
            fail(f"{args.list_path} has fewer than 2 speakers: no different-speaker trials")
        if args.cohort_list_path and len(items) > AS_NORM_MAX_UTTERANCES:
            fail(
                f"AS-norm over all pairs keeps every score and is limited to {AS_NORM_MAX_UTTERANCES} utterances"
                f" ({len(items)} in {args.list_path}): use --trials_path with a trials file instead"
            )
    cohort_list = cohort_items(read_list(args.cohort_list_path), args.cohort_size) if args.cohort_list_path else None
    return trials, items, cohort_list


@dataclass
class Scored:
    """Embeddings and what is scored: explicit trials (a, b, y) or all pairs of a labelled list (labels)."""

    emb: np.ndarray
    ok: np.ndarray  # which files embedded
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    y: np.ndarray | None = None
    labels: np.ndarray | None = None


def embed_trials(embedder: Any, trials: list, num_workers: int) -> tuple[Scored, list[str]]:
    files = sorted({p for _, a, b in trials for p in (a, b)})
    emb, ok = _embed(embedder, files, num_workers, "trial")
    index = {p: i for i, p in enumerate(files)}
    a = np.array([index[t[1]] for t in trials])
    b = np.array([index[t[2]] for t in trials])
    y = np.array([t[0] for t in trials], dtype=bool)
    usable = ok[a] & ok[b]
    if not usable.all():
        print(f"warning: {int((~usable).sum())} trial(s) left out because a file failed", file=sys.stderr)
    if not usable.any():
        fail("no usable trials left")
    return Scored(emb, ok, a=a[usable], b=b[usable], y=y[usable]), files


def embed_items(embedder: Any, items: list, list_path: str, num_workers: int) -> tuple[Scored, list[str]]:
    labels_of: dict[str, list] = {}
    for path, label in items:
        labels_of.setdefault(path, [])
        if label not in labels_of[path]:
            labels_of[path].append(label)
    conflicts = [(path, labels) for path, labels in labels_of.items() if len(labels) > 1]
    if conflicts:  # it would be scored as a different-speaker pair with itself
        path, labels = conflicts[0]
        more = f" (and {len(conflicts) - 1} more file(s))" if len(conflicts) > 1 else ""
        fail(f"{path} appears under labels {', '.join(map(str, labels))} in {list_path}{more}: "
             "one recording cannot be two speakers; fix the list")  # fmt: skip
    repeats = len(items) - len(labels_of)
    if repeats:  # a recording paired with itself would be a perfect same-speaker trial
        print(f"warning: {repeats} repeated path(s) in {list_path}: each file is scored once", file=sys.stderr)
        items = [(path, labels[0]) for path, labels in labels_of.items()]
    files = [p for p, _ in items]
    emb, ok = _embed(embedder, files, num_workers, "list")
    labels = np.array([label for _, label in items])[ok]
    if len(np.unique(labels)) < 2:
        fail("fewer than 2 speakers have a usable recording: no different-speaker trials")
    return Scored(emb[ok], ok, labels=labels), files


def as_norm_metrics(
    args: argparse.Namespace, embedder: Any, scored: Scored, raw: np.ndarray | None, cohort_list: list
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """AS-norm against the cohort's speaker means: (metrics, (normalised scores, target flags))."""
    from utils.metrics import trial_metrics

    cohort_emb, cohort_ok = _embed(embedder, [p for p, _ in cohort_list], args.num_workers, "cohort")
    if not cohort_ok.any():
        fail(f"no usable cohort file in {args.cohort_list_path}")
    cohort = speaker_means(cohort_emb[cohort_ok], np.array([label for _, label in cohort_list])[cohort_ok])
    top_k = min(args.top_k, len(cohort))
    if top_k < 3:  # the std of 1-2 scores is ~0: AS-norm would scale scores by up to 1e8
        fail(f"AS-norm needs at least 3 cohort speakers and --top_k 3, got {len(cohort)} and {args.top_k}")
    if len(cohort) < 50:
        print(
            f"warning: AS-norm with {len(cohort)} cohort speakers is noisy: use hundreds (e.g. the training list)",
            file=sys.stderr,
        )
    if raw is not None:
        norm = as_norm_trials(scored.emb, scored.a, scored.b, raw, cohort, args.top_k)
        norm_y = scored.y
    else:
        norm, norm_y = as_norm_all_pairs(scored.emb, scored.labels, cohort, args.top_k)
    metrics = _metrics(trial_metrics, norm, norm_y)
    metrics.update({"cohort_list_path": args.cohort_list_path, "cohort_files": int(cohort_ok.sum()),
                    "cohort_speakers": int(len(cohort)), "top_k": top_k})  # fmt: skip
    return metrics, (norm, norm_y)


CALIBRATION_MAX_PAIRS = 200_000


def file_seconds(files: list[str]) -> np.ndarray:
    """Each file's length in seconds (from its header: cheap), the calibration's quality measure."""
    from utils.audio import AudioError, audio_info

    out = np.zeros(len(files))
    for i, path in enumerate(files):
        try:
            frames, rate = audio_info(path)
            out[i] = frames / rate
        except AudioError:
            out[i] = 0.0  # unusable files never reach a trial
    return out


def calibration_metrics(
    embedder: Any, scores: np.ndarray, targets: np.ndarray, seconds_a: np.ndarray, seconds_b: np.ndarray
) -> tuple[dict[str, Any], list[dict]]:
    """How well the model's stored probabilities match what happens on these trials."""
    from utils.calibration import ScoreCalibration, calibration_error

    calibration = ScoreCalibration.from_dict(embedder.operating_points.calibration)
    probability = calibration.probability(scores, seconds_a, seconds_b)
    ece, bins = calibration_error(probability, targets)
    accuracy = float(0.5 * np.mean(probability[targets] >= 0.5) + 0.5 * np.mean(probability[~targets] < 0.5))
    print(
        f"calibrated probability (fitted on {calibration.measured_on}): expected calibration error {ece:.3f}, "
        f"balanced accuracy at p >= 0.5 {accuracy:.2%} ({len(scores)} trials)"
    )
    return {"ece": ece, "balanced_accuracy": accuracy, "fitted_on": calibration.measured_on, "bins": bins}, bins


def write_calibrated_model(
    args: argparse.Namespace, scores: np.ndarray, targets: np.ndarray, seconds_a: np.ndarray, seconds_b: np.ndarray
) -> None:
    from utils.calibration import fit_score_calibration
    from utils.checkpoint import atomic_torch_save, load_torch_file
    from utils.operating_points import OperatingPoints

    if str(args.model_path).endswith(".onnx"):
        fail("--fit_calibration needs a .pt model (export the calibrated copy to ONNX afterwards)")
    where = args.trials_path or args.list_path
    calibration = fit_score_calibration(scores, targets, seconds_a, seconds_b, measured_on=where)
    blob = load_torch_file(args.model_path)
    points = OperatingPoints.from_info(blob)
    blob["operating_points"] = dataclasses.replace(points, calibration=calibration.to_dict()).to_dict()
    atomic_torch_save(blob, args.fit_calibration)
    print(f"score calibration fitted on {sum(calibration.trials)} trials of {where} -> {args.fit_calibration}")


def save_reliability_plot(plot_dir: str, bins: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.fileio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o", label="this model")
    ax.set_xlabel("predicted probability of 'same speaker'")
    ax.set_ylabel("observed share of same-speaker trials (classes balanced)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    path = os.path.join(plot_dir, "reliability.png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def choose_engine(engine: str, device: str) -> str:
    """--engine auto: ONNX Runtime when the backbone runs on the CPU and onnxruntime is installed."""
    if engine != "auto":
        return engine
    from importlib.util import find_spec

    from utils.config import resolve_device

    return "onnx" if resolve_device(device).type == "cpu" and find_spec("onnxruntime") is not None else "torch"


def run(args: argparse.Namespace) -> dict[str, Any]:
    trials, items, cohort_list = check_inputs(args)

    # model
    from utils.embedder import Embedder

    embedder = Embedder(args.model_path, device=args.device, engine=choose_engine(args.engine, args.device))
    print(
        f"{describe_model(args.model_path, embedder.info)} on {embedder.device} ({embedder.engine}), "
        f"stored threshold {embedder.threshold}"
    )

    # embeddings
    start = time.time()
    result: dict[str, Any] = {"model_path": args.model_path}
    if trials is not None:
        scored, files = embed_trials(embedder, trials, args.num_workers)
        result.update({"list_path": None, "trials_path": args.trials_path})
    else:
        scored, files = embed_items(embedder, items, args.list_path, args.num_workers)
        num_speakers = int(len(np.unique(scored.labels)))
        result.update({"list_path": args.list_path, "trials_path": None, "num_speakers": num_speakers})
    seconds = time.time() - start
    skipped = int((~scored.ok).sum())
    skipped_note = f", skipped {skipped} unusable (reasons in the warnings above)" if skipped else ""
    print(f"embedded {int(scored.ok.sum())} files in {seconds:.1f} s{skipped_note}")
    result.update({"num_files": len(files), "num_skipped_files": skipped, "embedding_seconds": round(seconds, 2)})

    # raw scores
    from utils.metrics import all_pairs_metrics, trial_metrics

    raw, plot_raw = None, None
    if trials is not None:
        raw = pair_scores(scored.emb, scored.a, scored.b)
        metrics = _metrics(trial_metrics, raw, scored.y)
        plot_raw = _thin(raw, scored.y)
    else:
        metrics = _metrics(all_pairs_metrics, scored.emb, scored.labels)
    result.update(metrics)
    print(format_report(metrics, "cosine scores:"))

    # AS-norm
    plot_norm = None
    if cohort_list is not None:
        result["as_norm"], plot_norm = as_norm_metrics(args, embedder, scored, raw, cohort_list)
        title = f"AS-norm scores ({result['as_norm']['cohort_speakers']} cohort speakers, top {result['as_norm']['top_k']}):"
        print(format_report(result["as_norm"], title))
        print("  (AS-norm scores are not cosines: the cosine accuracy sweep does not suit them)")

    # score calibration: measured when the model carries one, fitted when asked
    plot_reliability = None
    if embedder.operating_points.calibration is not None or args.fit_calibration:
        seconds = file_seconds(files)[scored.ok] if trials is None else file_seconds(files)
        a, b = (scored.a, scored.b) if trials is not None else sample_pairs(scored.labels, CALIBRATION_MAX_PAIRS)
        targets = scored.y if trials is not None else scored.labels[a] == scored.labels[b]
        cal_scores = pair_scores(scored.emb, a, b)
        if embedder.operating_points.calibration is not None:
            result["calibration"], plot_reliability = calibration_metrics(embedder, cal_scores, targets,
                                                                          seconds[a], seconds[b])  # fmt: skip
        if args.fit_calibration:
            write_calibrated_model(args, cal_scores, targets, seconds[a], seconds[b])

    # outputs
    if args.json_path:
        from utils.fileio import atomic_write_json

        atomic_write_json(args.json_path, result)
        print(f"metrics written to {args.json_path}")
    if args.plot_dir:
        if plot_raw is None:  # all pairs: every score up to PLOT_MAX_PAIRS, else a per-class sample
            plot_raw = sample_pair_scores(scored.emb, scored.labels)
        curves = [("cosine", *plot_raw, metrics)]
        if plot_norm is not None:
            curves.append(("AS-norm", *_thin(*plot_norm), result["as_norm"]))
        for path in save_plots(args.plot_dir, curves):
            print(f"plot written to {path}")
        if plot_reliability is not None:
            print(f"plot written to {save_reliability_plot(args.plot_dir, plot_reliability)}")
    return result


def _thin(scores: np.ndarray, labels: np.ndarray, max_pairs: int = PLOT_MAX_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """At most max_pairs of explicit trials for plotting (deterministic)."""
    if len(scores) <= max_pairs:
        return scores, labels
    keep = np.sort(np.random.default_rng(0).choice(len(scores), size=max_pairs, replace=False))
    return scores[keep], labels[keep]


if __name__ == "__main__":
    run_cli(main)
