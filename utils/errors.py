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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    imported, inside a deferred_interrupt block, or before run_cli has started main() (hold_ctrl_c_until_main).
    torch's import runs Python code called from C++ (pybind11); a KeyboardInterrupt raised there cannot
    cross back and aborts the process (std::terminate, status -6, seen in CI at 0.37 s into a run); one
    raised among a script's top-level imports is a traceback. So such a keypress is held and re-sent every
    50 ms until it can interrupt (torch's import takes ~1 s). After 3 s it interrupts anyway, so that a hung
    import cannot make Ctrl-C useless (before main() starts, with nothing to clean up, by exiting at once
    with "interrupted" and 130). A block's end raises a press held in it at once. A second press within
    0.5 s of the one that raised is ignored: the first is already winding the script down, and a second
    KeyboardInterrupt in that cleanup would print a traceback."""

    RESEND_SECONDS = 0.05
    REPEAT_SECONDS = 0.5
    HOLD_LIMIT_SECONDS = 3.0

    def __init__(self, armed: bool = True) -> None:
        self.armed = armed  # main() is running under run_cli: an interrupt now is reported in one line
        self.depth = 0  # deferred_interrupt blocks open
        self.held_since: float | None = None  # when the press now held arrived
        self.raised_at = -math.inf
        self.resending = False

    def __call__(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if now - self.raised_at < self.REPEAT_SECONDS:
            return
        if self.held_since is None:
            self.held_since = now
        if self.depth:
            return  # the block's end raises it
        if self.armed and (not _importing(frame) or now - self.held_since >= self.HOLD_LIMIT_SECONDS):
            self._raise()
        if now - self.held_since >= self.HOLD_LIMIT_SECONDS:  # a hung top-level import: nothing to clean up yet
            _say_interrupted()
            os._exit(130)
        self._start_resending()

    def arm(self) -> None:
        """Called by run_cli inside its try: a press held since the script started interrupts now."""
        self.armed = True
        if self.held_since is not None and not self.depth:
            self._raise()

    def hold(self) -> None:
        self.depth += 1

    def release(self, interrupt: bool) -> None:
        """End of a deferred_interrupt block: a press held in it interrupts now (or, inside an import, as soon
        as the import is over). When the block failed, its error is what the user sees: the press is dropped."""
        self.depth = max(self.depth - 1, 0)  # 0 already in a child forked inside the block
        if self.depth or self.held_since is None:
            return
        if not interrupt:
            self.held_since = None
            return
        if self.armed and not _importing(sys._getframe(1)):
            self._raise()
        self._start_resending()

    def reset_after_fork(self) -> None:
        """In a process forked inside a hold (a pool or loader worker): no hold, no press, no resend thread."""
        self.depth, self.held_since, self.resending = 0, None, False

    def _raise(self) -> NoReturn:
        self.held_since = None
        self.raised_at = time.monotonic()
        raise KeyboardInterrupt

    def _start_resending(self) -> None:
        if not self.resending:
            self.resending = True
            threading.Thread(target=self._resend, name="ctrl-c-resend", daemon=True).start()

    def _resend(self) -> None:
        while True:
            while self.held_since is not None:
                time.sleep(self.RESEND_SECONDS)
                if self.held_since is not None and not self.depth and signal.getsignal(signal.SIGINT) is self:
                    _send_ctrl_c()
            self.resending = False
            if self.held_since is None or self.resending:
                return
            self.resending = True  # a press arrived as this thread was ending: it is this thread's


def _send_ctrl_c() -> None:
    """SIGINT to this process. os.kill reaches the main thread even while it sleeps in a system call; on
    Windows os.kill(SIGINT) would terminate the process, raise_signal runs the handler instead."""
    if os.name == "nt":
        signal.raise_signal(signal.SIGINT)
    else:
        os.kill(os.getpid(), signal.SIGINT)


class _Holder:
    """The SIGINT handler inside a deferred_interrupt block when no _CtrlC is installed (library use)."""

    def __init__(self, previous: object) -> None:
        self.previous = previous if previous is not None else signal.default_int_handler
        self.received = False

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt: a few renames that belong
    together are never cut in half by a keypress, and a worker process is never forked half-registered.
    An ignored Ctrl-C stays ignored; a nested block leaves the raise to the outer one; a process forked
    in the block gets the handler from before it. Only the main thread can own signals; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    current = signal.getsignal(signal.SIGINT)
    if current is signal.SIG_IGN or isinstance(current, _Holder):
        yield
        return
    _watch_forks()
    if isinstance(current, _CtrlC):
        current.hold()
        try:
            yield
        except BaseException:
            current.release(interrupt=False)
            raise
        current.release(interrupt=True)
        return
    holder = _Holder(current)
    signal.signal(signal.SIGINT, holder)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, holder.previous)
    if holder.received:
        if callable(holder.previous):  # Python's default raises KeyboardInterrupt; an application's runs
            holder.previous(signal.SIGINT, sys._getframe())
        else:  # SIG_DFL: the press would have ended the process
            raise KeyboardInterrupt


_forks_watched = False


def _watch_forks() -> None:
    global _forks_watched
    if not _forks_watched and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _forks_watched = True


def _after_fork_in_child() -> None:
    """Pool and DataLoader workers are forked inside a hold: they must not keep it for their life (Ctrl-C
    could not stop them, and torch waits 5 s for each busy worker at shutdown)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        if isinstance(handler, _Holder):
            signal.signal(signal.SIGINT, handler.previous)
        elif isinstance(handler, _CtrlC):
            handler.reset_after_fork()
    except ValueError:  # not the main thread of the child (cannot happen after fork, but never fail a fork)
        pass


def hold_ctrl_c_until_main() -> None:
    """A script's first statement, before its heavy imports (torch, numpy, fastapi: up to ~1 s): a Ctrl-C
    meanwhile is held, and interrupts in one line with status 130 once run_cli starts main(). Called only
    under `if __name__ == "__main__":`, so importing the script (tests) changes nothing."""
    _install_ctrl_c(armed=False)


def _install_ctrl_c(armed: bool) -> None:
    """The scripts' handler in place of Python's default (in the main thread only); left alone when Ctrl-C
    is ignored (nohup, a background job) or already installed."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        _watch_forks()
        signal.signal(signal.SIGINT, _CtrlC(armed=armed))


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


def _say_interrupted() -> None:
    print("\ninterrupted", file=sys.stderr)


def _interrupted(main: Callable) -> NoReturn:
    _say_interrupted()
    # helper threads (e.g. the data loader's file-descriptor sharer) may fail while the process winds down:
    # after Ctrl-C their tracebacks are noise, the one line above is the message
    threading.excepthook = lambda args: None
    _finish(130, main)


def run_cli(main: Callable[[], object]) -> NoReturn:
    """Run a script's main() the way every script ends: one line per failure, the right exit status.
    main() may return an exit status; anything else it returns (a benchmark's figures) means success."""
    script = _is_script(main)
    if script:
        _install_ctrl_c(armed=True)
    try:
        handler = signal.getsignal(signal.SIGINT)
        if script and isinstance(handler, _CtrlC):
            handler.arm()  # installed by hold_ctrl_c_until_main: a press held since then interrupts here
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
