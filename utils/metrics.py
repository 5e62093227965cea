"""Speaker-verification metrics: EER, minDCF, TAR@FAR, accuracy sweep, DET curve, AS-norm.

Convention everywhere: a trial is accepted ("same speaker") when ``score >= threshold``; label 1 is a
target (same-speaker) trial, label 0 a non-target trial. FAR = accepted non-targets / non-targets,
FRR = rejected targets / targets, TAR = 1 - FRR.

Two back ends share one ROC representation (``_Curve``): exact (sort the scores) and ``ScoreHistogram``
(fine-binned counts, bounded memory, streaming). ``all_pairs_metrics`` scores every unordered pair of a
set of embeddings with blocked float32 matrix products and picks the back end by the number of pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ScoreHistogram",
    "all_pairs_metrics",
    "always_different_accuracy",
    "as_norm",
    "best_accuracy_threshold",
    "compute_eer",
    "compute_min_dcf",
    "det_curve",
    "tar_at_far",
    "threshold_at_far",
    "trial_metrics",
]


# validation


def _as_trials(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(float64 scores, bool labels) as 1-D arrays of equal length; ValueError on malformed input."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    if y.dtype != bool:
        if y.size and not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0 (non-target) or 1 (target)")
        y = y == 1
    return s, y


def _check_trials(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Like `_as_trials`, and both classes must be present."""
    s, y = _as_trials(scores, labels)
    _check_classes(int(y.sum()), int(y.size - y.sum()))
    return s, y


def _check_classes(n_tar: int, n_non: int) -> None:
    if n_tar == 0:
        raise ValueError("no target trials (label 1): EER/minDCF/TAR need at least one same-speaker trial")
    if n_non == 0:
        raise ValueError("no non-target trials (label 0): EER/minDCF/TAR need at least one different-speaker trial")


# ROC curve shared by the exact and histogram back ends


@dataclass(frozen=True)
class _Curve:
    """Operating points in order of decreasing threshold.

    Point i accepts exactly the trials with score >= thr[i]; tp/fp are the accepted target/non-target counts.
    Point 0 accepts nothing (thr above every score), the last point accepts everything.
    """

    thr: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_tar: int
    n_non: int
    tol: float = 0.0  # thresholds within tol below a point's threshold still accept it (bin-edge float noise)

    @property
    def far(self) -> np.ndarray:
        return self.fp / self.n_non

    @property
    def frr(self) -> np.ndarray:
        return 1.0 - self.tp / self.n_tar


def _exact_curve(s: np.ndarray, y: np.ndarray) -> _Curve:
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(y[order], dtype=np.int64)
    fp = np.arange(1, s.size + 1, dtype=np.int64) - tp
    # one point per distinct score: the last position of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    top = np.nextafter(s_sorted[0], np.inf)
    return _Curve(
        thr=np.r_[top, s_sorted[last]],
        tp=np.r_[0, tp[last]],
        fp=np.r_[0, fp[last]],
        n_tar=int(tp[-1]),
        n_non=int(fp[-1]),
    )


def _curve_eer(c: _Curve) -> tuple[float, float]:
    far, frr = c.far, c.frr
    d = frr - far  # non-increasing from +1 (accept none) to -1 (accept all)
    j = int(np.argmax(d < 0))  # first point past the crossing
    i = j - 1
    # linear interpolation between the two neighbouring points where FRR - FAR changes sign (t = 0 when d[i] == 0)
    t = d[i] / (d[i] - d[j])
    eer = far[i] + t * (far[j] - far[i])
    thr = c.thr[i] + t * (c.thr[j] - c.thr[i])
    return float(eer), float(thr)


def _check_dcf_params(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")


def _curve_min_dcf(c: _Curve, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    _check_dcf_params(p_target, c_miss, c_fa)
    dcf = c_miss * p_target * c.frr + c_fa * (1.0 - p_target) * c.far
    dcf /= min(c_miss * p_target, c_fa * (1.0 - p_target))
    k = int(np.argmin(dcf))
    return float(dcf[k]), float(c.thr[k])


def _curve_point_at_far(c: _Curve, far: float) -> int:
    """Index of the operating point with the highest TAR whose FAR is <= far."""
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    # FAR is non-decreasing along the curve, so the best admissible point is the last with FAR <= far
    return int(np.searchsorted(c.fp, far * c.n_non * (1 + 1e-12), side="right")) - 1


def _curve_tar_at_far(c: _Curve, far: float) -> float:
    return float(c.tp[_curve_point_at_far(c, far)] / c.n_tar)


def _curve_threshold_at_far(c: _Curve, far: float) -> float:
    """Threshold of the operating point `_curve_tar_at_far` picks: accept scores >= it, FAR <= far."""
    return float(c.thr[_curve_point_at_far(c, far)])


# the original swept 0.00..0.99; a collapsed model's scores all sit above 0.99, so sweep the whole
# cosine range -1.00..1.00 (at 1.00 everything but identical embeddings is "different")
ACCURACY_SWEEP = (-1.0, 1.005, 0.01)


def _sweep_thresholds(start: float, stop: float, step: float) -> np.ndarray:
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    n = math.ceil((stop - start) / step - 1e-9)
    if n <= 0:
        raise ValueError(f"empty threshold sweep: start={start}, stop={stop}, step={step}")
    return start + step * np.arange(n)


def _curve_best_accuracy(c: _Curve, start: float, stop: float, step: float) -> tuple[float, float]:
    thresholds = _sweep_thresholds(start, stop, step)
    # point index accepting {score >= t}: the last point whose threshold is still >= t
    # (thresholds above every score select point 0, which accepts nothing)
    k = np.maximum(np.searchsorted(-c.thr, -(thresholds - c.tol), side="right") - 1, 0)
    correct = c.tp[k] + (c.n_non - c.fp[k])
    b = int(np.argmax(correct))  # first best, like the original strict ">" loop
    return float(correct[b] / (c.n_tar + c.n_non)), round(float(thresholds[b]), 10)


def _curve_det(c: _Curve) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # drop the accept-nothing point and return thresholds ascending (sklearn's det_curve order)
    return c.far[:0:-1].copy(), c.frr[:0:-1].copy(), c.thr[:0:-1].copy()


def _curve_metrics(c: _Curve, p_targets: Sequence[float], mode: str) -> dict:
    if len(p_targets) == 0:
        raise ValueError("p_targets must name at least one target prior")
    eer, thr = _curve_eer(c)
    out: dict = {"eer": eer, "threshold": thr}
    for n, p in enumerate(p_targets):
        key = "min_dcf" if n == 0 else f"min_dcf_{p:g}"
        out[key] = _curve_min_dcf(c, p, 1.0, 1.0)[0]
    acc, acc_thr = _curve_best_accuracy(c, *ACCURACY_SWEEP)
    out.update(
        {
            "tar_at_far_1pct": _curve_tar_at_far(c, 0.01),
            "tar_at_far_0.1pct": _curve_tar_at_far(c, 0.001),
            "threshold_at_far_1pct": _curve_threshold_at_far(c, 0.01),
            "threshold_at_far_0.1pct": _curve_threshold_at_far(c, 0.001),
            "num_trials": c.n_tar + c.n_non,
            "num_target": c.n_tar,
            "num_nontarget": c.n_non,
            "best_accuracy": acc,
            "best_accuracy_threshold": acc_thr,
            "always_different_accuracy": c.n_non / (c.n_tar + c.n_non),
            "mode": mode,
        }
    )
    return out


# exact metrics on explicit trials


def compute_eer(scores, labels) -> tuple[float, float]:
    """Equal error rate and its threshold, exactly from the sorted scores.

    FAR and FRR are evaluated at every distinct score; where they cross, both the rate and the threshold are
    interpolated linearly between the two neighbouring operating points.

    Args:
        scores: (n,) trial scores, higher = more likely the same speaker.
        labels: (n,) 1 for target trials, 0 for non-target trials.

    Returns:
        (eer, threshold) with eer in [0, 1].

    Raises:
        ValueError: malformed input, or no target / no non-target trials.
    """
    return _curve_eer(_exact_curve(*_check_trials(scores, labels)))


def compute_min_dcf(
    scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Normalised minimum detection cost (NIST SRE) and the threshold that attains it.

    DCF(t) = c_miss * p_target * FRR(t) + c_fa * (1 - p_target) * FAR(t), divided by
    min(c_miss * p_target, c_fa * (1 - p_target)), minimised over all thresholds (including rejecting
    everything, reported as a threshold just above the highest score).
    """
    return _curve_min_dcf(_exact_curve(*_check_trials(scores, labels)), p_target, c_miss, c_fa)


def tar_at_far(scores, labels, far: float) -> float:
    """True accept rate at the best operating point whose false accept rate is <= ``far`` (e.g. 0.01)."""
    return _curve_tar_at_far(_exact_curve(*_check_trials(scores, labels)), far)


def threshold_at_far(scores, labels, far: float) -> float:
    """The threshold of ``tar_at_far``'s operating point: accepting scores >= it keeps FAR <= ``far``."""
    return _curve_threshold_at_far(_exact_curve(*_check_trials(scores, labels)), far)


def best_accuracy_threshold(
    scores, labels, start: float = 0.0, stop: float = 1.0, step: float = 0.01
) -> tuple[float, float]:
    """The original project's evaluation: sweep thresholds start, start+step, ... (< stop) and return
    (best accuracy, its threshold), accuracy = correct accept/reject decisions / all trials.
    Ties keep the lowest threshold."""
    return _curve_best_accuracy(_exact_curve(*_check_trials(scores, labels)), start, stop, step)


def always_different_accuracy(labels) -> float:
    """Accuracy of the trivial system that answers "different speaker" to every trial (the non-target fraction)."""
    y = np.asarray(labels)
    if y.size == 0:
        raise ValueError("no trials")
    return float(np.mean(y == 0))


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DET curve points for plotting: (far, frr, thresholds), one point per distinct score, thresholds ascending.

    far[i] = P(score >= thresholds[i] | non-target), frr[i] = P(score < thresholds[i] | target).
    """
    return _curve_det(_exact_curve(*_check_trials(scores, labels)))


def trial_metrics(scores, labels, p_targets: Sequence[float] = (0.01, 0.001)) -> dict:
    """All metrics for an explicit trial list (exact back end); same keys as ``all_pairs_metrics``.

    ``min_dcf`` is at p_targets[0]; the other priors appear as ``min_dcf_<p>`` (e.g. ``min_dcf_0.001``).
    The accuracy sweep runs over the whole cosine range, -1.00..1.00 step 0.01.
    """
    return _curve_metrics(_exact_curve(*_check_trials(scores, labels)), p_targets, "exact")


# streaming histogram back end


class ScoreHistogram:
    """Streaming target / non-target score histograms with fine bins, for bounded-memory metrics.

    Bin k holds scores in [low + k / scale, low + (k + 1) / scale) with scale = (n_bins - 1) / (high - low);
    the default 200_001 bins over [-1, 1] give 1e-5 wide bins whose edges fall on multiples of 1e-5, and the
    last bin starts at ``high`` exactly. Scores outside [low, high] are clipped into the end bins.
    Metrics equal the exact ones computed on scores rounded down to a bin edge.
    """

    def __init__(self, n_bins: int = 200_001, low: float = -1.0, high: float = 1.0) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be at least 2, got {n_bins}")
        if not high > low:
            raise ValueError(f"high must exceed low, got low={low}, high={high}")
        self.n_bins = int(n_bins)
        self.low = float(low)
        self.high = float(high)
        self.scale = (self.n_bins - 1) / (self.high - self.low)
        self.target_counts = np.zeros(self.n_bins, dtype=np.int64)
        self.nontarget_counts = np.zeros(self.n_bins, dtype=np.int64)

    def bin_index(self, scores: np.ndarray) -> np.ndarray:
        """Bin index of each score (float64 arithmetic)."""
        x = (np.asarray(scores, dtype=np.float64) - self.low) * self.scale
        return np.clip(x, 0, self.n_bins - 1).astype(np.intp)

    def add(self, scores, labels) -> None:
        """Accumulate a batch of trials (labels 1 target, 0 non-target). Either class may be absent in a batch."""
        s, y = _as_trials(scores, labels)
        idx = self.bin_index(s)
        self.target_counts += np.bincount(idx[y], minlength=self.n_bins)
        self.nontarget_counts += np.bincount(idx[~y], minlength=self.n_bins)

    def add_counts(self, target_counts: np.ndarray, nontarget_counts: np.ndarray) -> None:
        """Accumulate already-binned counts (arrays of length n_bins), e.g. from another histogram or a worker."""
        if len(target_counts) != self.n_bins or len(nontarget_counts) != self.n_bins:
            raise ValueError(f"count arrays must have length {self.n_bins}")
        self.target_counts += np.asarray(target_counts, dtype=np.int64)
        self.nontarget_counts += np.asarray(nontarget_counts, dtype=np.int64)

    @property
    def num_target(self) -> int:
        return int(self.target_counts.sum())

    @property
    def num_nontarget(self) -> int:
        return int(self.nontarget_counts.sum())

    @property
    def num_trials(self) -> int:
        return self.num_target + self.num_nontarget

    def _curve(self) -> _Curve:
        n_tar, n_non = self.num_target, self.num_nontarget
        _check_classes(n_tar, n_non)
        # one point per non-empty bin, thresholds at the bins' lower edges, highest first
        k = np.flatnonzero((self.target_counts + self.nontarget_counts) > 0)[::-1]
        tp = np.cumsum(self.target_counts[::-1])[self.n_bins - 1 - k]
        fp = np.cumsum(self.nontarget_counts[::-1])[self.n_bins - 1 - k]
        edges = self.low + k / self.scale
        top = self.low + self.n_bins / self.scale
        return _Curve(
            thr=np.r_[top, edges], tp=np.r_[0, tp], fp=np.r_[0, fp], n_tar=n_tar, n_non=n_non, tol=1e-6 / self.scale
        )

    def eer(self) -> tuple[float, float]:
        """(EER, threshold), see ``compute_eer``."""
        return _curve_eer(self._curve())

    def min_dcf(self, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
        """(normalised minDCF, threshold), see ``compute_min_dcf``."""
        return _curve_min_dcf(self._curve(), p_target, c_miss, c_fa)

    def tar_at_far(self, far: float) -> float:
        """TAR at FAR <= far, see ``tar_at_far``."""
        return _curve_tar_at_far(self._curve(), far)

    def best_accuracy_threshold(
        self, start: float = ACCURACY_SWEEP[0], stop: float = ACCURACY_SWEEP[1], step: float = ACCURACY_SWEEP[2]
    ) -> tuple[float, float]:
        """See ``best_accuracy_threshold``; exact when the swept thresholds fall on bin edges (the default does)."""
        return _curve_best_accuracy(self._curve(), start, stop, step)

    def always_different_accuracy(self) -> float:
        n = self.num_trials
        if n == 0:
            raise ValueError("no trials")
        return self.num_nontarget / n

    def det_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """See ``det_curve``; one point per non-empty bin."""
        return _curve_det(self._curve())

    def metrics(self, p_targets: Sequence[float] = (0.01, 0.001)) -> dict:
        """All metrics, same keys as ``trial_metrics`` with mode "histogram"."""
        return _curve_metrics(self._curve(), p_targets, "histogram")


# all pairs of a set of embeddings


def _normalise_embeddings(embeddings, labels) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, dim), got shape {e.shape}")
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != e.shape[0]:
        raise ValueError(f"labels must be 1-D with one entry per embedding ({e.shape[0]}), got shape {lab.shape}")
    if e.shape[0] < 2:
        raise ValueError("need at least 2 embeddings to form a pair")
    if not np.all(np.isfinite(e)):
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(e.astype(np.float64), axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"{zero.size} embedding(s) have zero norm (first at row {zero[0]})")
    e = np.ascontiguousarray(e / norms[:, None].astype(np.float32))
    speaker = np.unique(lab, return_inverse=True)[1].astype(np.int64).ravel()
    return e, speaker


def _upper_blocks(e: np.ndarray, speaker: np.ndarray, block_size: int) -> Iterator[tuple]:
    """Yield (scores, same, lower) for the upper-triangular blocks of E @ E.T.

    ``scores`` (float32) is a view of a reused buffer, valid only until the next block. ``lower`` is None for
    off-diagonal blocks and, for diagonal blocks, the mask of entries with j <= i that must be ignored.
    """
    n = e.shape[0]
    bs = min(block_size, n)
    buf = np.empty(bs * bs, dtype=np.float32)
    lower_full = ~np.triu(np.ones((bs, bs), dtype=bool), k=1)
    for r0 in range(0, n, bs):
        r1 = min(r0 + bs, n)
        rows = e[r0:r1]
        for c0 in range(r0, n, bs):
            c1 = min(c0 + bs, n)
            scores = buf[: (r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
            np.matmul(rows, e[c0:c1].T, out=scores)
            same = speaker[r0:r1, None] == speaker[None, c0:c1]
            lower = lower_full[: r1 - r0, : c1 - c0] if c0 == r0 else None
            yield scores, same, lower


def all_pairs_metrics(
    embeddings,
    labels,
    block_size: int = 4096,
    exact_max_pairs: int = 5_000_000,
    p_targets: Sequence[float] = (0.01, 0.001),
) -> dict:
    """Metrics over every unordered pair i < j of a set of embeddings (cosine scores).

    Embeddings are L2-normalised and scored as blocked float32 matrix products over the upper-triangular
    blocks only. With at most ``exact_max_pairs`` pairs the scores are collected and sorted (mode "exact");
    otherwise they stream into a ``ScoreHistogram`` (mode "histogram", 1e-5 bins) with memory bounded by a
    few block_size**2 buffers (about 250 MB at 4096).

    Args:
        embeddings: (n, dim) array.
        labels: (n,) speaker ids (any comparable type).
        p_targets: priors for minDCF; ``min_dcf`` is at p_targets[0], others as ``min_dcf_<p>``.

    Returns:
        dict with eer, threshold, min_dcf, min_dcf_0.001, tar_at_far_1pct, tar_at_far_0.1pct, num_trials,
        num_target, num_nontarget, best_accuracy, best_accuracy_threshold, always_different_accuracy, mode.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    e, speaker = _normalise_embeddings(embeddings, labels)
    n = e.shape[0]
    num_pairs = n * (n - 1) // 2

    if num_pairs <= exact_max_pairs:
        score_parts, label_parts = [], []
        for scores, same, lower in _upper_blocks(e, speaker, block_size):
            if lower is None:
                score_parts.append(scores.ravel().astype(np.float64))
                label_parts.append(same.ravel())
            else:
                keep = ~lower
                score_parts.append(scores[keep].astype(np.float64))
                label_parts.append(same[keep])
        s = np.concatenate(score_parts)
        y = np.concatenate(label_parts)
        _check_classes(int(y.sum()), int(y.size - y.sum()))
        return _curve_metrics(_exact_curve(s, y), p_targets, "exact")

    hist = ScoreHistogram()
    nb = hist.n_bins
    total = np.zeros(nb + 1, dtype=np.int64)  # extra slot nb collects the masked j <= i entries
    target = np.zeros(nb + 1, dtype=np.int64)
    idx_buf = np.empty(min(block_size, n) ** 2, dtype=np.intp)
    low, scale = np.float32(hist.low), np.float32(hist.scale)
    for scores, same, lower in _upper_blocks(e, speaker, block_size):
        # bin index = floor((s - low) * scale), in place in float32; truncation is floor once clipped to >= 0
        scores -= low
        scores *= scale
        np.clip(scores, 0, nb - 1, out=scores)
        idx = idx_buf[: scores.size].reshape(scores.shape)
        np.copyto(idx, scores, casting="unsafe")
        if lower is not None:
            idx[lower] = nb
        total += np.bincount(idx.ravel(), minlength=nb + 1)
        target += np.bincount(idx[same], minlength=nb + 1)  # masked entries land in slot nb, dropped below
    hist.add_counts(target[:nb], total[:nb] - target[:nb])
    return hist.metrics(p_targets)


# score normalisation


def cohort_stats(cohort_scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and standard deviation of the `top_k` highest cohort scores (AS-norm's statistics)."""
    c = np.asarray(cohort_scores, dtype=np.float64)
    k = min(top_k, c.shape[1])
    top = np.partition(c, c.shape[1] - k, axis=1)[:, c.shape[1] - k :]
    return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-8)  # guard against a constant cohort row (std 0)


def as_norm(scores, enroll_cohort_scores, test_cohort_scores, top_k: int = 300) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm).

    Args:
        scores: (n,) raw trial scores.
        enroll_cohort_scores: (n, C) scores of each trial's enrolment side against the cohort.
        test_cohort_scores: (n, C') scores of each trial's test side against the cohort.
        top_k: number of highest cohort scores per row used for the mean / std (capped at the cohort size).

    Returns:
        (n,) float64 array 0.5 * ((s - mu_e) / std_e + (s - mu_t) / std_t).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    sides = []
    for cohort, name in ((enroll_cohort_scores, "enroll_cohort_scores"), (test_cohort_scores, "test_cohort_scores")):
        c = np.asarray(cohort, dtype=np.float64)
        if c.ndim != 2 or c.shape[0] != s.shape[0] or c.shape[1] == 0:
            raise ValueError(f"{name} must have shape ({s.shape[0]}, C) with C >= 1, got {c.shape}")
        sides.append(cohort_stats(c, top_k))
    (mu_e, std_e), (mu_t, std_t) = sides
    return 0.5 * ((s - mu_e) / std_e + (s - mu_t) / std_t)
