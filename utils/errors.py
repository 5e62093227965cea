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
import math
import os
import signal
import sys
import threading
import time
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
    if _is_script(main) and not any(
        not thread.daemon for thread in threading.enumerate() if thread is not threading.main_thread()
    ):  # a non-daemon thread still running keeps Ctrl-C, the only way to stop a hung one
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(code)


def _is_script(main: Callable) -> bool:
    """run_cli called for a script's own main() in its main thread (not a test calling it in-process)."""
    return getattr(main, "__module__", None) == "__main__" and threading.current_thread() is threading.main_thread()


def _importing(frame: object) -> bool:
    """True when a module is being imported somewhere below `frame` (Python's own import machinery runs)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class _CtrlC:
    """A script's SIGINT handler: Ctrl-C raises KeyboardInterrupt as usual, except while a module is being
    imported, or before run_cli has started main() (hold_ctrl_c_until_main). torch's import runs Python
    code called from C++ (pybind11); a KeyboardInterrupt raised there cannot cross back and aborts the
    process (std::terminate, status -6, seen in CI at 0.37 s into a run); one raised among a script's
    top-level imports is a traceback. So such a keypress is held and re-sent every 50 ms until it can
    interrupt (torch's import takes ~1 s). A second press within 0.5 s of the one that raised is ignored:
    the first is already winding the script down, and a second KeyboardInterrupt in that cleanup would
    print a traceback."""

    RESEND_SECONDS = 0.05
    REPEAT_SECONDS = 0.5

    def __init__(self, armed: bool = True) -> None:
        self.armed = armed  # main() is running under run_cli: an interrupt now is reported in one line
        self.held = False
        self.raised_at = -math.inf

    def __call__(self, signum: int, frame: object) -> None:
        if time.monotonic() - self.raised_at < self.REPEAT_SECONDS:
            return
        if self.armed and not _importing(frame):
            self._raise()
        if not self.held:
            self.held = True
            threading.Thread(target=self._resend, name="ctrl-c-resend", daemon=True).start()

    def arm(self) -> None:
        """Called by run_cli inside its try: a press held since the script started interrupts now."""
        self.armed = True
        if self.held:
            self._raise()

    def _raise(self) -> NoReturn:
        self.held = False
        self.raised_at = time.monotonic()
        raise KeyboardInterrupt

    def _resend(self) -> None:
        while self.held:
            time.sleep(self.RESEND_SECONDS)
            if self.held:
                os.kill(os.getpid(), signal.SIGINT)


def hold_ctrl_c_until_main() -> None:
    """A script's first statement, before its heavy imports (torch, numpy, fastapi: up to ~1 s): a Ctrl-C
    meanwhile is held, and interrupts in one line with status 130 once run_cli starts main(). Called only
    under `if __name__ == "__main__":`, so importing the script (tests) changes nothing."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):  # left alone when Ctrl-C is ignored (nohup, a background job)
        signal.signal(signal.SIGINT, _CtrlC(armed=False))


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
    handler = signal.getsignal(signal.SIGINT)
    if _is_script(main) and handler is signal.default_int_handler:
        handler = _CtrlC()  # left alone when Ctrl-C is ignored (nohup, a background job)
        signal.signal(signal.SIGINT, handler)
    try:
        if _is_script(main) and isinstance(handler, _CtrlC):
            handler.arm()
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
