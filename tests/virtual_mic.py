"""A real (not mocked) microphone for tests: a private PulseAudio daemon whose default source plays a waveform.

    with VirtualMicrophone(wav) as mic:       # wav: float32 mono at 16 kHz
        audio = record(3.0)                   # PyAudio -> ALSA "default" -> pulse plugin -> mic
        subprocess.run([...], env=mic.env)    # or let a child process record from it

The daemon runs in the foreground as a child of this process, with its own
runtime/state folders in a temporary directory, `-n` (no default.pa, so it never
touches real sound cards) and two modules: the native protocol socket and
`module-pipe-source`, a source fed from a FIFO. A thread writes the waveform into
the FIFO in real time (16-bit, 16 kHz, mono), then keeps writing silence so a
recording that runs past the end never stalls. While the context is active,
PULSE_SERVER/PULSE_RUNTIME_PATH point this process (and `mic.env` children) at the
daemon; ALSA's pulse hook then routes the "default" PCM to it.

Quirks found with PulseAudio 16.1 running as root:
- it warns "not intended to be run as root" but works in per-user mode; HOME and
  XDG_RUNTIME_DIR are pointed at the temporary folder so no cookie/state of the
  real user is read or written;
- module-pipe-source creates the FIFO itself and fails with "File exists" when it
  is already there, yet the daemon still starts (a `--load` failure is not fatal),
  so the harness checks that the source really exists instead of trusting the exit
  status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

SOURCE_NAME = "vmic"
CHUNK_SECONDS = 0.02
START_TIMEOUT = 10.0


class VirtualMicrophone:
    """Context manager: a PulseAudio default input device that plays `wav` (float32 mono, `sample_rate`)."""

    def __init__(
        self, wav: np.ndarray, sample_rate: int = 16000, loop: bool = False, lead_seconds: float = 0.0
    ) -> None:
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        self.sample_rate = int(sample_rate)
        self.loop = loop
        lead = np.zeros(int(lead_seconds * self.sample_rate), dtype=np.float32)
        self._pcm = _to_s16(np.concatenate([lead, wav]))
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._daemon: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._position = 0
        self._saved_env: dict[str, str | None] = {}
        self.env: dict[str, str] = {}  # full environment for child processes that should record from the mic
        self.fifo: Path | None = None

    # lifecycle

    def __enter__(self) -> VirtualMicrophone:
        missing = [tool for tool in ("pulseaudio", "pactl") if shutil.which(tool) is None]
        if missing:
            pytest.skip(
                f"{' and '.join(missing)} not installed: the virtual microphone needs "
                "apt packages pulseaudio pulseaudio-utils libasound2-plugins"
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="vmic-")
        try:
            self._start_daemon(Path(self._tmp.name))
            self._activate_env()
            self._thread = threading.Thread(target=self._feed, name="virtual-mic-feeder", daemon=True)
            self._thread.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
        if self._daemon is not None:
            self._daemon.terminate()
            try:
                self._daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._daemon.kill()
                self._daemon.wait(timeout=5)
            self._daemon = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def play(self, wav: np.ndarray | None = None) -> None:
        """Restart the clip from its beginning now (optionally a new clip), e.g. just before a prompt."""
        with self._lock:
            if wav is not None:
                self._pcm = _to_s16(np.asarray(wav, dtype=np.float32).reshape(-1))
            self._position = 0

    # daemon

    def _start_daemon(self, tmp: Path) -> None:
        runtime = tmp / "run"
        self.fifo = tmp / "mic.fifo"  # created by module-pipe-source itself (it refuses an existing file)
        daemon_env = {
            **os.environ,
            "HOME": str(tmp),
            "XDG_RUNTIME_DIR": str(tmp / "xdg"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "PULSE_RUNTIME_PATH": str(runtime),
            "PULSE_STATE_PATH": str(tmp / "state"),
        }
        daemon_env.pop("PULSE_SERVER", None)
        (tmp / "xdg").mkdir(mode=0o700)
        self.log_path = tmp / "pulseaudio.log"
        pipe_source = (
            f"module-pipe-source source_name={SOURCE_NAME} file={self.fifo} "
            f"format=s16le rate={self.sample_rate} channels=1"
        )
        self._daemon = subprocess.Popen(
            [
                "pulseaudio",
                "--daemonize=no",
                "-n",
                "--exit-idle-time=-1",
                "--log-target=file:" + str(self.log_path),
                "--load=module-native-protocol-unix",
                "--load=" + pipe_source,
            ],
            env=daemon_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.server = f"unix:{runtime / 'native'}"
        self.env = {**daemon_env, "PULSE_SERVER": self.server}
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._daemon.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with status {self._daemon.returncode}: {self._log_tail()}")
            if self.fifo.exists() and self._pactl("list", "short", "sources").find(SOURCE_NAME) >= 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pulseaudio did not provide source {SOURCE_NAME} in {START_TIMEOUT:g} s: {self._log_tail()}"
                )
            time.sleep(0.05)
        self._pactl("set-default-source", SOURCE_NAME, check=True)

    def _pactl(self, *args: str, check: bool = False) -> str:
        result = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10)
        if check and result.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {result.stderr.strip()} | {self._log_tail()}")
        return result.stdout if result.returncode == 0 else ""

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no pulseaudio log)"
        errors = [line for line in lines if line.startswith("E:")]
        return " | ".join((errors or lines)[-3:])

    def _activate_env(self) -> None:
        # PulseAudio clients (and ALSA's pulse hook) in this process find the daemon through these
        for key in ("PULSE_SERVER", "PULSE_RUNTIME_PATH"):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = self.env[key]

    # feeding

    def _feed(self) -> None:
        chunk = max(int(self.sample_rate * CHUNK_SECONDS), 1)
        silence = np.zeros(chunk, dtype="<i2").tobytes()
        # the daemon already holds the FIFO open, so opening it for writing does not block
        fd = os.open(self.fifo, os.O_WRONLY)
        try:
            start = time.monotonic()
            written = 0
            while not self._stop.is_set():
                with self._lock:
                    if self.loop and self._position >= len(self._pcm):
                        self._position = 0
                    block = self._pcm[self._position : self._position + chunk]
                    self._position += len(block)
                data = block.tobytes() + silence[: 2 * (chunk - len(block))]
                os.write(fd, data)
                written += chunk
                # real time: stay about one chunk ahead of the clock, no more
                delay = start + (written - chunk) / self.sample_rate - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
        except OSError:
            pass  # daemon gone (shutdown): nothing left to feed
        finally:
            os.close(fd)


def _to_s16(wav: np.ndarray) -> np.ndarray:
    return (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2")
