"""Atomic file writes (torch-free): every file a user would hate to lose goes through here.

Lists, checkpoints, inference models, the voiceprint library and JSON results are written as a
temporary file in the same folder, fsync'ed, renamed over the target, then the folder is
fsync'ed. A crash or a kill leaves either the old file or the new one, never half of one; the
temp file a killed writer leaves behind is removed by `remove_stale_temp_files`.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.errors import deferred_interrupt  # re-exported: callers hold Ctrl-C around renames

__all__ = [
    "atomic_write_bytes",
    "atomic_write_files",
    "atomic_write_json",
    "atomic_write_text",
    "deferred_interrupt",
    "fsync_dir",
    "is_utf8",
    "json_bytes",
    "remove_stale_temp_files",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new content, never a mix."""
    atomic_write_files({path: data})


def atomic_write_files(files: Mapping[str | os.PathLike, bytes]) -> None:
    """Write files that belong together (create_data.py's six lists) as a set: every temporary file is
    written and fsync'ed first, then all are renamed over their targets with Ctrl-C held. A failure while
    writing (a full disk) leaves every old file as it was, and no temporary file."""
    targets = [Path(path) for path in files]
    for path in targets:
        if path.is_dir():  # checked before anything is written: a rename onto it would fail half-way
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    written: list[tuple[str, Path]] = []
    try:
        for path, data in zip(targets, files.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append((_write_temp(path, data), path))
        with deferred_interrupt():
            for tmp, path in written:
                os.replace(tmp, path)
            for folder in dict.fromkeys(path.parent for _, path in written):
                fsync_dir(folder)
    except BaseException:
        for tmp, _ in written:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def _write_temp(path: Path, data: bytes) -> str:
    """`data` in a fsync'ed temporary file beside `path` (removed again if writing fails)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files; give the file the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write (full disk) names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    return tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, **options: Any) -> None:
    """JSON with a 2-space indent and a final newline; `options` go to json.dumps (e.g. sort_keys)."""
    atomic_write_bytes(path, json_bytes(obj, **options))


def json_bytes(obj: Any, **options: Any) -> bytes:
    """What atomic_write_json writes: 2-space indent, final newline, UTF-8."""
    text = json.dumps(obj, indent=2, **options) + "\n"
    # a file name that is not UTF-8 (a surrogate in Python) as a JSON escape: valid JSON, read back the same
    return text.encode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> None:
    """Delete the temp files atomic_write_bytes leaves in `folder` and its subfolders when its process is
    killed mid-write (the file it was replacing is intact). Call only when no other writer can be active."""
    folder = Path(folder)
    for stale in [*folder.glob(".*.tmp"), *folder.glob("*/.*.tmp")]:
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
