"""Bounded load test of infer_server.py on loopback: concurrent clients, mixed requests, latency and memory.

Usage:
    python benchmarks/server_load.py                           # 8 clients x 50 requests, 3 speakers
    python benchmarks/server_load.py --clients 2 --requests 5

Starts the real server as a subprocess on 127.0.0.1 (free port, temporary
library), registers --speakers LibriSpeech dev-clean speakers (3 files each,
not timed), then each client thread sends its share of a fixed mix of
requests: recognize, contrast, speakers, health and a few registers (which
add recordings to existing and new speakers). Reports p50/p95 latency per
endpoint and overall, the error count (must be 0), whether the library's
counts match the registers that were sent, and the server's peak RSS.
Exit status 1 when there were errors or the library is inconsistent.

Needs ../shared/data (real speech; see its README).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("VOICEPRINT_SHARED_DATA", ROOT.parent / "shared" / "data"))
SPEAKERS = ("777", "1272", "1988", "2035", "2803")  # dev-clean speakers the bundled model never saw
# share of each request kind in the mix (registers are few: they write to the library)
MIX = (("recognize", 0.40), ("contrast", 0.25), ("speakers", 0.15), ("health", 0.14), ("register", 0.06))


# the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the process that started it dies, even by SIGKILL, so a
    killed benchmark or test run never leaves an orphaned server holding a port."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the `with` block's stop() is the only guard
        pass


class ServerProcess:
    """infer_server.py in a subprocess on 127.0.0.1; `with` waits for /health and stops it (terminate, wait)."""

    def __init__(self, audio_db: str | os.PathLike, *args: str, python: str = sys.executable, timeout: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audio_db = Path(audio_db)
        self.log_path = Path(tempfile.mkstemp(prefix="infer_server_", suffix=".log")[1])
        self.command = [python, str(ROOT / "infer_server.py"), "--port", str(self.port), "--audio_db", str(audio_db)]
        self.command += list(args)
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self._final_log: str | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, wait: bool = True) -> None:
        """Launch the server; with `wait=False` call wait_ready() later (do other set-up while it loads)."""
        with open(self.log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the server
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        self._started = time.monotonic()
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until /health answers; RuntimeError (with the server's log) when it exits or times out."""
        import httpx

        assert self.proc is not None, "start() first"
        deadline = self._started + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                message = f"infer_server.py exited with {self.proc.returncode}:\n{self.log()}"
                self.stop()
                raise RuntimeError(message)
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        message = f"infer_server.py did not answer /health within {self.timeout:g} s:\n{self.log()}"
        self.stop()
        raise RuntimeError(message)

    def stop(self) -> int | None:
        """Terminate and wait (kill after 15 s); returns the exit code. The log is kept in memory (log())."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._final_log is None:
            self._final_log = self.log()
            self.log_path.unlink(missing_ok=True)
        return self.proc.returncode

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self, tail: int = 4000) -> str:
        """The server's output (its last `tail` characters; 0: all of it)."""
        if self._final_log is not None:
            text = self._final_log
        else:
            try:
                text = self.log_path.read_text(errors="replace")
            except OSError:
                text = ""
        return text[-tail:] if tail else text


class PeakRSS:
    """Samples a process's resident memory in a thread; `peak_mb` also reads the kernel's own peak (VmHWM)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            import psutil

            self._process = psutil.Process(pid)
        except Exception:  # no psutil (or the process is gone): /proc below
            self._process = None

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def rss(self) -> int:
        if self._process is not None:
            try:
                return int(self._process.memory_info().rss)
            except Exception:
                return 0
        return _proc_status_kb(self.pid, "VmRSS") * 1024

    @property
    def peak_mb(self) -> float:
        return max(self.peak, _proc_status_kb(self.pid, "VmHWM") * 1024) / 2**20


def _proc_status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


# the clips


@dataclass
class Clips:
    """Encoded files (bytes) for the requests: enrolment and probe files per speaker."""

    enrol: dict[str, list[tuple[str, bytes]]]
    probes: dict[str, list[tuple[str, bytes]]]
    newcomer: list[tuple[str, bytes]]  # a further speaker's files, for registers of new names

    @property
    def speakers(self) -> list[str]:
        return sorted(self.enrol)


def load_clips(data: str | os.PathLike = DEFAULT_DATA, speakers: int = 3, per_speaker: int = 6) -> Clips:
    """dev-clean MP3s (3-12 s) of `speakers` held-out speakers (3 to enrol, the rest to probe) and one newcomer."""
    import soundfile as sf

    dev = Path(data) / "librispeech" / "dev-clean"
    if not dev.is_dir():
        raise FileNotFoundError(f"real speech not found at {dev} (set VOICEPRINT_SHARED_DATA or add ../shared/data)")
    if not 1 <= speakers < len(SPEAKERS):
        raise ValueError(f"speakers must be in 1..{len(SPEAKERS) - 1}, got {speakers}")
    picked = {}
    for speaker in SPEAKERS[: speakers + 1]:
        files = []
        for path in sorted((dev / speaker).glob("*/*.mp3")):
            if 3.0 <= sf.info(str(path)).duration <= 12.0:  # sf.info decodes an MP3 to count it: stop early
                files.append((path.name, path.read_bytes()))
                if len(files) == per_speaker:
                    break
        picked[f"spk{speaker}"] = files
    newcomer = picked.pop(f"spk{SPEAKERS[speakers]}")[:2]
    return Clips({k: v[:3] for k, v in picked.items()}, {k: v[3:] for k, v in picked.items()}, newcomer)


def register_all(url: str, clips: Clips) -> None:
    """Enrol every speaker of `clips` (3 files each) before the timed part."""
    import httpx

    with httpx.Client(base_url=url, timeout=120.0) as client:
        for name, files in clips.enrol.items():
            response = client.post("/register", data={"name": name}, files=[("files", f) for f in files])
            response.raise_for_status()


# the load


@dataclass
class LoadReport:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # endpoint -> seconds
    errors: list[str] = field(default_factory=list)
    registered: Counter = field(default_factory=Counter)  # name -> recordings added by this run
    wall_seconds: float = 0.0
    counts_before: dict[str, int] = field(default_factory=dict)
    counts_after: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: float | None = None

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def consistent(self) -> bool:
        """The library holds exactly what it held before plus what this run registered."""
        expected = Counter(self.counts_before)
        expected.update(self.registered)
        return dict(expected) == self.counts_after

    def summary(self) -> str:
        rows = [f"{'endpoint':<11} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}"]
        every = []
        for endpoint in sorted(self.latencies):
            values = self.latencies[endpoint]
            every += values
            rows.append(_row(endpoint, values))
        rows.append(_row("overall", every))
        rate = self.requests / self.wall_seconds if self.wall_seconds else 0.0
        rows.append(
            f"{self.requests} requests in {self.wall_seconds:.1f} s ({rate:.1f} req/s); errors: {len(self.errors)}"
        )
        added = sum(self.registered.values())
        state = "consistent" if self.consistent else "INCONSISTENT"
        rows.append(f"library: {state} ({added} recordings registered; counts after: {self.counts_after})")
        if self.peak_rss_mb is not None:
            rows.append(f"server peak RSS: {self.peak_rss_mb:.0f} MB")
        rows += [f"error: {e}" for e in self.errors[:20]]
        return "\n".join(rows)


def _row(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<11} {0:>5}"
    p50, p95 = _percentile(values, 50), _percentile(values, 95)
    return f"{name:<11} {len(values):>5} {p50 * 1e3:>9.1f} {p95 * 1e3:>9.1f} {max(values) * 1e3:>9.1f}"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def plan(clients: int, requests_per_client: int, seed: int = 0) -> list[list[str]]:
    """The request kinds of each client: the MIX shares, shuffled with a fixed seed (same load every run)."""
    rng = random.Random(seed)
    total = clients * requests_per_client
    kinds = [kind for kind, share in MIX for _ in range(max(1, round(share * total)) if share else 0)]
    kinds = (kinds * (total // len(kinds) + 1))[:total]  # rounding: trim or repeat to the exact total
    if "register" not in kinds and total >= 2:
        kinds[-1] = "register"  # even the smallest run writes to the library once
    rng.shuffle(kinds)
    return [kinds[i * requests_per_client : (i + 1) * requests_per_client] for i in range(clients)]


def run_load(
    url: str, clips: Clips, clients: int = 8, requests_per_client: int = 50, seed: int = 0, pid: int | None = None
) -> LoadReport:
    """Send the mixed load from `clients` threads (one connection each) and collect latencies and errors."""
    import httpx

    report = LoadReport()
    lock = threading.Lock()
    with httpx.Client(base_url=url, timeout=120.0) as client:
        report.counts_before = client.get("/speakers").json()["speakers"]
    probes = [(name, clip) for name in clips.speakers for clip in clips.probes[name]]
    start = threading.Barrier(clients)

    def worker(index: int, kinds: list[str]) -> None:
        rng = random.Random(seed * 1000 + index)
        with httpx.Client(base_url=url, timeout=120.0) as client:
            start.wait()
            for k, kind in enumerate(kinds):
                began = time.perf_counter()
                try:
                    response, expect, register_name, added = _send(client, kind, rng, clips, probes, f"{index}-{k}")
                    body = response.json() if response.status_code == 200 else None
                    error = None if body is not None else f"{kind}: HTTP {response.status_code} {response.text[:200]}"
                except Exception as exc:  # a dropped connection or timeout is an error of the run, not a crash
                    error, body, register_name = f"{kind}: {type(exc).__name__}: {exc}", None, None
                elapsed = time.perf_counter() - began
                if error is None and kind == "recognize" and body.get("name") != expect:
                    error = f"recognize: expected {expect}, got {body.get('name')} (score {body.get('score')})"
                with lock:
                    report.latencies.setdefault(kind, []).append(elapsed)
                    if error is not None:
                        report.errors.append(error)
                    elif register_name is not None:
                        report.registered[register_name] += added

    threads = [
        threading.Thread(target=worker, args=(i, kinds))
        for i, kinds in enumerate(plan(clients, requests_per_client, seed))
    ]
    rss = PeakRSS(pid) if pid is not None else None
    began = time.perf_counter()
    if rss is not None:
        rss.__enter__()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        if rss is not None:
            rss.__exit__(None, None, None)
    report.wall_seconds = time.perf_counter() - began
    report.peak_rss_mb = rss.peak_mb if rss is not None else None
    with httpx.Client(base_url=url, timeout=120.0) as client:
        report.counts_after = client.get("/speakers").json()["speakers"]
    return report


@dataclass
class _Answer:
    """A response the library gave on purpose (a take it already holds), counted as a success."""

    status_code: int
    body: dict

    def json(self) -> dict:
        return self.body


def _send(client, kind: str, rng: random.Random, clips: Clips, probes: list, tag: str) -> tuple:
    """One request of `kind`: (response, name /recognize should answer, name registered, recordings sent)."""
    if kind == "recognize":
        expect, clip = rng.choice(probes)
        return client.post("/recognize", files={"file": clip}), expect, None, 0
    if kind == "contrast":
        (_, a), (_, b) = rng.choice(probes), rng.choice(probes)
        return client.post("/contrast", files={"file1": a, "file2": b}), None, None, 0
    if kind == "register":
        if rng.random() < 0.5:  # a new speaker, with a voice nobody probes for (it must not steal recognitions)
            name, files = f"load-{tag}", clips.newcomer[: rng.randint(1, 2)]
            add = False
        else:  # more recordings of an enrolled speaker: explicit, and they must sound like them
            name, add = rng.choice(clips.speakers), True
            files = [rng.choice(clips.probes[name])]
        response = client.post("/register", data={"name": name, "add": str(add).lower()},
                               files=[("files", f) for f in files])  # fmt: skip
        if add and response.status_code == 400 and "already enrolled" in response.text:
            return _Answer(200, {"recordings": None}), None, name, 0  # that take was added before: not twice
        return response, None, name, len(files)
    return client.get(f"/{kind}"), None, None, 0


def run_benchmark(
    clients: int = 8,
    requests_per_client: int = 50,
    speakers: int = 3,
    data: str | os.PathLike = DEFAULT_DATA,
    python: str = sys.executable,
    server_args: tuple[str, ...] = (),
) -> LoadReport:
    """Start a server on a temporary library, enrol the speakers, run the load, stop the server."""
    clips = load_clips(data, speakers)
    with tempfile.TemporaryDirectory(prefix="server_load_") as library:
        with ServerProcess(library, *server_args, python=python) as server:
            register_all(server.url, clips)
            report = run_load(server.url, clips, clients, requests_per_client, pid=server.pid)
        # after the server stopped: the folder alone must hold what the API reported
        on_disk = {p.name: len(list(p.glob("*.wav"))) for p in Path(library).iterdir() if p.is_dir()}
        if on_disk != report.counts_after:
            report.errors.append(f"library folder holds {on_disk}, the API reported {report.counts_after}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--speakers", type=int, default=3, help=f"speakers enrolled first (1-{len(SPEAKERS) - 1})")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the shared real-speech folder")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs infer_server.py")
    parser.add_argument("--device", default="cpu", help="--device of the server")
    return parser


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    from utils.config import fail, print_arguments

    args = build_parser().parse_args(argv)
    print_arguments(args)
    if args.clients < 1 or args.requests < 1 or not 1 <= args.speakers < len(SPEAKERS):
        fail(f"--clients and --requests must be >= 1 and --speakers in 1..{len(SPEAKERS) - 1}")
    try:
        report = run_benchmark(
            args.clients, args.requests, args.speakers, args.data, args.python, ("--device", args.device)
        )
    except (FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
    print(report.summary())
    if report.errors or not report.consistent:
        raise SystemExit(1)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # utils/, for running as a script
    from utils.errors import run_cli

    run_cli(main)
