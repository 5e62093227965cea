"""eval.py end to end on real speech (12 short dev-clean utterances of 4 speakers), plus its scoring helpers.

One all-pairs run (JSON, plots, AS-norm, a broken file) runs as a subprocess while this process runs the
trials-file case through eval.main and embeds the same files with Embedder for the independent checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import eval as evaluate
from utils.data import write_list
from utils.metrics import as_norm, trial_metrics

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "voiceprint_resnet34.pt"
SPEAKERS = ("777", "1272", "1988", "2035")  # held out from the bundled model's training
COHORT_SPEAKERS = ("84", "174", "251", "422")  # training speakers
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# fixtures


def short_utterances(shared_data: Path, speaker: str, count: int = 3) -> list[Path]:
    """The first `count` utterances (sorted by name) of 1.5-3 s: short keeps the test fast and the EER non-zero."""
    files = sorted((shared_data / "librispeech" / "dev-clean" / speaker).glob("*/*.mp3"))
    return [f for f in files if 1.5 <= sf.info(str(f)).duration <= 3.0][:count]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "eval.py", "--model_path", str(MODEL), "--num_workers", "1", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("eval")
    items = [(str(f), label) for label, spk in enumerate(SPEAKERS) for f in short_utterances(shared_data, spk)]
    assert len(items) == 12
    bad = tmp / "broken.wav"
    bad.write_bytes(b"RIFF not really audio")
    write_list(tmp / "list.txt", [*items, (str(bad), 0)])
    # cohort: short clips of training speakers (the list holds 4, --cohort_size 3 keeps one per speaker of 3)
    cohort = [short_utterances(shared_data, spk, 1)[0] for spk in COHORT_SPEAKERS]
    write_list(tmp / "cohort.txt", [(str(f), i) for i, f in enumerate(cohort)])

    # trials: symlinks next to the trials file, named relative to it; one path absolute (used as given)
    trials_dir = tmp / "trials"
    trials_dir.mkdir()
    for path, _ in items:
        (trials_dir / Path(path).name).symlink_to(path)
    name = [Path(p).name for p, _ in items]
    trial_pairs = [(1, 0, 1), (1, 3, 4), (0, 0, 3), (0, 1, 4), (0, 0, 4), (0, 1, 3)]
    lines = [f"{lab} {name[i]} {name[j]}" for lab, i, j in trial_pairs]
    lines[0] = f"1 {items[0][0]} {name[1]}"
    (trials_dir / "trials.txt").write_text("\n".join(lines) + "\n")

    main = start(
        [
            "--list_path", str(tmp / "list.txt"),
            "--json_path", str(tmp / "eval.json"),
            "--plot_dir", str(tmp / "plots"),
            "--cohort_list_path", str(tmp / "cohort.txt"),
            "--cohort_size", "3",
        ]
    )  # fmt: skip

    # the trials run in-process (saves a second torch start-up), while the subprocess works
    out, err = io.StringIO(), io.StringIO()
    trials_args = ["--trials_path", str(trials_dir / "trials.txt"), "--json_path", str(tmp / "trials.json")]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        evaluate.main([*trials_args, "--model_path", str(MODEL), "--num_workers", "0", "--device", "cpu"])
    trials = subprocess.CompletedProcess(trials_args, 0, out.getvalue(), err.getvalue())

    # independent embeddings
    from utils.embedder import Embedder

    emb = Embedder(MODEL, device="cpu").embed_files([p for p, _ in items])[0]
    return {
        "tmp": tmp,
        "items": items,
        "emb": emb,
        "labels": np.array([label for _, label in items]),
        "trial_pairs": trial_pairs,
        "main": finish(main),
        "trials": trials,
    }


# all pairs


def test_all_pairs_json_and_report(runs: dict) -> None:
    proc = runs["main"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((runs["tmp"] / "eval.json").read_text())
    for key in (
        "eer", "min_dcf", "min_dcf_0.001", "threshold", "num_trials", "num_target", "num_nontarget",
        "tar_at_far_1pct", "tar_at_far_0.1pct", "best_accuracy", "best_accuracy_threshold",
        "always_different_accuracy", "model_path", "list_path", "as_norm",
    ):  # fmt: skip
        assert key in result, key
    # 12 decodable files of 4 speakers x 3: 66 pairs, 4 * 3 targets; the broken file is skipped and counted
    assert (result["num_trials"], result["num_target"], result["num_nontarget"]) == (66, 12, 54)
    assert result["num_skipped_files"] == 1 and result["num_files"] == 13
    assert 0.0 <= result["eer"] < 0.3
    assert 0.0 <= result["min_dcf"] <= 1.0 and 0.0 <= result["min_dcf_0.001"] <= 1.0
    assert 0.0 <= result["tar_at_far_0.1pct"] <= result["tar_at_far_1pct"] <= 1.0
    assert result["always_different_accuracy"] == pytest.approx(54 / 66)
    assert result["best_accuracy"] >= result["always_different_accuracy"]
    assert -1.0 <= result["threshold"] <= 1.0
    # the warning for the broken file is one line, and the report puts the trivial accuracy next to the sweep
    warnings = [line for line in proc.stderr.splitlines() if "broken.wav" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped")
    assert "Traceback" not in proc.stderr
    assert "always answering 'different'" in proc.stdout and "% of trials are non-target" in proc.stdout
    assert f"EER: {100 * result['eer']:.2f}%" in proc.stdout


def test_eer_matches_sklearn(runs: dict) -> None:
    from sklearn.metrics import roc_curve

    emb, labels = runs["emb"], runs["labels"]
    i, j = np.triu_indices(len(labels), k=1)
    scores = np.sum(emb[i] * emb[j], axis=1)
    y = labels[i] == labels[j]
    fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    # EER where FRR - FAR changes sign, linearly interpolated between the two neighbouring ROC points
    d = (1 - tpr) - fpr
    j = int(np.argmax(d < 0))
    t = d[j - 1] / (d[j - 1] - d[j])
    sk_eer = fpr[j - 1] + t * (fpr[j] - fpr[j - 1])
    result = json.loads((runs["tmp"] / "eval.json").read_text())
    assert result["eer"] > 0  # short clips: a few errors, so the comparison is not 0 == 0
    assert result["eer"] == pytest.approx(sk_eer, abs=0.001)


def test_as_norm_section(runs: dict) -> None:
    result = json.loads((runs["tmp"] / "eval.json").read_text())
    norm = result["as_norm"]
    assert norm["cohort_speakers"] == 3 and norm["cohort_files"] == 3 and norm["top_k"] == 3
    assert (norm["num_trials"], norm["num_target"]) == (66, 12)
    assert 0.0 <= norm["eer"] <= 0.5 and 0.0 <= norm["min_dcf"] <= 1.0
    assert "AS-norm scores (3 cohort speakers" in runs["main"].stdout
    assert "warning: AS-norm with 3 cohort speakers is noisy" in runs["main"].stderr


def test_plots_are_png(runs: dict) -> None:
    for name in ("det_curve.png", "score_histogram.png"):
        path = runs["tmp"] / "plots" / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert path.stat().st_size > 10_000


# trials file


def test_trials_file(runs: dict) -> None:
    proc = runs["trials"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((runs["tmp"] / "trials.json").read_text())
    pairs = runs["trial_pairs"]
    assert (result["num_trials"], result["num_target"]) == (len(pairs), sum(p[0] for p in pairs))
    # file 0 is named twice (absolute, and by its symlink next to the trials file): 5 distinct paths
    assert result["num_files"] == 5 and result["num_skipped_files"] == 0
    emb = runs["emb"]
    scores = [float(emb[a] @ emb[b]) for _, a, b in pairs]
    expected = trial_metrics(scores, [lab for lab, _, _ in pairs])
    assert result["eer"] == pytest.approx(expected["eer"], abs=1e-3)
    assert result["min_dcf"] == pytest.approx(expected["min_dcf"], abs=1e-3)


# bad input


def test_missing_list_is_one_line_error() -> None:
    proc = subprocess.run(
        [sys.executable, "eval.py", "--list_path", "no/such/list.txt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: list file not found: no/such/list.txt"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a.wav 0\n", "found no tab"),
        ("a.wav\t0\nb.wav\t0\n", "fewer than 2 speakers"),
    ],
)
def test_bad_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    (tmp_path / "list.txt").write_text(content)
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--list_path", str(tmp_path / "list.txt")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [("1 a.wav\n", "found 2 fields"), ("2 a.wav b.wav\n", "is not 1"), ("\n", "has no trials")],
)
def test_bad_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    (tmp_path / "trials.txt").write_text(content)
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--trials_path", str(tmp_path / "trials.txt")])
    assert info.value.code == 1
    assert message in capsys.readouterr().err


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_list(tmp_path / "list.txt", [("a.wav", 0), ("b.wav", 1)])
    with pytest.raises(SystemExit):
        evaluate.main(["--list_path", str(tmp_path / "list.txt"), "--model_path", str(tmp_path / "none.pt")])
    assert "model file not found" in capsys.readouterr().err


def test_all_pairs_as_norm_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = evaluate.AS_NORM_MAX_UTTERANCES + 1
    write_list(tmp_path / "list.txt", [(f"{i}.wav", i % 2) for i in range(n)])
    write_list(tmp_path / "cohort.txt", [("c.wav", 0)])
    with pytest.raises(SystemExit):
        evaluate.main(["--list_path", str(tmp_path / "list.txt"), "--cohort_list_path", str(tmp_path / "cohort.txt")])
    assert "--trials_path" in capsys.readouterr().err


# helpers (synthetic embeddings)


def random_set(n: int = 60, speakers: int = 6, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, speakers, size=n)
    centres = rng.standard_normal((speakers, dim))
    emb = centres[labels] + 0.8 * rng.standard_normal((n, dim))
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32), labels


def test_as_norm_all_pairs_equals_utils_as_norm() -> None:
    emb, labels = random_set()
    cohort = random_set(n=20, speakers=20, seed=1)[0]
    fast, same = evaluate.as_norm_all_pairs(emb, labels, cohort, top_k=7, block_rows=16)
    i, j = np.triu_indices(len(labels), k=1)
    c = emb @ cohort.T
    reference = as_norm(np.sum(emb[i] * emb[j], axis=1), c[i], c[j], top_k=7)
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(same, labels[i] == labels[j])
    # the chunked trials path gives the same numbers
    trials = evaluate.as_norm_trials(emb, i, j, np.sum(emb[i] * emb[j], axis=1), cohort, top_k=7)
    np.testing.assert_allclose(trials, reference, rtol=1e-9)


def test_sample_pair_scores() -> None:
    emb, labels = random_set()
    scores, same = evaluate.sample_pair_scores(emb, labels)  # 1770 pairs: all of them
    i, j = np.triu_indices(len(labels), k=1)
    np.testing.assert_allclose(scores, np.sum(emb[i] * emb[j], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(same, labels[i] == labels[j])
    # sampled: half target, half non-target, deterministic, every score a real pair's score
    exact = np.sum(emb[i] * emb[j], axis=1)
    s1, y1 = evaluate.sample_pair_scores(emb, labels, max_pairs=400)
    s2, y2 = evaluate.sample_pair_scores(emb, labels, max_pairs=400)
    np.testing.assert_array_equal(s1, s2)
    assert len(s1) == 400 and y1.sum() == 200
    # few target pairs: every one of them, each once
    s3, y3 = evaluate.sample_pair_scores(emb, labels, max_pairs=2 * int((labels[i] == labels[j]).sum()) + 2)
    np.testing.assert_allclose(np.sort(s3[y3]), np.sort(exact[labels[i] == labels[j]]), rtol=1e-5, atol=1e-6)
    assert np.all(np.min(np.abs(s1[:, None] - exact[None, :]), axis=1) < 1e-5)


def test_cohort_items_one_per_speaker_first() -> None:
    items = [("a1", 0), ("a2", 0), ("a3", 0), ("b1", 1), ("c1", 2), ("c2", 2)]
    assert evaluate.cohort_items(items, 4) == [("a1", 0), ("b1", 1), ("c1", 2), ("a2", 0)]
    assert len(evaluate.cohort_items(items, 100)) == 6


def test_read_trials_resolves_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.wav").write_bytes(b"")
    (tmp_path / "here.wav").write_bytes(b"")
    (tmp_path / "sub" / "trials.txt").write_text("1 x.wav here.wav\n0\tx.wav\tmissing.wav\n")
    monkeypatch.chdir(tmp_path)
    trials = evaluate.read_trials("sub/trials.txt")
    assert trials == [
        (1, os.path.join("sub", "x.wav"), "here.wav"),
        (0, os.path.join("sub", "x.wav"), "missing.wav"),
    ]


def test_repeated_trials_warn(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = shared_data / "seed_samples"
    a1, a2, b1 = seed / "a_1.wav", seed / "a_2.wav", seed / "b_1.wav"
    lines = [f"1 {a1} {a2}", f"0 {a1} {b1}", f"0 {b1} {a1}", f"1 {a2} {a1}"]  # both pairs, twice each
    (tmp_path / "trials.txt").write_text("\n".join(lines) + "\n")
    evaluate.main(["--trials_path", str(tmp_path / "trials.txt"), "--device", "cpu", "--num_workers", "0"])
    assert "warning: 2 repeated trial(s)" in capsys.readouterr().err


def test_fit_calibration_then_calibrated_probabilities(runs: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """Fit on one set, write a model copy carrying it; the copy reports calibrated probabilities elsewhere."""
    import infer_contrast
    from utils.checkpoint import load_torch_file

    tmp = runs["tmp"]
    calibrated = tmp / "calibrated.pt"
    args = ["--model_path", str(MODEL), "--num_workers", "0", "--device", "cpu"]
    evaluate.main(["--list_path", str(tmp / "list.txt"), "--fit_calibration", str(calibrated), *args])
    assert f"score calibration fitted on 66 trials of {tmp / 'list.txt'}" in capsys.readouterr().out
    points = load_torch_file(calibrated)["operating_points"]
    assert points["calibration"]["kind"] == "logistic" and tuple(points["calibration"]["trials"]) == (12, 54)
    assert load_torch_file(MODEL)["state_dict"].keys() == load_torch_file(calibrated)["state_dict"].keys()

    trials = ["--trials_path", str(tmp / "trials" / "trials.txt"), "--json_path", str(tmp / "cal.json")]
    evaluate.main([*trials, "--plot_dir", str(tmp / "cal_plots"), "--model_path", str(calibrated),
                   "--num_workers", "0", "--device", "cpu"])  # fmt: skip
    report = json.loads((tmp / "cal.json").read_text())["calibration"]
    assert 0 <= report["ece"] <= 1 and sum(b["trials"] for b in report["bins"]) == len(runs["trial_pairs"])
    assert (tmp / "cal_plots" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    same, other = runs["items"][0][0], runs["items"][3][0]
    infer_contrast.main(["--audio_path1", same, "--audio_path2", runs["items"][1][0], "--model_path", str(calibrated),
                         "--device", "cpu"])  # fmt: skip
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("probability of the same person"))
    infer_contrast.main(["--audio_path1", same, "--audio_path2", other, "--model_path", str(calibrated),
                         "--device", "cpu"])  # fmt: skip
    line_other = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("probability of the same"))
    assert float(line.split()[5]) > 0.5 > float(line_other.split()[5])
