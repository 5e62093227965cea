"""One way to fail: user errors, Ctrl-C and OS errors are one line with the right exit status, in every script."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.errors import UserError, describe_os_error, run_cli

ROOT = Path(__file__).resolve().parents[1]


def exit_of(main, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    return stop.value.code, capsys.readouterr().err


def test_run_cli_maps_each_failure_to_one_line(capsys) -> None:
    from utils.audio import AudioError
    from utils.data import ListError

    for error in (AudioError("cannot decode x.wav"), ListError("list file not found: l.txt")):
        assert isinstance(error, UserError)
        code, err = exit_of(lambda error=error: (_ for _ in ()).throw(error), capsys)
        assert code == 1 and err == f"error: {error}\n"

    def interrupted() -> None:
        raise KeyboardInterrupt

    code, err = exit_of(interrupted, capsys)
    assert code == 130 and err.strip() == "interrupted"

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "runs/model/inference.pt")

    code, err = exit_of(disk_full, capsys)
    assert code == 1 and err == "error: No space left on device: runs/model/inference.pt\n"
    assert exit_of(lambda: 3, capsys)[0] == 3 and exit_of(lambda: None, capsys)[0] == 0
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_cli(lambda: 1 / 0)


def test_os_error_names_both_paths() -> None:
    exc = OSError(errno.EXDEV, "Invalid cross-device link", "a.tmp", None, "b")
    assert describe_os_error(exc) == "Invalid cross-device link: a.tmp -> b"


def test_library_code_never_exits() -> None:
    from utils.config import resolve_device
    from utils.errors import OptionError

    if not __import__("torch").cuda.is_available():
        with pytest.raises(OptionError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_ctrl_c_during_training_is_one_line_and_130(shared_data: Path, tmp_path: Path) -> None:
    speaker_dirs = sorted((shared_data / "librispeech" / "dev-clean").iterdir())[:3]
    lines = [f"{p}\t{label}" for label, folder in enumerate(speaker_dirs) for p in sorted(folder.rglob("*.mp3"))[:4]]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "train.py", "--train_list_path", str(tmp_path / "train.txt"), "--valid_speakers", "0",
         "--save_model", str(tmp_path / "m"), "--model", "resnet18", "--width", "8", "--embedding_dim", "32",
         "--batch_size", "4", "--num_workers", "1", "--device", "cpu", "--threads", "1", "--epoch_size", "100000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(12)  # mid-epoch, with a loader worker running
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.rstrip().endswith("interrupted")


@pytest.mark.parametrize("moment", [0.3, 1.5, 3.0])
def test_ctrl_c_in_every_script_is_one_line_and_130(moment: float, shared_data: Path, tmp_path: Path) -> None:
    """Ctrl-C while importing, loading the model or working: never a traceback, exit 130 (0 if it finished)."""
    clips = sorted((shared_data / "librispeech" / "dev-clean" / "1272").rglob("*.mp3"))[:4]
    (tmp_path / "list.txt").write_text("".join(f"{p}\t{k % 2}\n" for k, p in enumerate(clips)))
    scripts = {
        "infer_contrast.py": ["--audio_path1", str(clips[0]), "--audio_path2", str(clips[1]), "--device", "cpu"],
        "infer_recognition.py": ["--audio_db", str(tmp_path / "db"), "--register", "x", "--audio_path",
                                 *map(str, clips), "--device", "cpu"],
        "eval.py": ["--list_path", str(tmp_path / "list.txt"), "--device", "cpu", "--num_workers", "1"],
        "create_data.py": ["--dataset_dir", str(clips[0].parents[1]), "--dataset_format", "folder",
                           "--list_dir", str(tmp_path / "lists"), "--test_mode", "none", "--check_speech"],
        "train.py": ["--train_list_path", str(tmp_path / "list.txt"), "--valid_speakers", "0", "--save_model",
                     str(tmp_path / "m"), "--model", "resnet18", "--width", "8", "--embedding_dim", "32",
                     "--batch_size", "2", "--num_workers", "1", "--device", "cpu", "--threads", "1",
                     "--max_steps", "2"],
    }  # fmt: skip
    for script, args in scripts.items():
        proc = subprocess.Popen([sys.executable, script, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(moment)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, f"{script} at {moment} s:\n{err[-2000:]}"
        assert proc.returncode in (130, 0), (script, proc.returncode, err[-500:])
        if proc.returncode == 130:
            assert err.strip().splitlines()[-1].endswith("interrupted"), (script, err[-500:])


def assert_interrupted_after(script: str, printed: str) -> None:
    """`script` (which sends itself a Ctrl-C, then sleeps 30 s in main) printed `printed`, then was
    interrupted in one line with status 130, long before the sleep ended."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stdout == printed, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.strip() == "interrupted" and time.monotonic() - started < 20


def kill_leftovers(proc: subprocess.Popen) -> bool:
    """After `proc` (started with start_new_session=True) exited: True if anything of its session was still
    alive (a worker left behind), which is then killed."""
    time.sleep(0.3)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def test_ctrl_c_during_an_import_waits_for_the_import(tmp_path: Path) -> None:
    """A KeyboardInterrupt raised inside torch's import (Python called from C++ by pybind11) aborted the
    process (status -6, a C++ 'terminate called' message: CI, Ctrl-C 0.3 s into infer_recognition.py). A
    Ctrl-C during an import is held until the import is over, then interrupts as usual."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.3)\nprint('imported')\n"
    )
    script = (
        f"import sys, time\nsys.path.insert(0, {str(tmp_path)!r})\nfrom utils.errors import run_cli\n"
        "def main():\n    import slow_module\n    time.sleep(30)\n    print('not interrupted')\nrun_cli(main)\n"
    )
    assert_interrupted_after(script, "imported\n")


def test_ctrl_c_before_main_starts_is_held_for_main() -> None:
    """Scripts call hold_ctrl_c_until_main first: a Ctrl-C among their top-level imports (train.py's torch
    takes ~1 s) was a KeyboardInterrupt traceback, or an abort inside torch's import."""
    script = (
        "from utils.errors import hold_ctrl_c_until_main, run_cli\nhold_ctrl_c_until_main()\n"
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.3)\nprint('top level ran')\n"
        "def main():\n    time.sleep(30)\n    print('not interrupted')\nrun_cli(main)\n"
    )
    assert_interrupted_after(script, "top level ran\n")


def test_a_second_ctrl_c_while_the_first_winds_down_is_ignored() -> None:
    from utils.errors import _CtrlC

    handler = _CtrlC()
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, sys._getframe())
    assert handler(signal.SIGINT, sys._getframe()) is None  # cleanup of the first is not cut by a traceback
    handler.raised_at -= _CtrlC.REPEAT_SECONDS
    with pytest.raises(KeyboardInterrupt):  # a later press interrupts again
        handler(signal.SIGINT, sys._getframe())


@pytest.mark.parametrize("code", [0, 1])
def test_ctrl_c_while_the_interpreter_tears_down_keeps_the_exit_status(code: int) -> None:
    """A Ctrl-C after main() finished (torch takes ~0.5 s to free) once killed a successful run (status -2)."""
    script = (
        "import atexit, os, signal, time\n"
        "from utils.errors import UserError, run_cli\n"
        "def main():\n"
        "    atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))\n"
        f"    if {code}: raise UserError('bad input')\n"
        "    print('done')\n"
        "run_cli(main)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


def test_run_cli_in_process_leaves_ctrl_c_alone() -> None:
    """Ignoring SIGINT at the end is for a script's own process: ignored signals are inherited by children."""
    with pytest.raises(SystemExit):
        run_cli(lambda: 0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_run_cli_exit_status_from_what_main_returns() -> None:
    """An int is the exit status; a benchmark's figures (a dict) are success, not 'exit 1 printing the dict'."""
    for returned, status in ((None, 0), (3, 3), ({"rows": []}, 0)):
        with pytest.raises(SystemExit) as exc:
            run_cli(lambda returned=returned: returned)
        assert exc.value.code == status


def test_an_error_raised_by_ctrl_c_is_the_interrupt(capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C inside a C extension's import surfaces as 'ImportError: initialization failed' (onnxruntime):
    still one line and 130, not a traceback."""

    def main() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("initialization failed")  # noqa: B904 - as pybind11 does

    with pytest.raises(SystemExit) as exc:
        run_cli(main)
    assert exc.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"
    with pytest.raises(ImportError):  # without a Ctrl-C behind it, an ImportError is a bug and keeps its traceback
        run_cli(lambda: __import__("no_such_module_here"))


UNWRITABLE = "/proc/voiceprint-test"  # nothing can be created in /proc, not even by root


@pytest.mark.parametrize(
    "command, expected",
    [
        (["infer_contrast.py", "--device", "banana"], "--device 'banana' is not one of auto, cpu, cuda, cuda:N"),
        (["infer_contrast.py", "--device", "meta"], "is not one of auto, cpu"),
        (["infer_contrast.py", "--threshold", "5"], "finite cosine similarity, between -1 and 1: got 5.0"),
        (["infer_contrast.py", "--model_path", "audio/a1.wav"], "not a PyTorch weights file"),
        (["infer_recognition.py", "--register", "Unknown-1", "--audio_path", "audio/a1.wav"], "is reserved"),
        (["infer_recognition.py", "--register", "no speech", "--audio_path", "audio/a1.wav"], "is reserved"),
        (["infer_recognition.py", "--register", "carol", "--audio_path", "audio/c1.wav", "--json_path",
          f"{UNWRITABLE}/r.json"], "--json_path"),
        (["infer_diarization.py", "--audio_path", "audio/a1.wav", "--rttm_path", f"{UNWRITABLE}/d.rttm"],
         "cannot write in /proc"),
        (["eval.py", "--plot_dir", f"{UNWRITABLE}/plots"], "cannot write in /proc"),
        (["eval.py", "--fit_calibration", "models/voiceprint_resnet34.pt"], "writes a copy of the model"),
        (["create_data.py", "--dataset_dir", "audio", "--list_dir", UNWRITABLE], "cannot write in /proc"),
        (["create_data.py", "--dataset_dir", "audio", "--min_duration", "nan"], "--min_duration must be"),
    ],
)  # fmt: skip
def test_bad_options_fail_in_one_line_before_any_work(command: list[str], expected: str, tmp_path: Path) -> None:
    # found by a review run as a hostile user: each of these once gave a traceback, a meaningless reason,
    # or failed only after the work was done (a registration committed, then exit 1 on its --json_path)
    if not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc for a folder nothing can be written in")
    library = tmp_path / "db"
    extra = ["--audio_db", str(library)] if command[0] == "infer_recognition.py" else []
    result = subprocess.run([sys.executable, *command, *extra], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert expected in lines[0], lines[0]
    assert not library.exists()  # nothing registered


def test_server_on_a_port_in_use_fails_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "infer_server.py", "--port", str(port), "--audio_db",
                                 str(tmp_path / "db")], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1 and result.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use: another server is running there "
        "(choose one with --port)\n"
    ), result.stderr[-2000:]


WORKER_HANDLER_SCRIPT = """
import signal, sys, torch
from utils.data import start_batches
from utils.errors import run_cli

class Handlers(torch.utils.data.Dataset):
    def __len__(self):
        return 2
    def __getitem__(self, i):
        handler = signal.getsignal(signal.SIGINT)
        return f"{getattr(handler, '__name__', type(handler).__name__)} {getattr(handler, 'depth', '-')}"

def main():
    loader = torch.utils.data.DataLoader(Handlers(), batch_size=None, num_workers=2)
    print(sorted(set(start_batches(loader))))

if sys.argv[1] == "script":
    run_cli(main)
else:
    main()
"""


@pytest.mark.parametrize("mode, expected", [("script", "['_CtrlC 0']"), ("library", "['default_int_handler -']")])
def test_workers_forked_while_ctrl_c_is_held_do_not_keep_the_hold(mode: str, expected: str) -> None:
    """DataLoader and pool workers are forked inside a hold: they kept its handler for life, so Ctrl-C could
    not stop them (torch waited 5 s for each busy worker), and with Ctrl-C ignored a pool worker died."""
    proc = subprocess.run([sys.executable, "-c", WORKER_HANDLER_SCRIPT, mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == expected, (proc.stdout, proc.stderr[-1000:])


@pytest.mark.parametrize("where", ["main", "top level"])
def test_ctrl_c_in_a_hung_import_still_interrupts(where: str, tmp_path: Path) -> None:
    """A press held during an import is raised anyway after a few seconds: an import that never ends
    (a dead network file system) must not make Ctrl-C useless. Before main() it printed a traceback."""
    (tmp_path / "hung_module.py").write_text("import time\nwhile True:\n    time.sleep(0.1)\n")
    script = (
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
        "from utils.errors import hold_ctrl_c_until_main, run_cli\nhold_ctrl_c_until_main()\n"
        + (
            "def main():\n    import hung_module\n"
            if where == "main"
            else "import hung_module\ndef main():\n    pass\n"
        )
        + "run_cli(main)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    try:
        err = proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("Ctrl-C did not stop a script stuck in an import")
    assert proc.returncode == 130 and err.strip() == "interrupted", (proc.returncode, err[-1000:])


def test_deferred_interrupt_keeps_an_ignored_ctrl_c_ignored_and_raises_once_when_nested() -> None:
    from utils.fileio import deferred_interrupt

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, previous)  # nothing raised: ignored stays ignored
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            with deferred_interrupt():  # an atomic write inside the library's commit
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
            steps.append("after the inner block")  # the outer block's work is not cut short
    assert steps == ["after the inner block"]
    assert signal.getsignal(signal.SIGINT) is previous


def test_deferred_interrupt_hands_a_held_press_to_an_applications_own_handler() -> None:
    from utils.fileio import deferred_interrupt

    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert pressed == []  # held
    finally:
        signal.signal(signal.SIGINT, previous)
    assert pressed == [signal.SIGINT]  # then delivered to it, not turned into a KeyboardInterrupt
