"""infer_server.py end to end: the real server in a subprocess, real HTTP (httpx), real speech."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install -r requirements-dev.txt)")
pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -r requirements.txt)")

from benchmarks.server_load import Clips, ServerProcess, run_load  # noqa: E402
from utils.audio import prepare_audio  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

MAX_UPLOAD_MB = 1
MAX_SECONDS = 25
REQUEST_TIMEOUT = 4  # seconds for headers and for a whole body: slow clients are cut off
ENROLLED = {"alice": "777", "bob": "1272", "carol": "1988"}  # held-out dev-clean speakers
# speakers nobody enrolled: recognised as unknown at the model's 1:N threshold
STRANGERS = ("librispeech/train-clean-100/103-1240-0000.flac", "fsdd/4_nicolas_16.wav")


# fixtures


def _dev_files(shared_data: Path, speaker: str, count: int = 8) -> list[Path]:
    """The first `count` dev-clean utterances of 3-15 s (sf.info decodes an MP3 to count frames: stop early)."""
    picked = []
    for path in sorted((shared_data / "librispeech" / "dev-clean" / speaker).glob("*/*.mp3")):
        if 3.0 <= sf.info(str(path)).duration <= 15.0:
            picked.append(path)
            if len(picked) == count:
                break
    return picked


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> dict[str, list[Path]]:
    """3 enrolment files then 2 probe files per enrolled name."""
    return {name: _dev_files(shared_data, speaker, 5) for name, speaker in ENROLLED.items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data: Path):
    library = tmp_path_factory.mktemp("audio_db")
    proc = ServerProcess(
        library, "--max_upload_mb", str(MAX_UPLOAD_MB), "--max_seconds", str(MAX_SECONDS), "--device", "cpu",
        "--request_timeout", str(REQUEST_TIMEOUT),
    )  # fmt: skip
    proc.start()
    yield proc
    proc.stop()
    assert proc.proc.returncode is not None
    assert "Traceback" not in proc.log(tail=0), proc.log()  # no request ever crashed the server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120.0) as c:
        yield c


@pytest.fixture(scope="module")
def enrolled(client, speech) -> dict[str, int]:
    counts = {}
    for name, files in speech.items():
        upload = [("files", (p.name, p.read_bytes(), "audio/mpeg")) for p in files[:3]]
        response = client.post("/register", data={"name": name}, files=upload)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["name"], body["recordings"], len(body["new"])) == (name, 3, 3)
        # real read speech: seconds of it per recording, each matching the speaker's other two
        assert all(r["speech_seconds"] > 1.0 and r["consistency"] > 0.5 for r in body["new"]), body
        assert body["warnings"] == [], body
        counts[name] = 3
    return counts


def _upload(path: Path) -> tuple[str, bytes]:
    return path.name, path.read_bytes()


def _wav_bytes(wav: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _assert_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    for word in words:
        assert word in detail, detail
    return detail


# the real server


def test_health_page_and_docs(client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"].endswith("voiceprint_resnet34.pt")
    assert isinstance(health["speakers"], int)
    # 1:N recognition uses the model's stricter operating point, 1:1 contrast its EER threshold
    assert 0.0 < health["contrast_threshold"] <= health["threshold"] < 1.0
    page = client.get("/")
    assert page.status_code == 200 and 'id="result"' in page.text and "/static/app.js" in page.text
    assert "https://" not in page.text  # no CDN: the page works offline
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "getUserMedia" in script.text and "https://" not in script.text
    docs = client.get("/docs")
    assert docs.status_code == 200
    # Swagger UI is served by the app itself (works offline, no CDN)
    assert "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would fetch from a CDN: not offered
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/contrast", "/register", "/recognize", "/speakers", "/speakers/{name}", "/health"} <= set(paths)
    assert set(paths["/speakers/{name}"]) == {"delete"}


def test_recognize_enrolled_speakers(client, enrolled, speech) -> None:
    threshold = client.get("/health").json()["threshold"]
    for name, files in speech.items():
        for probe in files[3:5]:
            body = client.post("/recognize", files={"file": _upload(probe)}).json()
            assert body["name"] == name, (probe.name, body)
            assert body["score"] >= body["threshold"] == threshold
            assert body["runner_up"] not in (None, name)
            assert body["runner_up_score"] < body["score"]


def test_strangers_are_unknown(client, enrolled, shared_data: Path) -> None:
    for rel in STRANGERS:
        body = client.post("/recognize", files={"file": _upload(shared_data / rel)}).json()
        assert body["name"] is None, (rel, body)
        assert body["score"] < body["threshold"]
        assert body["best"] is not None and body["best"] != body["runner_up"]  # whose score `score` is


def test_contrast_same_and_different(client, speech) -> None:
    a1, a2, b1 = speech["alice"][3], speech["alice"][4], speech["carol"][3]
    same = client.post("/contrast", files={"file1": _upload(a1), "file2": _upload(a2)}).json()
    different = client.post("/contrast", files={"file1": _upload(a1), "file2": _upload(b1)}).json()
    assert same["same_speaker"] is True and different["same_speaker"] is False
    assert same["score"] > same["threshold"] > different["score"]
    assert same["threshold"] == client.get("/health").json()["contrast_threshold"]
    assert set(same) == {"score", "threshold", "same_speaker", "speech", "probability_same"}
    assert same["probability_same"] is None  # the bundled model carries no score calibration
    assert [round(s["seconds"], 1) for s in same["speech"]] == [round(sf.info(str(p)).duration, 1) for p in (a1, a2)]
    assert all(0.5 * s["seconds"] < s["speech_seconds"] <= s["seconds"] for s in same["speech"]), same["speech"]


def test_speakers_add_and_delete(client, enrolled, speech) -> None:
    extra = [("files", _upload(speech["carol"][3]))]
    # a taken name: adding must be explicit, and the new recording must be recognised as carol
    _assert_error(client.post("/register", data={"name": "carol"}, files=extra), 409, "already registered", "add=true")
    hijack = [("files", _upload(speech["alice"][3]))]
    _assert_error(client.post("/register", data={"name": "carol", "add": "true"}, files=hijack), 403,
                  "does not match carol's voiceprint")  # fmt: skip
    _assert_error(client.post("/register", data={"name": "zed", "add": "true"}, files=extra), 404, "unknown speaker")
    assert client.get("/speakers").json()["speakers"]["carol"] == 3
    carol = client.post("/register", data={"name": "carol", "add": "true"}, files=extra).json()
    assert (carol["name"], carol["recordings"]) == ("carol", 4)
    _assert_error(client.post("/register", data={"name": "carol", "add": "true"}, files=extra), 400,
                  "already enrolled for carol")  # fmt: skip
    dave = client.post("/register", data={"name": "  dave "}, files=extra).json()
    assert (dave["name"], dave["recordings"], dave["new"][0]["consistency"]) == ("dave", 1, None)
    speakers = client.get("/speakers").json()["speakers"]
    assert speakers["carol"] == 4 and speakers["dave"] == 1 and speakers["alice"] == 3
    assert client.get("/health").json()["speakers"] == len(speakers)
    assert client.delete("/speakers/carol").json() == {"removed": "carol"}
    assert client.delete("/speakers/dave").json() == {"removed": "dave"}
    _assert_error(client.delete("/speakers/dave"), 404, "unknown speaker")
    _assert_error(client.delete("/speakers/nobody"), 404, "nobody")
    assert "carol" not in client.get("/speakers").json()["speakers"]
    # put carol back (3 recordings) for the tests that follow
    upload = [("files", _upload(p)) for p in speech["carol"][:3]]
    assert client.post("/register", data={"name": "carol"}, files=upload).json()["recordings"] == 3


def test_bad_input_is_4xx_json(client, enrolled, speech, shared_data: Path) -> None:
    before = client.get("/speakers").json()["speakers"]
    real = speech["alice"][3]
    wav = prepare_audio(real.read_bytes(), name=real.name)
    rng = np.random.default_rng(0)
    # 400: undecodable, too short, silent, bad names
    _assert_error(client.post("/recognize", files={"file": ("r.bin", rng.bytes(5000))}), 400, "cannot decode", "r.bin")
    _assert_error(client.post("/recognize", files={"file": ("s.wav", _wav_bytes(wav[:1600]))}), 400, "too short")
    silent = _wav_bytes(np.zeros(16000, np.float32))
    _assert_error(client.post("/contrast", files={"file1": _upload(real), "file2": ("z.wav", silent)}), 400, "silent")
    _assert_error(client.post("/recognize", files={"file": ("e.wav", b"")}), 400, "empty")
    for bad in ("../x", ".hidden", "a/b", "x\ny", " "):
        _assert_error(client.post("/register", data={"name": bad}, files={"files": _upload(real)}), 400, "name")
    _assert_error(client.delete("/speakers/..%2Fx"), 400, "name")
    # a bad file among good ones registers nothing
    mixed = [("files", _upload(real)), ("files", ("bad.wav", rng.bytes(3000)))]
    _assert_error(client.post("/register", data={"name": "eve"}, files=mixed), 400, "bad.wav")
    # 422: missing fields
    _assert_error(client.post("/recognize", files={"other": _upload(real)}), 422, "missing", "file")
    _assert_error(client.post("/contrast", files={"file1": _upload(real)}), 422, "missing", "file2")
    _assert_error(client.post("/register", files={"files": _upload(real)}), 422, "missing", "name")
    _assert_error(client.post("/register", data={"name": "eve"}), 422, "missing", "files")
    # 413: declared too large (Content-Length), streamed too large (chunked, no Content-Length), too long
    big = _wav_bytes(rng.uniform(-0.5, 0.5, 40 * 16000).astype(np.float32))  # 1.3 MB, 40 s
    assert len(big) > MAX_UPLOAD_MB * 2**20
    _assert_error(client.post("/recognize", files={"file": ("big.wav", big)}), 413, "MB", "--max_upload_mb")
    body, content_type = _multipart({"file": ("big.wav", big)})
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    response = client.post("/recognize", content=chunks, headers={"Content-Type": content_type})
    assert "content-length" not in response.request.headers
    _assert_error(response, 413, "--max_upload_mb")
    # one big file next to a small one passes the request limit of /contrast but not the per-file limit
    response = client.post("/contrast", files={"file1": ("big.wav", big), "file2": _upload(real)})
    _assert_error(response, 413, "big.wav", "--max_upload_mb")
    long_clip = _wav_bytes(np.tile(wav, 6)[: (MAX_SECONDS + 3) * 16000], subtype="PCM_U8", fmt="WAV")
    _assert_error(client.post("/recognize", files={"file": ("long.wav", long_clip)}), 413, "--max_seconds")
    # nothing of that changed the library, and the server is still fine
    assert client.get("/speakers").json()["speakers"] == before
    assert client.get("/health").json()["status"] == "ok"


def _multipart(files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "voiceprint-test-boundary"
    parts = []
    for field, (name, data) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# who may call


def test_foreign_hosts_and_cross_origin_writes_are_refused(client, enrolled, speech) -> None:
    before = client.get("/speakers").json()["speakers"]
    upload = [("files", _upload(speech["alice"][3]))]
    evil = client.post("/register", data={"name": "mallory"}, files=upload, headers={"Origin": "http://evil.example"})
    _assert_error(evil, 403, "cross-origin request refused")
    cross_site = client.post(
        "/register", data={"name": "mallory"}, files=upload, headers={"Sec-Fetch-Site": "cross-site"}
    )
    _assert_error(cross_site, 403, "cross-site request refused")
    _assert_error(client.delete("/speakers/alice", headers={"Origin": "null"}), 403, "cross-origin")
    # DNS rebinding: a page on attacker.example resolving to 127.0.0.1 still sends its own Host
    _assert_error(client.get("/speakers", headers={"Host": "attacker.example"}), 400, "host not allowed")
    assert client.get("/speakers").json()["speakers"] == before  # nothing changed
    # the server's own origin (what the page sends) still works
    own = str(client.base_url).rstrip("/")
    a1, a2 = speech["alice"][3], speech["alice"][4]
    same = client.post("/contrast", files={"file1": _upload(a1), "file2": _upload(a2)}, headers={"Origin": own})
    assert same.status_code == 200 and same.json()["same_speaker"] is True


def test_security_headers_on_every_response(client) -> None:
    for response in (client.get("/"), client.get("/health"), client.get("/speakers/x")):
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "script-src 'self' blob:;" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    # HEAD is a GET without a body; OPTIONS says what is allowed but grants no other origin anything
    for path in ("/", "/health"):
        head = client.head(path)
        assert (
            head.status_code == 200
            and head.content == b""
            and "frame-ancestors" in head.headers["content-security-policy"]
        )
    options = client.options(
        "/register", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert options.status_code == 204 and "POST" in options.headers["allow"]
    assert not any(k.lower().startswith("access-control-allow") for k in options.headers)


def test_concurrent_load_has_no_errors(server, enrolled, speech, shared_data: Path) -> None:
    # the benchmark's own code, small: 2 clients x 5 mixed requests against this server's speakers
    newcomer = [_upload(p) for p in _dev_files(shared_data, "2035", 2)]  # a 4th voice for registers of new names
    clips = Clips(
        enrol={name: [_upload(p) for p in files[:3]] for name, files in speech.items()},
        probes={name: [_upload(p) for p in files[3:5]] for name, files in speech.items()},
        newcomer=newcomer,
    )
    report = run_load(server.url, clips, clients=2, requests_per_client=5, pid=server.pid)
    assert report.errors == [], report.summary()
    assert report.requests == 10 and report.consistent, report.summary()
    assert sum(report.registered.values()) >= 1
    assert report.peak_rss_mb is not None and report.peak_rss_mb > 50


def test_changes_by_infer_recognition_are_seen_at_once(server, client, enrolled, speech) -> None:
    # infer_recognition.py --remove in another process (a listing-only SpeakerDB, as it opens for --remove)
    from utils.speaker_db import SpeakerDB

    probe = {"file": _upload(speech["carol"][3])}
    assert client.post("/recognize", files=probe).json()["name"] == "carol"
    before = client.get("/health").json()["speakers"]
    SpeakerDB(server.audio_db, None).remove("carol")
    assert client.get("/health").json()["speakers"] == before - 1
    assert client.post("/recognize", files=probe).json()["name"] != "carol"
    # enrol carol again through the API, as she was
    upload = [("files", (p.name, p.read_bytes(), "audio/mpeg")) for p in speech["carol"][:3]]
    assert client.post("/register", data={"name": "carol"}, files=upload).status_code == 200


def test_slow_clients_are_cut_off_and_big_registrations_refused(server, client) -> None:
    """Slowloris: trickled headers lose the connection, a trickled body gets 408; neither holds a worker."""
    import socket
    import time

    host, port = "127.0.0.1", server.port
    began = time.monotonic()
    slow_header = socket.create_connection((host, port))
    slow_header.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    slow_body = socket.create_connection((host, port))
    slow_body.sendall(b"POST /recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n")  # fmt: skip
    closed = answered = None
    slow_header.settimeout(0.5)
    slow_body.settimeout(0.5)
    while time.monotonic() - began < 3 * REQUEST_TIMEOUT and (closed is None or answered is None):
        for sock in (slow_header, slow_body):
            try:
                sock.sendall(b"X")  # one byte at a time, forever
            except OSError:
                pass
        if closed is None:
            try:
                if slow_header.recv(4096) == b"":
                    closed = time.monotonic() - began
            except TimeoutError:
                pass
            except OSError:
                closed = time.monotonic() - began
        if answered is None:
            try:
                reply = slow_body.recv(4096)
                answered = (time.monotonic() - began, reply)
            except TimeoutError:
                pass
    try:  # the headers and the body of the answer may come in separate packets
        while answered is not None and b"\r\n\r\n" in answered[1] and not answered[1].endswith(b"}"):
            more = slow_body.recv(4096)
            if not more:
                break
            answered = (answered[0], answered[1] + more)
    except OSError:
        pass
    slow_header.close()
    slow_body.close()
    assert closed is not None and closed < REQUEST_TIMEOUT + 2, closed
    assert answered is not None and answered[1].startswith(b"HTTP/1.1 408"), answered
    assert b"not received within 4 s" in answered[1] and answered[0] < REQUEST_TIMEOUT + 2
    assert client.get("/health").status_code == 200  # the server still answers everyone else
    # one registration may carry 4 files' worth of --max_upload_mb, not 16 x the limit
    blob = ("take.wav", b"RIFF" + b"\0" * int(0.9 * 2**20), "audio/wav")
    too_much = client.post("/register", data={"name": "big"}, files=[("files", blob)] * 5)
    assert too_much.status_code == 413 and "at most 4 MB in one request" in too_much.json()["detail"]


def test_live_websocket_follows_the_speaker_and_refuses_other_origins(server, enrolled, speech) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    from utils.audio import load_audio

    carol, alice = (load_audio(speech[name][3])[: 5 * 16000] for name in ("carol", "alice"))
    pcm = (np.clip(np.concatenate([carol, alice]), -1, 1) * 32767).astype("<i2").tobytes()
    url = f"ws://127.0.0.1:{server.port}/live"
    states = []
    with connect(url, origin=server.url) as socket:
        for start in range(0, len(pcm), 8000):  # 0.25 s per message, faster than real time
            socket.send(pcm[start : start + 8000])
            states.append(json.loads(socket.recv(timeout=60)))
    assert [round(s["time"], 2) for s in states] == [round(0.25 * (k + 1), 2) for k in range(40)]
    first, second = [s for s in states if 1.5 <= s["time"] <= 5.0], [s for s in states if s["time"] >= 6.5]
    assert sum(s["best"] == "carol" for s in first) >= 0.8 * len(first), first
    assert sum(s["best"] == "alice" for s in second) >= 0.8 * len(second), second
    assert {"label", "name", "score", "speech_seconds", "level_dbfs"} <= set(states[-1])
    # a WebSocket ignores CORS: another origin's page is refused by the server itself
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    with pytest.raises(Exception, match="1009|at most"):  # a message over the size limit ends the session
        with connect(url, origin=server.url) as socket:
            socket.send(b"\0" * 70000)
            socket.recv(timeout=30)
    # a text message, or half a sample, ends the session with a reason (a text message once raised KeyError
    # inside the server: a traceback in its log, and no close code for the client)
    for bad, reason in (("hello", "binary messages"), (b"\0\0\0", "even number of bytes")):
        with connect(url, origin=server.url) as socket:
            socket.send(bad)
            with pytest.raises(ConnectionClosed) as closed:
                socket.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003, closed.value
        assert reason in closed.value.rcvd.reason


def test_live_websocket_limits_and_an_https_proxy(server) -> None:
    """Found by a security review: uvicorn took 16 MiB compressed messages and inflated them before /live
    could refuse them (1 MB sent, 450 MB held, any number of sessions); behind an HTTPS proxy (X-Forwarded-Proto,
    from loopback) the page's wss:// session was refused as another origin."""
    import contextlib

    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    from infer_server import LIVE_MAX_SESSIONS

    url = f"ws://127.0.0.1:{server.port}/live"
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(connect(url, origin=server.url)) for _ in range(LIVE_MAX_SESSIONS)]
        assert all(not s.protocol.extensions for s in sessions)  # permessage-deflate offered, not negotiated
        with connect(url, origin=server.url) as extra:
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013, closed.value
    proxied = {"X-Forwarded-Proto": "https"}
    with connect(url, origin=f"https://127.0.0.1:{server.port}", additional_headers=proxied) as socket:
        socket.send(b"\0\0" * 4000)
        assert json.loads(socket.recv(timeout=60))["label"] == "no speech"
    with pytest.raises(InvalidStatus):  # an http page's origin is not an https server's
        connect(url, origin=server.url, additional_headers=proxied)


def test_library_is_shared_with_infer_recognition(server, enrolled) -> None:
    # after the server stopped, a SpeakerDB on the same folder (what infer_recognition.py opens) has everyone;
    # opened without a model (listing only) so this test does not pay for a second torch start-up
    from utils.speaker_db import SpeakerDB

    counts = httpx.get(f"{server.url}/speakers").json()["speakers"]
    assert set(ENROLLED) <= set(counts)
    assert server.stop() is not None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/health", timeout=2.0)
    db = SpeakerDB(server.audio_db, None)
    assert db.counts() == counts
    assert (server.audio_db / ".voiceprint_cache.npz").is_file()  # embeddings cached for the next process
    assert not list(server.audio_db.glob("**/*.tmp"))  # no half-written files left behind


def test_api_key(tmp_path: Path) -> None:
    import httpx

    key = "k" * 20
    with (
        ServerProcess(tmp_path / "db", "--api_key", key, "--device", "cpu") as proc,
        httpx.Client(base_url=proc.url, timeout=60) as http,
    ):
        _assert_error(http.get("/speakers"), 401, "missing or wrong API key")
        _assert_error(http.get("/speakers", headers={"Authorization": "Bearer wrong"}), 401, "API key")
        assert http.get("/speakers", headers={"Authorization": f"Bearer {key}"}).json() == {"speakers": {}}
        assert http.get("/health").status_code == 200 and http.get("/").status_code == 200  # the page asks for it
        # the page's WebSocket can only send the key as ?key=: uvicorn logged it with every session
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{proc.port}/live?key={key}", origin=proc.url) as socket:
            socket.send(b"\0\0" * 4000)
            assert json.loads(socket.recv(timeout=60))["label"] == "no speech"
        assert "/live?key=***" in proc.log(tail=0) and key not in proc.log(tail=0), proc.log()
    refused = subprocess.run([sys.executable, "infer_server.py", "--host", "0.0.0.0", "--audio_db", str(tmp_path)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 1 and "set --api_key" in refused.stderr.strip().splitlines()[-1]


def test_a_killed_benchmark_leaves_no_server_behind(tmp_path: Path) -> None:
    """benchmarks/server_load.py's ServerProcess: the server dies with whatever started it, even by SIGKILL."""
    import os
    import signal
    import subprocess
    import sys
    import time

    parent_code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from benchmarks.server_load import ServerProcess;"
        "s = ServerProcess(sys.argv[2], '--device', 'cpu'); s.start();"
        "print(s.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(ROOT), str(tmp_path / "db")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    server_pid = int(parent.stdout.readline())
    os.kill(server_pid, 0)  # running and answering /health
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{server_pid}/stat") as stat:
            if stat.read().split()[2] == "Z":  # exited; a zombie until init reaps it
                return
        time.sleep(0.2)
    os.kill(server_pid, signal.SIGKILL)
    raise AssertionError("the server outlived the process that started it")
