"""Bad input: list and trials files for train.py, eval.py. Rows, expectations and speed rules: helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bad_inputs.helpers import (
    EVAL_LIST_ERRORS,
    LIST_ROWS,
    MODEL,
    TINY_TRAIN,
    assert_error,
    list_text,
    record,
    run_cli,
    run_main,
)


def test_train_list_messy_works(trained: Path) -> None:
    assert (trained / "inference.pt").is_file() and any(trained.rglob("checkpoint.pt"))


@pytest.mark.parametrize("row_id", [k for k, v in LIST_ROWS.items() if v[1]])
def test_train_list_errors(
    row_id: str, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, expected = LIST_ROWS[row_id]
    (tmp_path / "list.txt").write_bytes(build(four))
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model",
                                 str(tmp_path / "m"), *TINY_TRAIN], capsys)  # fmt: skip
    line = assert_error(outcome, expected)
    record("train list", row_id, "train.py --train_list_path X", line, tmp_path)
    assert not (tmp_path / "m").exists(), "a rejected list must not leave a half-made model folder"


def test_train_list_file_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "nope.txt"), *TINY_TRAIN], capsys)
    record("train list", "list file not found", "train.py --train_list_path X",
           assert_error(outcome, "list file not found"), tmp_path)  # fmt: skip


def test_train_labels_that_skip_values_warn(
    four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels 0 and 2 (1 unused): allowed, with a warning line; the head still has 3 classes."""
    items = [(path, 2 if label else 0) for path, label in four]
    (tmp_path / "list.txt").write_text(list_text(items), encoding="utf-8")
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model", str(tmp_path / "m"),
                                 *TINY_TRAIN, "--speed_perturb", "false"], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    warning = [w for w in outcome.warnings() if "have no utterance" in w]
    assert warning == ["warning: 1 of labels 0..2 have no utterance in " + str(tmp_path / "list.txt")]
    assert "head arcface over 3 classes" in outcome.out
    record("train list", "labels skip a value (0, 2)", "train.py --train_list_path X", warning[0], tmp_path)


@pytest.mark.parametrize("cache_audio", ["false", "true"])
def test_train_list_path_that_no_longer_exists_warns(
    cache_audio: str, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listed file deleted since create_data.py: training goes on (noise in its place) but says so."""
    gone = tmp_path / "deleted.wav"
    items = [*four, (str(gone), 1)]
    (tmp_path / "list.txt").write_text(list_text(items), encoding="utf-8")
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model", str(tmp_path / "m"),
                                 *TINY_TRAIN, "--epoch_size", "16", "--batch_size", "16", "--balance", "utterances",
                                 "--cache_audio", cache_audio], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    warning = [w for w in outcome.warnings() if str(gone) in w]
    assert warning == [f"warning: training file replaced by noise: audio file not found: {gone}"]
    row = "a listed path no longer exists" + (" (--cache_audio true)" if cache_audio == "true" else "")
    record("train list", row, "train.py --train_list_path X", warning[0], tmp_path)


# eval.py: lists


@pytest.mark.parametrize("row_id", list(LIST_ROWS))
def test_eval_list(
    row_id: str, four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    build, expected = LIST_ROWS[row_id]
    expected = EVAL_LIST_ERRORS.get(row_id, expected)
    (tmp_path / "list.txt").write_bytes(build(four))
    outcome = run_main("eval", ["--list_path", str(tmp_path / "list.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    if expected is None:
        assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
        seen = next(line.strip() for line in outcome.out.splitlines() if "EER:" in line)
        assert "trials: 6 (2 target / 4 non-target)" in outcome.out
    else:
        seen = assert_error(outcome, expected)
    record("eval list", row_id, "eval.py --list_path X", seen, tmp_path)


def test_eval_list_large_labels_work(
    four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    """Evaluation labels only tell speakers apart: there is no class count to exceed."""
    items = [(path, 10**9 + label) for path, label in four]
    (tmp_path / "list.txt").write_text(list_text(items), encoding="utf-8")
    outcome = run_main("eval", ["--list_path", str(tmp_path / "list.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    assert outcome.code == 0 and "trials: 6 (2 target / 4 non-target)" in outcome.out, outcome.err[-2000:]
    seen = next(line.strip() for line in outcome.out.splitlines() if "EER:" in line)
    record("eval list", "labels far beyond the speaker count (1e9)", "eval.py --list_path X", seen, tmp_path)


def test_eval_list_missing_file_is_skipped_and_counted(
    four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "deleted.wav"
    (tmp_path / "list.txt").write_text(list_text([*four, (str(gone), 1)]), encoding="utf-8")
    outcome = run_main("eval", ["--list_path", str(tmp_path / "list.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    warning = [w for w in outcome.warnings() if str(gone) in w]
    assert warning == [f"warning: skipped list file: audio file not found: {gone}"]
    assert "embedded 4 files" in outcome.out and "skipped 1 unusable" in outcome.out
    record("eval list", "a listed path no longer exists", "eval.py --list_path X", warning[0], tmp_path)


# eval.py: trials files


def trials_text(four: list[tuple[str, int]], first: str | None = None) -> str:
    """Four trials; `first` replaces the whole first line's label field ("" drops it)."""
    (a1, _), (a2, _), (b1, _), (b2, _) = four
    rows = [["1", a1, a2], ["0", a1, b1], ["0", a2, b2], ["1", b1, b2]]
    if first is not None:
        rows[0] = ([first] if first else []) + rows[0][1:]
    return "".join(" ".join(row) + "\n" for row in rows)


TRIALS_ROWS = {
    "blank lines, CRLF and UTF-8 BOM": (
        lambda f: b"\xef\xbb\xbf\r\n" + trials_text(f).replace("\n", "\r\n\r\n").encode("utf-8"),
        None,
    ),
    "missing field": (
        lambda f: trials_text(f, "").encode(),
        ":1: expected '<1|0> <audio a> <audio b>', found 2 fields",
    ),
    "non-integer label": (lambda f: trials_text(f, "yes").encode(), ":1: label 'yes' is not 1"),
    "negative label": (lambda f: trials_text(f, "-1").encode(), ":1: label '-1' is not 1"),
    "label beyond 0/1": (
        lambda f: trials_text(f, "2").encode(),
        ":1: label '2' is not 1 (same speaker) or 0 (different)",
    ),
    "only blank lines": (lambda f: b"\r\n\n", "has no trials"),
}


@pytest.mark.parametrize("row_id", list(TRIALS_ROWS))
def test_eval_trials(
    row_id: str, four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    build, expected = TRIALS_ROWS[row_id]
    (tmp_path / "trials.txt").write_bytes(build(four))
    outcome = run_main("eval", ["--trials_path", str(tmp_path / "trials.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    if expected is None:
        assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
        assert "trials: 4 (2 target / 2 non-target)" in outcome.out
        seen = next(line.strip() for line in outcome.out.splitlines() if "EER:" in line)
    else:
        seen = assert_error(outcome, expected)
    record("eval trials", row_id, "eval.py --trials_path X", seen, tmp_path)


def test_eval_trials_missing_file_is_skipped_and_counted(
    four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "deleted.wav"
    text = trials_text(four) + f"0 {four[0][0]} {gone}\n"
    (tmp_path / "trials.txt").write_text(text, encoding="utf-8")
    outcome = run_main("eval", ["--trials_path", str(tmp_path / "trials.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    assert f"warning: skipped trial file: audio file not found: {gone}" in outcome.warnings()
    assert "warning: 1 trial(s) left out because a file failed" in outcome.warnings()
    assert "trials: 4 (2 target / 2 non-target)" in outcome.out
    record("eval trials", "a path that no longer exists", "eval.py --trials_path X",
           "warning: 1 trial(s) left out because a file failed", tmp_path)  # fmt: skip


def test_eval_subprocess_bad_trials(four: list[tuple[str, int]], tmp_path: Path) -> None:
    (tmp_path / "trials.txt").write_bytes(TRIALS_ROWS["label beyond 0/1"][0](four))
    outcome = run_cli(["eval.py", "--trials_path", str(tmp_path / "trials.txt"), "--device", "cpu"])
    assert_error(outcome, "label '2' is not 1 (same speaker) or 0 (different)")
    assert outcome.code == 1


def test_train_subprocess_bad_list(four: list[tuple[str, int]], tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_bytes(LIST_ROWS["negative label"][0](four))
    outcome = run_cli(["train.py", "--train_list_path", str(tmp_path / "list.txt"), "--save_model",
                       str(tmp_path / "m"), *TINY_TRAIN])  # fmt: skip
    assert_error(outcome, ":3: label -1 is negative")


def test_eval_list_same_file_under_two_labels_or_twice(
    four: list[tuple[str, int]], tmp_path: Path, reuse_embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    """One recording under two labels would be a different-speaker trial with itself; a repeat, a perfect
    same-speaker trial. The first is refused, the second scored once."""
    (tmp_path / "two.txt").write_text(list_text([*four, (four[0][0], 1 - four[0][1])]), encoding="utf-8")
    outcome = run_main("eval", ["--list_path", str(tmp_path / "two.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    seen = assert_error(outcome, f"{four[0][0]} appears under labels")
    assert "one recording cannot be two speakers" in seen
    record("eval list", "one file under two labels", "eval.py --list_path X", seen, tmp_path)
    (tmp_path / "twice.txt").write_text(list_text([*four, four[0], four[0]]), encoding="utf-8")
    outcome = run_main("eval", ["--list_path", str(tmp_path / "twice.txt"), "--model_path", str(MODEL),
                                "--device", "cpu", "--num_workers", "0"], capsys)  # fmt: skip
    assert outcome.code == 0 and "trials: 6 (2 target / 4 non-target)" in outcome.out, outcome.err[-2000:]
    warning = [w for w in outcome.warnings() if "repeated path" in w]
    assert warning == [f"warning: 2 repeated path(s) in {tmp_path / 'twice.txt'}: each file is scored once"]
    record("eval list", "one file listed three times", "eval.py --list_path X", warning[0], tmp_path)
