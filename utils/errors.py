"""Errors a user can act on, and the one way every script reports them.

`UserError` is the base of every error about the user's input or machine (bad audio, a malformed
list, an unusable model file, a library problem, no microphone, a wrong option): its message is
one line and says what to do. Library code raises them and never exits the process; scripts run
their `main` through `run_cli`, which turns them into `error: ...` and exit status 1, Ctrl-C into
one line and 130, and an OSError (a full disk, a read-only folder, a dangling link) into one line
that names the path. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


class UserError(Exception):
    """A problem with the user's input or machine; the message is one line for the user."""


class OptionError(UserError, ValueError):
    """An option that cannot work here (e.g. --device cuda without a GPU)."""


def describe_os_error(exc: OSError) -> str:
    """'No space left on device: runs/model/inference.pt' rather than '[Errno 28] ...'."""
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{reason}: {' -> '.join(paths)}" if paths else str(reason)


def _finish(code: int, main: Callable) -> NoReturn:
    """Leave with `code`. The work is done (or its error printed), so a Ctrl-C while the interpreter tears
    down (freeing torch takes ~0.5 s) is ignored: Python restores the default SIGINT action during
    finalisation, and a signal then would kill the process (status -2) after a finished, successful run.
    Only for a script's own main(): a caller in the same process (a test) keeps its Ctrl-C, and an ignored
    SIGINT would be inherited by every process it starts."""
    import signal

    is_script = getattr(main, "__module__", None) == "__main__"
    if (
        is_script
        and threading.current_thread() is threading.main_thread()
        and not any(not thread.daemon for thread in threading.enumerate() if thread is not threading.main_thread())
    ):  # a non-daemon thread still running keeps Ctrl-C, the only way to stop a hung one
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(code)


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    """True when `exc` was raised while a Ctrl-C was being handled: a C extension interrupted mid-import
    turns the KeyboardInterrupt into e.g. "ImportError: initialization failed" (onnxruntime, pybind11)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _interrupted(main: Callable) -> NoReturn:
    print("\ninterrupted", file=sys.stderr)
    # helper threads (e.g. the data loader's file-descriptor sharer) may fail while the process winds down:
    # after Ctrl-C their tracebacks are noise, the one line above is the message
    threading.excepthook = lambda args: None
    _finish(130, main)


def run_cli(main: Callable[[], object]) -> NoReturn:
    """Run a script's main() the way every script ends: one line per failure, the right exit status.
    main() may return an exit status; anything else it returns (a benchmark's figures) means success."""
    try:
        code = main()
    except KeyboardInterrupt:
        _interrupted(main)
    except Exception as exc:
        if _caused_by_ctrl_c(exc):
            _interrupted(main)
        if isinstance(exc, UserError):
            print(f"error: {exc}", file=sys.stderr)
            _finish(1, main)
        if isinstance(exc, OSError):
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            _finish(1, main)
        raise  # anything else is a bug: keep its traceback
    _finish(code if isinstance(code, int) and not isinstance(code, bool) else 0, main)
