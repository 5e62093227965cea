"""train.py end to end, as a user runs it: real speech, subprocesses, kills and resumes, torchrun."""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from utils.checkpoint import load_inference_model, load_torch_file

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "resnet18", "--width", "8", "--embedding_dim", "32", "--crop_seconds", "1.0", "--batch_size", "4",
        "--num_workers", "0", "--device", "cpu", "--threads", "1"]  # fmt: skip


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def lists(shared_data: Path, tmp_path_factory) -> Path:
    """create_data.py over a small folder of real dev-clean speech: 4 train speakers, 2 test speakers."""
    corpus = tmp_path_factory.mktemp("corpus")
    for speaker in ("84", "174", "251", "422", "777", "1272"):
        files = sorted((shared_data / "librispeech" / "dev-clean" / speaker).rglob("*.mp3"))[:4]
        (corpus / speaker).mkdir()
        for f in files:
            (corpus / speaker / f.name).symlink_to(f)
    out = tmp_path_factory.mktemp("lists")
    result = run(["create_data.py", "--dataset_dir", str(corpus), "--dataset_format", "folder", "--list_dir", str(out),
                  "--test_speaker_ids", "777", "1272", "--num_workers", "1"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def test_create_data_then_train_then_inference_model(lists: Path, tmp_path: Path):
    save = tmp_path / "model"
    result = run(["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_list_path",
                  str(lists / "test_list.txt"), "--save_model", str(save), "--epoch_size", "8", "--num_epoch", "2",
                  "--eval_max_seconds", "4", *TINY])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "validation EER" in result.stdout and "done: 4 steps" in result.stdout
    model, info = load_inference_model(save / "inference.pt")
    assert info["model_config"]["name"] == "resnet18"
    assert info["feature_config"]["feature"] == "fbank"
    points = info["operating_points"]
    assert -1.0 <= points["verification"] <= 1.0 and points["measured_on"] == str(lists / "test_list.txt")
    # the 1:N operating point (threshold at 1% false accepts on the validation list) travels with the model
    assert points["verification"] <= points["identification"] <= 1.0
    assert [row.split(",")[0] for row in (save / "train_log.csv").read_text().splitlines()] == ["epoch", "0", "1"]
    assert (save / "epoch_2" / "checkpoint.pt").is_file() and (save / "train_log.csv").is_file()
    assert (save / "train_args.json").is_file()
    # 16 speakers' worth of classes: 4 speakers x 3 speed copies
    state = load_torch_file(save / "epoch_2" / "checkpoint.pt")
    assert state["head"]["weight"].shape[0] == 12


def test_validation_split_averaged_model_and_a_teacher(lists: Path, tmp_path: Path):
    """Selection never sees the test list: 2 training speakers are held out, the shipped model is the mean of the
    last 2 epochs, thresholds come from the held-out speakers; a model file teaches the student."""
    save = tmp_path / "model"
    result = run(["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "2",
                  "--average_last", "2", "--save_model", str(save), "--epoch_size", "8", "--num_epoch", "3",
                  "--eval_max_seconds", "4", "--teacher", "models/voiceprint_resnet34.pt", *TINY])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 speakers held out of the training list" in result.stdout
    assert "distilling from models/voiceprint_resnet34.pt" in result.stdout
    assert "validation EER (average of epochs 2,3)" in result.stdout
    _, info = load_inference_model(save / "inference.pt")
    assert info["meta"]["averaged_epochs"] == [2, 3] and info["meta"]["teacher"] == "models/voiceprint_resnet34.pt"
    assert 0.0 <= info["meta"]["valid_eer"] <= 1.0 and -1.0 <= info["operating_points"]["verification"] <= 1.0
    assert info["operating_points"]["measured_on"] == "2 speakers held out of train_list"
    # the head only has the 2 remaining training speakers (x 3 speed copies)
    assert load_torch_file(save / "epoch_3" / "checkpoint.pt")["head"]["weight"].shape[0] == 6
    shipped = load_torch_file(save / "inference.pt")["state_dict"]
    two, three = (load_torch_file(save / f"epoch_{n}" / "checkpoint.pt")["model"] for n in (2, 3))
    for key, value in shipped.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (two[key] + three[key]) / 2, atol=1e-5, rtol=1e-4)


def test_a_second_run_never_mixes_with_the_first(lists: Path, tmp_path: Path):
    save = tmp_path / "model"
    common = ["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "0",
              "--max_steps", "1", "--epoch_size", "8", "--save_model", str(save), *TINY]  # fmt: skip
    assert run(common).returncode == 0
    (save / "notes.txt").write_text("mine")
    before = (save / "inference.pt").read_bytes()
    second = run(common)
    assert second.returncode == 1 and "holds another training run" in second.stderr
    assert "--resume" in second.stderr and "--overwrite" in second.stderr and "Traceback" not in second.stderr
    assert (save / "inference.pt").read_bytes() == before
    third = run([*common, "--overwrite"])
    assert third.returncode == 0, third.stderr[-2000:]
    assert [r.split(",")[0] for r in (save / "train_log.csv").read_text().splitlines()] == ["epoch", "0"]
    assert (save / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    assert "python eval.py --model_path" in third.stdout  # what to do next, with this model


def test_time_budget_includes_the_final_validation(lists: Path, tmp_path: Path):
    budget_minutes = 0.4
    started = time.time()
    result = run(["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "2",
                  "--max_minutes", str(budget_minutes), "--epoch_size", "4000", "--save_model", str(tmp_path / "m"),
                  *TINY])  # fmt: skip
    elapsed = time.time() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert "validation EER" in result.stdout
    # the run (validation and save included) ends within its budget, plus start-up (imports, loading audio)
    assert elapsed < budget_minutes * 60 + 25, f"{elapsed:.0f} s for a {budget_minutes * 60:.0f} s budget"


def test_killed_run_resumes_to_the_same_result(lists: Path, tmp_path: Path):
    """SIGKILL at random moments, then --resume: same step count and the same weights as an unbroken run."""
    common = ["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "0",
              "--epoch_size", "24", "--num_epoch", "2", "--save_every_steps", "1", "--keep_checkpoints", "1", *TINY]  # fmt: skip
    started = time.monotonic()
    reference = run([*common, "--save_model", str(tmp_path / "reference")])
    whole_run = time.monotonic() - started  # kill moments scale with it: a fast idle machine must still be hit
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert "done: 12 steps" in reference.stdout

    save = tmp_path / "killed"
    rng = random.Random(1)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, *common, "--save_model", str(save), "--resume"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(0.4, 0.8) * whole_run)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        # whatever moment the kill hit, every checkpoint on disk is complete and loadable (a kill during a
        # write leaves only the writer's temp file, which the next run removes)
        for path in save.rglob("checkpoint.pt"):
            load_torch_file(path)
    assert kills >= 1
    (save / "last").mkdir(exist_ok=True)
    (save / "last" / ".checkpoint.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves
    final = run([*common, "--save_model", str(save), "--resume"])
    assert final.returncode == 0, final.stderr[-2000:]
    assert "done: 12 steps" in final.stdout
    assert not list(save.rglob("*.tmp"))
    a = load_torch_file(tmp_path / "reference" / "epoch_2" / "checkpoint.pt")["model"]
    b = load_torch_file(save / "epoch_2" / "checkpoint.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3, msg=f"{key} differs after resume")


def torchrun(lists: Path, save: Path, *extra: str) -> subprocess.CompletedProcess:
    return run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(29500 + os.getpid() % 500),
                "train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "0",
                "--save_model", str(save), *TINY, *extra])  # fmt: skip


def test_torchrun_two_processes(lists: Path, tmp_path: Path):
    result = torchrun(lists, tmp_path / "ddp", "--max_steps", "5", "--epoch_size", "64")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout and "done: 5 steps" in result.stdout
    assert (tmp_path / "ddp" / "inference.pt").is_file()


def test_torchrun_stops_every_rank_at_the_time_budget(lists: Path, tmp_path: Path):
    # the budget clock is all-reduced: both ranks stop at the same step (a mismatch would hang the collective)
    result = torchrun(lists, tmp_path / "ddp", "--max_minutes", "0.01", "--epoch_size", "4000", "--warmup_epochs", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    steps = int(re.search(r"done: (\d+) steps", result.stdout).group(1))
    assert 1 <= steps < 500


def test_bad_inputs_fail_in_one_line(tmp_path: Path):
    missing = run(["train.py", "--train_list_path", str(tmp_path / "nope.txt"), "--save_model", str(tmp_path)])
    assert missing.returncode == 1
    assert "error: list file not found" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("a.wav\tx\n")
    result = run(["train.py", "--train_list_path", str(bad), "--save_model", str(tmp_path)])
    assert result.returncode == 1 and "is not an integer" in result.stderr and "Traceback" not in result.stderr
    config = tmp_path / "c.yaml"
    config.write_text("batch_sise: 3\n")
    result = run(["train.py", "--config", str(config)])
    assert result.returncode == 2 and "unknown key(s)" in result.stderr
    for option, value in (("--dropout", "1.5"), ("--batch_size", "1"), ("--seed", "-1"), ("--crop_seconds", "1e9"),
                          ("--margin", "nan")):  # fmt: skip
        result = run(["train.py", option, value, "--save_model", str(tmp_path / "never")])
        assert result.returncode == 1 and result.stderr.startswith(f"error: {option} must be from "), result.stderr
    # YAML values are checked as the command line checks them (they once reached the code: tracebacks)
    for text, expected in (("model: resnet99", "model in"), ("batch_size: 4.9", "invalid value 4.9"),
                           ("device: [cpu]", "must be one value"), ("overwrite: 3", "must be true or false")):  # fmt: skip
        config.write_text(text + "\n")
        result = run(["train.py", "--config", str(config), "--save_model", str(tmp_path / "never")])
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and "Traceback" not in result.stderr and expected in last, result.stderr


def test_pretrained_model_initialises_the_backbone(lists: Path, tmp_path: Path):
    base = ["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "0", "--max_steps", "1",
            "--epoch_size", "8", *TINY]  # fmt: skip
    first = run([*base, "--save_model", str(tmp_path / "first")])
    assert first.returncode == 0, first.stderr[-2000:]
    # a different embedding size: the last layers cannot be copied and must be reported as skipped
    second = run([*base, "--save_model", str(tmp_path / "second"), "--pretrained_model",
                  str(tmp_path / "first" / "inference.pt"), "--embedding_dim", "16"])  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    line = next(x for x in second.stdout.splitlines() if x.startswith("pretrained: loaded"))
    assert "fc.weight" in line and "bn_out.weight" in line
    loaded = int(line.split("loaded ")[1].split(" ")[0])
    assert loaded > 50


def test_mid_epoch_checkpoints_follow_save_every_steps(lists: Path, tmp_path: Path, monkeypatch) -> None:
    # count the real saves (the spy passes every call through to the atomic writer)
    import train

    saved: list[tuple[str, int]] = []
    real_save = train.atomic_torch_save
    monkeypatch.setattr(
        train, "atomic_torch_save", lambda obj, path: saved.append((Path(path).parent.name, obj["global_step"])) or
        real_save(obj, path),
    )  # fmt: skip
    train.main(["--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "0", "--save_model",
                str(tmp_path / "m"), "--epoch_size", "400", "--max_steps", "7", "--save_every_steps", "3",
                "--warmup_epochs", "0", "--max_minutes", "10", *TINY])  # fmt: skip
    assert [step for folder, step in saved if folder == "last"] == [3, 6, 7]


def test_resumed_epoch_has_one_log_row_with_the_whole_epoch(lists: Path, tmp_path: Path) -> None:
    common = ["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "0",
              "--epoch_size", "24", "--num_epoch", "1", "--noise_prob", "0", *TINY]  # fmt: skip
    unbroken = run([*common, "--save_model", str(tmp_path / "a")])
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    first = run([*common, "--save_model", str(tmp_path / "b"), "--max_steps", "2"])
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run([*common, "--save_model", str(tmp_path / "b"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "done: 6 steps" in resumed.stdout

    def rows(folder: str) -> list[dict]:
        with open(tmp_path / folder / "train_log.csv", newline="") as f:
            return list(csv.DictReader(f))

    a, b = rows("a"), rows("b")
    assert [r["epoch"] for r in b] == ["0"]  # the partial row of the stopped run was replaced
    assert float(b[0]["loss"]) == pytest.approx(float(a[0]["loss"]), rel=1e-3)
    assert float(b[0]["accuracy"]) == pytest.approx(float(a[0]["accuracy"]), abs=1e-6)


def test_resume_with_only_damaged_checkpoints_changes_nothing(lists: Path, tmp_path: Path) -> None:
    # it once warned, started from scratch and wrote over the run's log and model
    common = ["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "0",
              "--epoch_size", "24", "--save_model", str(tmp_path / "run"), *TINY]  # fmt: skip
    first = run([*common, "--max_steps", "2"])
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoints = sorted((tmp_path / "run").rglob("checkpoint.pt"))
    assert checkpoints
    for path in checkpoints:
        path.write_bytes(path.read_bytes()[:1000])
    kept = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    resumed = run([*common, "--max_steps", "4", "--resume"])
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr, resumed.stderr[-2000:]
    assert resumed.stderr.strip().splitlines()[-1].startswith("error: --resume: no checkpoint in")
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == kept


def test_validation_reserve_ignores_the_first_calls_one_time_cost() -> None:
    """The reserve for the final validation is timed after a warm-up call: on a GPU the first call loads
    kernels (seconds), and timing it once reserved most of an 8-minute budget, ending runs after 150 steps."""
    import numpy as np
    from torch import nn

    import train

    class SlowFirstCall(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 1:
                time.sleep(2.0)  # one-time start-up cost, as CUDA kernel loading
            return feats.mean(dim=-1)

    wavs = [np.zeros(16000 * 5, dtype=np.float32)] * 4  # 20 s of audio to validate
    reserve = train.estimate_eval_seconds(SlowFirstCall(), nn.Identity(), wavs, torch.device("cpu"))
    assert reserve < 1.0  # timed on the first call it would be 1.5 x 2 s x 4 = 12 s


def test_valid_share_spaces_the_validations(lists: Path, tmp_path: Path) -> None:
    """Tiny epochs validate only as often as --valid_share allows; the last epoch is always validated."""
    save = tmp_path / "m"
    result = run(["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "2",
                  "--valid_share", "0.01", "--epoch_size", "8", "--num_epoch", "4", "--save_model", str(save),
                  *TINY])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with open(save / "train_log.csv", newline="") as f:
        eers = [row["eer"] for row in csv.DictReader(f)]
    assert len(eers) == 4 and eers[:3] == ["", "", ""] and 0.0 <= float(eers[3]) <= 1.0
    assert result.stdout.count("validation EER (") == 1 and "--valid_share" in result.stdout
    assert load_inference_model(save / "inference.pt")[1]["meta"]["averaged_epochs"] == [2, 3, 4]


def test_a_time_budget_without_num_epoch_trains_until_the_budget(lists: Path, tmp_path: Path) -> None:
    """--max_minutes without --num_epoch: the budget, not the default 30 epochs, ends the run."""
    save = tmp_path / "m"
    result = run(["train.py", "--train_list_path", str(lists / "train_list.txt"), "--valid_speakers", "0",
                  "--max_minutes", "0.5", "--epoch_size", "4", "--save_every_steps", "0", "--save_model", str(save),
                  *TINY])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    epochs = len((save / "train_log.csv").read_text().splitlines()) - 1
    assert epochs > 30, f"{epochs} one-step epochs in 30 s"


def test_thread_tuner_keeps_the_faster_thread_count() -> None:
    """Fed step times, the tuner tries half the threads, keeps them when faster, and goes back when not."""
    import train

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        tuner = train.ThreadTuner(recheck_seconds=0.0, trial_steps=3)
        messages = [tuner.record(1.0) for _ in range(4)]  # 1 step skipped, 3 timed at 2 threads
        assert messages == [None] * 4 and torch.get_num_threads() == 1  # now trying 1 thread
        messages = [tuner.record(0.5) for _ in range(4)]  # 1 skipped, 3 timed at 1 thread: faster
        assert messages[-1] == "threads 2 -> 1: 0.50 s per step instead of 1.00 s" and tuner.threads == 1
        [tuner.record(0.5) for _ in range(3)]  # baseline at 1 thread, then a trial of 2 threads
        assert torch.get_num_threads() == 2
        messages = [tuner.record(0.9) for _ in range(4)]  # slower: back to 1 thread, nothing printed
        assert messages == [None] * 4 and torch.get_num_threads() == 1 and tuner.threads == 1
        # a trial that changed nothing puts the next one off twice as long
        torch.set_num_threads(2)
        slow = train.ThreadTuner(recheck_seconds=60.0, trial_steps=1)
        [slow.record(1.0) for _ in range(2)]  # 1 skipped, 1 timed at 2 threads; then a trial of 1 thread
        [slow.record(2.0) for _ in range(2)]  # slower: back to 2, next trial in 60 s, the one after in 120 s
        assert slow.threads == 2 and torch.get_num_threads() == 2
        assert slow.interval == 120.0 and 55 < slow.next_check - time.time() <= 60
    finally:
        torch.set_num_threads(before)
