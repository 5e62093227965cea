"""Bad input: options and output paths. Rows, expectations and speed rules: helpers.py."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.bad_inputs.helpers import (
    MODEL,
    TINY_TRAIN,
    assert_error,
    list_text,
    record,
    run_main,
)

# options and output paths: rejected before any work, never a traceback

OPTION_ROWS = {
    "batch size 0": (["--batch_size", "0"], "--batch_size must be greater than 0"),
    "crop of 0 s": (["--crop_seconds", "0"], "--crop_seconds must be greater than 0"),
    "zero epochs": (["--num_epoch", "0"], "--num_epoch must be greater than 0"),
    "NaN learning rate": (["--learning_rate", "nan"], "--learning_rate must be a finite number"),
    "negative workers": (["--num_workers", "-1"], "--num_workers must be 0 or more"),
}


@pytest.mark.parametrize("row_id", list(OPTION_ROWS))
def test_train_bad_options(
    row_id: str, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, expected = OPTION_ROWS[row_id]
    (tmp_path / "list.txt").write_text(list_text(four))
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model", str(tmp_path / "m"),
                                 *TINY_TRAIN, *extra], capsys)  # fmt: skip
    record("options", row_id, f"train.py {' '.join(extra)}", assert_error(outcome, expected), tmp_path)
    assert not (tmp_path / "m").exists()


def test_train_save_model_is_a_file(four: list[tuple[str, int]], tmp_path: Path, capsys) -> None:
    (tmp_path / "list.txt").write_text(list_text(four))
    (tmp_path / "notes.txt").write_text("keep me\n")
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"),
                                 "--save_model", str(tmp_path / "notes.txt"), *TINY_TRAIN], capsys)  # fmt: skip
    line = assert_error(outcome, "is a file, not a folder")
    record("output paths", "--save_model is an existing file", "train.py --save_model notes.txt", line, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me\n"


def test_train_resume_with_another_list(
    trained: Path, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save = tmp_path / "model"
    shutil.copytree(trained, save)
    before = {p: p.read_bytes() for p in save.rglob("*") if p.is_file()}
    more_speakers = [*four, (four[0][0], 2), (four[2][0], 3)]  # 4 classes where the checkpoint has 2
    (tmp_path / "list.txt").write_text(list_text(more_speakers))
    outcome = run_main("train", ["--train_list_path", str(tmp_path / "list.txt"), "--save_model", str(save),
                                 *TINY_TRAIN, "--resume", "--max_steps", "3"], capsys)  # fmt: skip
    line = assert_error(outcome, "another head or number of classes")
    record("models", "--resume with a list of other speakers", "train.py --resume --train_list_path X", line, tmp_path)
    assert {p: p.read_bytes() for p in save.rglob("*") if p.is_file()} == before, "a refused resume wrote files"


OUTPUT_ROWS = ["infer_contrast.py --json_path", "eval.py --json_path", "eval.py --plot_dir",
               "infer_recognition.py --json_path", "export_onnx.py --output"]  # fmt: skip


@pytest.mark.parametrize("row_id", OUTPUT_ROWS)
def test_output_path_in_the_way(
    row_id: str, good: Path, four: list[tuple[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    reuse_embedder: None,
) -> None:  # fmt: skip
    folder = tmp_path / "out"
    folder.mkdir()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    (tmp_path / "list.txt").write_text(list_text(four))
    script, flag = row_id.replace(".py", "").split(" ")
    if flag == "--plot_dir":
        argv, expected, what = ["--list_path", str(tmp_path / "list.txt"), flag, str(a_file)], "is a file", "a file"
    else:
        base = {
            "infer_contrast": ["--audio_path1", str(good), "--audio_path2", str(good)],
            "eval": ["--list_path", str(tmp_path / "list.txt")],
            "infer_recognition": ["--audio_db", str(tmp_path / "db"), "--list"],
            "export_onnx": ["--model_path", str(MODEL)],
        }[script]
        argv, expected, what = [*base, flag, str(folder) + os.sep], "is a folder: give a file name", "a folder"
    started = time.time()
    outcome = run_main(script, argv, capsys)
    line = assert_error(outcome, expected)
    assert time.time() - started < 30, "the output path must be checked before the work"
    record("output paths", f"{flag} is {what}", f"{script}.py {flag} X", line, tmp_path)
    assert a_file.read_text() == "keep me\n" and not any(folder.iterdir())
