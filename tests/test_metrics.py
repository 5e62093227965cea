"""Tests for utils.metrics: exact metrics, histogram back end, all-pairs scoring and AS-norm."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from utils.metrics import (
    ScoreHistogram,
    all_pairs_metrics,
    always_different_accuracy,
    as_norm,
    best_accuracy_threshold,
    compute_eer,
    compute_min_dcf,
    det_curve,
    tar_at_far,
    threshold_at_far,
    trial_metrics,
)

EXPECTED_KEYS = {
    "eer",
    "threshold",
    "min_dcf",
    "min_dcf_0.001",
    "tar_at_far_1pct",
    "tar_at_far_0.1pct",
    "threshold_at_far_1pct",
    "threshold_at_far_0.1pct",
    "num_trials",
    "num_target",
    "num_nontarget",
    "best_accuracy",
    "best_accuracy_threshold",
    "always_different_accuracy",
    "mode",
}


def gaussian_trials(seed: int, n_tar: int = 2000, n_non: int = 20000, sep: float = 2.0):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(sep, 1.0, n_tar), rng.normal(0.0, 1.0, n_non)]
    labels = np.r_[np.ones(n_tar, int), np.zeros(n_non, int)]
    perm = rng.permutation(scores.size)
    return scores[perm], labels[perm]


def cosine_like_trials(seed: int, n_tar: int = 5000, n_non: int = 100000):
    """Scores in [-1, 1] shaped like cosine scores of a decent speaker model."""
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(0.6, 0.12, n_tar), rng.normal(0.05, 0.1, n_non)]
    labels = np.r_[np.ones(n_tar, int), np.zeros(n_non, int)]
    return np.clip(scores, -1, 1), labels


def brute_rates(scores, labels, t):
    s, y = np.asarray(scores), np.asarray(labels) == 1
    far = np.mean(s[~y] >= t)
    frr = np.mean(s[y] < t)
    return far, frr


def brute_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    candidates = np.r_[np.unique(scores), np.inf]
    best = np.inf
    for t in candidates:
        far, frr = brute_rates(scores, labels, t)
        best = min(best, c_miss * p * frr + c_fa * (1 - p) * far)
    return best / min(c_miss * p, c_fa * (1 - p))


def sklearn_eer(scores, labels):
    fpr, tpr, _ = roc_curve(labels, scores)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


# exact metrics


def test_perfectly_separated():
    scores = [0.9, 0.8, 0.7, 0.2, 0.1, -0.3]
    labels = [1, 1, 1, 0, 0, 0]
    eer, thr = compute_eer(scores, labels)
    assert eer == 0.0
    assert 0.2 < thr <= 0.7
    assert compute_min_dcf(scores, labels)[0] == 0.0
    assert tar_at_far(scores, labels, 0.0) == 1.0


def test_all_equal_and_identical_distributions():
    assert compute_eer([0.5] * 10, [1] * 4 + [0] * 6)[0] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20000)
    labels = rng.integers(0, 2, size=20000)
    assert compute_eer(scores, labels)[0] == pytest.approx(0.5, abs=0.02)
    # a random system is no better than the trivial cost
    assert compute_min_dcf(scores, labels, p_target=0.5)[0] == pytest.approx(1.0, abs=0.05)


def test_hand_computed_case():
    # descending: T .9, N .7, T .6, T .4, N .3, N .2, N .1
    scores = [0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1]
    labels = [1, 1, 1, 0, 0, 0, 0]
    # at t=.6: FAR 1/4, FRR 1/3; at t=.4: FAR 1/4, FRR 0 -> FRR-FAR goes 1/12 -> -1/4, crossing at 1/4 of the way
    eer, thr = compute_eer(scores, labels)
    assert eer == pytest.approx(0.25)
    assert thr == pytest.approx(0.55)
    # p_target 0.5, unit costs: normalised DCF = FAR + FRR, minimal (1/4) at t=.4
    dcf, dcf_thr = compute_min_dcf(scores, labels, p_target=0.5)
    assert dcf == pytest.approx(0.25)
    assert dcf_thr == pytest.approx(0.4)
    assert tar_at_far(scores, labels, 0.0) == pytest.approx(1 / 3)
    assert tar_at_far(scores, labels, 0.1) == pytest.approx(1 / 3)
    assert tar_at_far(scores, labels, 0.25) == pytest.approx(1.0)
    acc, acc_thr = best_accuracy_threshold(scores, labels)
    assert acc == pytest.approx(6 / 7)
    assert acc_thr == pytest.approx(0.31)  # first threshold above .3 rejecting all non-targets but .7
    assert always_different_accuracy(labels) == pytest.approx(4 / 7)
    far, frr, thresholds = det_curve(scores, labels)
    np.testing.assert_allclose(thresholds, sorted(scores))
    np.testing.assert_allclose(far, [1, 0.75, 0.5, 0.25, 0.25, 0.25, 0])
    np.testing.assert_allclose(frr, [0, 0, 0, 0, 1 / 3, 2 / 3, 2 / 3])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_eer_matches_sklearn_roc(seed):
    scores, labels = gaussian_trials(seed, sep=1.5 + 0.5 * seed)
    eer, thr = compute_eer(scores, labels)
    assert eer == pytest.approx(sklearn_eer(scores, labels), abs=1e-3)
    # the threshold really is an equal-error operating point
    far, frr = brute_rates(scores, labels, thr)
    assert far == pytest.approx(eer, abs=2e-3)
    assert frr == pytest.approx(eer, abs=2e-3)


def test_eer_with_ties_matches_sklearn():
    scores, labels = gaussian_trials(5)
    scores = np.round(scores, 1)  # heavy ties
    assert compute_eer(scores, labels)[0] == pytest.approx(sklearn_eer(scores, labels), abs=1e-3)


@pytest.mark.parametrize(("p", "c_miss", "c_fa"), [(0.01, 1, 1), (0.001, 1, 1), (0.05, 10, 1), (0.5, 1, 1)])
def test_min_dcf_matches_brute_force(p, c_miss, c_fa):
    scores, labels = gaussian_trials(7, n_tar=300, n_non=1500)
    dcf, thr = compute_min_dcf(scores, labels, p_target=p, c_miss=c_miss, c_fa=c_fa)
    assert dcf == pytest.approx(brute_min_dcf(scores, labels, p, c_miss, c_fa), abs=1e-12)
    far, frr = brute_rates(scores, labels, thr)
    norm = min(c_miss * p, c_fa * (1 - p))
    assert (c_miss * p * frr + c_fa * (1 - p) * far) / norm == pytest.approx(dcf, abs=1e-12)
    assert 0.0 <= dcf <= 1.0


def test_tar_at_far_sanity():
    scores, labels = gaussian_trials(11, n_tar=500, n_non=5000)
    values = [tar_at_far(scores, labels, f) for f in (0.0, 0.001, 0.01, 0.1, 0.5, 1.0)]
    assert values == sorted(values)
    assert values[-1] == 1.0
    # brute force at 1 %: highest TAR over thresholds whose FAR <= 1 %
    best = max(
        1 - brute_rates(scores, labels, t)[1] for t in np.unique(scores) if brute_rates(scores, labels, t)[0] <= 0.01
    )
    assert values[2] == pytest.approx(best)
    with pytest.raises(ValueError, match="far"):
        tar_at_far(scores, labels, 1.5)


def test_threshold_at_far_is_the_operating_point_of_tar_at_far():
    scores, labels = gaussian_trials(12, n_tar=500, n_non=5000)
    for far in (0.001, 0.01, 0.1):
        thr = threshold_at_far(scores, labels, far)
        measured_far, measured_frr = brute_rates(scores, labels, thr)
        assert measured_far <= far
        assert 1 - measured_frr == pytest.approx(tar_at_far(scores, labels, far))
    # stricter false accept targets need higher thresholds
    assert threshold_at_far(scores, labels, 0.001) > threshold_at_far(scores, labels, 0.1)
    assert trial_metrics(scores, labels)["threshold_at_far_1pct"] == threshold_at_far(scores, labels, 0.01)
    assert trial_metrics(scores, labels)["threshold_at_far_0.1pct"] == threshold_at_far(scores, labels, 0.001)


def test_best_accuracy_matches_original_loop():
    rng = np.random.default_rng(3)
    scores = np.r_[rng.normal(0.6, 0.15, 400), rng.normal(0.2, 0.15, 3000)]
    labels = np.r_[np.ones(400, int), np.zeros(3000, int)]
    # the original project's evaluation loop
    best_acc, best_thr = 0.0, 0.0
    for i in range(100):
        t = i * 0.01
        acc = np.mean((scores >= t) == labels)
        if acc > best_acc:
            best_acc, best_thr = acc, t
    acc, thr = best_accuracy_threshold(scores, labels)
    assert acc == pytest.approx(best_acc)
    assert thr == pytest.approx(best_thr)
    assert always_different_accuracy(labels) == pytest.approx(3000 / 3400)


def test_det_curve_matches_brute_force():
    scores, labels = gaussian_trials(2, n_tar=50, n_non=200)
    far, frr, thresholds = det_curve(scores, labels)
    assert np.all(np.diff(thresholds) > 0)
    for i in range(0, len(thresholds), 17):
        assert (far[i], frr[i]) == pytest.approx(brute_rates(scores, labels, thresholds[i]))


def test_trial_metrics_keys_and_values():
    scores, labels = gaussian_trials(4, n_tar=300, n_non=3000)
    m = trial_metrics(scores, labels)
    assert set(m) == EXPECTED_KEYS
    assert m["mode"] == "exact"
    assert (m["eer"], m["threshold"]) == compute_eer(scores, labels)
    assert m["min_dcf_0.001"] == compute_min_dcf(scores, labels, p_target=0.001)[0]
    assert (m["num_trials"], m["num_target"], m["num_nontarget"]) == (3300, 300, 3000)
    assert m["tar_at_far_1pct"] == tar_at_far(scores, labels, 0.01)


def test_errors_on_one_class_and_bad_input():
    for fn in (compute_eer, compute_min_dcf, det_curve, trial_metrics, best_accuracy_threshold):
        with pytest.raises(ValueError, match="no target"):
            fn([0.1, 0.2, 0.3], [0, 0, 0])
        with pytest.raises(ValueError, match="no non-target"):
            fn([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="no target"):
        tar_at_far([0.1, 0.2], [0, 0], 0.01)
    with pytest.raises(ValueError, match="length"):
        compute_eer([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="labels"):
        compute_eer([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        compute_eer([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [0, 1], p_target=0.0)


# histogram back end


@pytest.mark.parametrize("seed", [0, 1])
def test_histogram_agrees_with_exact(seed):
    scores, labels = cosine_like_trials(seed)
    hist = ScoreHistogram()
    for chunk in np.array_split(np.arange(scores.size), 7):  # streaming in batches
        hist.add(scores[chunk], labels[chunk])
    assert hist.num_trials == scores.size
    assert (hist.num_target, hist.num_nontarget) == (int(labels.sum()), int((labels == 0).sum()))
    eer, thr = compute_eer(scores, labels)
    h_eer, h_thr = hist.eer()
    assert h_eer == pytest.approx(eer, abs=1e-4)
    assert h_thr == pytest.approx(thr, abs=1e-3)
    for p in (0.01, 0.001):
        assert hist.min_dcf(p)[0] == pytest.approx(compute_min_dcf(scores, labels, p)[0], abs=2e-3)
    for f in (0.01, 0.001):
        assert hist.tar_at_far(f) == pytest.approx(tar_at_far(scores, labels, f), abs=1e-3)
    assert hist.best_accuracy_threshold()[0] == pytest.approx(best_accuracy_threshold(scores, labels)[0], abs=1e-4)
    assert hist.always_different_accuracy() == pytest.approx(always_different_accuracy(labels))
    m = hist.metrics()
    assert set(m) == EXPECTED_KEYS and m["mode"] == "histogram"


def test_histogram_equals_exact_on_bin_edges():
    # scores already on the 1e-5 grid: histogram metrics are the exact ones
    rng = np.random.default_rng(9)
    scores = np.round(np.r_[rng.normal(0.5, 0.2, 300), rng.normal(0.0, 0.2, 3000)], 2).clip(-1, 1)
    labels = np.r_[np.ones(300, int), np.zeros(3000, int)]
    hist = ScoreHistogram()
    hist.add(scores, labels)
    assert hist.eer() == pytest.approx(compute_eer(scores, labels), abs=1e-9)
    assert hist.min_dcf(0.01)[0] == pytest.approx(compute_min_dcf(scores, labels, 0.01)[0], abs=1e-12)
    assert hist.best_accuracy_threshold() == pytest.approx(best_accuracy_threshold(scores, labels))


def test_histogram_clips_out_of_range_and_rejects_one_class():
    hist = ScoreHistogram(n_bins=201)
    hist.add([5.0, -5.0, 0.0], [1, 0, 0])
    assert hist.target_counts[-1] == 1 and hist.nontarget_counts[0] == 1
    assert hist.eer()[0] == 0.0
    empty = ScoreHistogram()
    empty.add([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="no target"):
        empty.eer()


# all pairs of embeddings


def speaker_embeddings(n_speakers: int, per_speaker: int, dim: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_speakers), per_speaker)
    centres = rng.normal(size=(n_speakers, dim))
    emb = centres[labels] + spread * rng.normal(size=(labels.size, dim))
    perm = rng.permutation(labels.size)  # speakers interleaved across blocks
    return emb[perm].astype(np.float32), labels[perm]


def brute_force_pairs(emb, labels):
    e = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    scores, same = [], []
    for i in range(len(e)):
        for j in range(i + 1, len(e)):
            scores.append(float(e[i] @ e[j]))
            same.append(int(labels[i] == labels[j]))
    return np.array(scores), np.array(same)


@pytest.mark.parametrize("block_size", [7, 16, 4096])
def test_all_pairs_exact_matches_brute_force(block_size):
    emb, labels = speaker_embeddings(6, 10, 32, seed=0, spread=2.5)
    scores, same = brute_force_pairs(emb, labels)
    m = all_pairs_metrics(emb, labels, block_size=block_size)
    ref = trial_metrics(scores, same)
    assert m["mode"] == "exact"
    assert set(m) == EXPECTED_KEYS
    assert (m["num_trials"], m["num_target"], m["num_nontarget"]) == (1770, 270, 1500)
    for key in ("eer", "threshold", "min_dcf", "min_dcf_0.001", "tar_at_far_1pct", "tar_at_far_0.1pct"):
        assert m[key] == pytest.approx(ref[key], abs=1e-5), key
    assert m["best_accuracy"] == pytest.approx(ref["best_accuracy"])
    assert m["always_different_accuracy"] == pytest.approx(1500 / 1770)
    assert 0.0 < m["eer"] < 0.5


@pytest.mark.parametrize("block_size", [7, 64])
def test_all_pairs_histogram_matches_exact(block_size):
    emb, labels = speaker_embeddings(6, 10, 32, seed=1, spread=2.5)
    exact = all_pairs_metrics(emb, labels, block_size=block_size)
    hist = all_pairs_metrics(emb, labels, block_size=block_size, exact_max_pairs=0)
    assert hist["mode"] == "histogram"
    for key in ("num_trials", "num_target", "num_nontarget", "always_different_accuracy"):
        assert hist[key] == exact[key], key
    for key in ("eer", "min_dcf", "min_dcf_0.001", "tar_at_far_1pct", "tar_at_far_0.1pct", "best_accuracy"):
        assert hist[key] == pytest.approx(exact[key], abs=1e-3), key
    # thresholds can move within the gap between neighbouring scores at the crossing
    assert hist["threshold"] == pytest.approx(exact["threshold"], abs=0.02)


def test_all_pairs_histogram_larger_set():
    emb, labels = speaker_embeddings(40, 25, 64, seed=2, spread=3.0)  # ~500k pairs, several blocks
    exact = all_pairs_metrics(emb, labels, block_size=300)
    hist = all_pairs_metrics(emb, labels, block_size=300, exact_max_pairs=0)
    assert hist["num_trials"] == exact["num_trials"] == 1000 * 999 // 2
    assert hist["eer"] == pytest.approx(exact["eer"], abs=1e-4)
    assert hist["min_dcf"] == pytest.approx(exact["min_dcf"], abs=1e-3)


def test_all_pairs_string_labels_and_errors():
    emb, labels = speaker_embeddings(3, 4, 8, seed=3)
    names = np.array([f"spk{i}" for i in labels])
    assert all_pairs_metrics(emb, names)["num_target"] == 3 * 6
    with pytest.raises(ValueError, match="no target"):
        all_pairs_metrics(emb, np.arange(len(emb)))
    with pytest.raises(ValueError, match="no target"):
        all_pairs_metrics(emb, np.arange(len(emb)), exact_max_pairs=0)
    with pytest.raises(ValueError, match="no non-target"):
        all_pairs_metrics(emb, np.zeros(len(emb)))
    with pytest.raises(ValueError, match="one entry per embedding"):
        all_pairs_metrics(emb, labels[:-1])
    bad = emb.copy()
    bad[2] = 0
    with pytest.raises(ValueError, match="zero norm"):
        all_pairs_metrics(bad, labels)


# AS-norm


def test_as_norm_shape_and_offset_invariance():
    rng = np.random.default_rng(0)
    n, c = 50, 400
    scores = rng.normal(size=n)
    enroll = rng.normal(size=(n, c))
    test = rng.normal(size=(n, c))
    out = as_norm(scores, enroll, test, top_k=100)
    assert out.shape == (n,)
    # a per-trial offset shifting the trial score and both cohort rows is removed
    offset = rng.normal(scale=5.0, size=n)
    shifted = as_norm(scores + offset, enroll + offset[:, None], test + offset[:, None], top_k=100)
    np.testing.assert_allclose(shifted, out, atol=1e-9)
    # manual top-k statistics
    top_e = np.sort(enroll, axis=1)[:, -100:]
    top_t = np.sort(test, axis=1)[:, -100:]
    ref = 0.5 * ((scores - top_e.mean(1)) / top_e.std(1) + (scores - top_t.mean(1)) / top_t.std(1))
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    # top_k larger than the cohort uses the whole cohort
    assert as_norm(scores, enroll[:, :10], test[:, :10], top_k=300).shape == (n,)
    with pytest.raises(ValueError, match="enroll_cohort_scores"):
        as_norm(scores, enroll[:10], test)
