"""Speaker-recognition web service: compare, register and recognise voices over HTTP.

Usage:
    python infer_server.py                                   # http://127.0.0.1:8000
    python infer_server.py --host 0.0.0.0 --port 8080 --audio_db audio_db --threshold 0.35

    open http://127.0.0.1:8000/       the microphone page (register, recognise, compare)
    open http://127.0.0.1:8000/docs   the API (Swagger UI, served locally)

    curl -F file1=@audio/a1.wav -F file2=@audio/a2.wav http://127.0.0.1:8000/contrast
    curl -F name=alice -F files=@audio/a1.wav http://127.0.0.1:8000/register     # files= may repeat
    curl -F file=@audio/a2.wav http://127.0.0.1:8000/recognize
    curl http://127.0.0.1:8000/speakers
    curl -X DELETE http://127.0.0.1:8000/speakers/alice

Uploads are WAV/FLAC/OGG/MP3 of any rate and channel count. The model is loaded
once at start-up; the voiceprint library (--audio_db) is the same folder and
cache that infer_recognition.py uses, so both can run at the same time.

Errors are JSON {"detail": "<one line>"}: 400 bad audio or name, 404 unknown
speaker, 409 recognise with an empty library, 413 upload over --max_upload_mb
(per file) or recording over --max_seconds, 422 missing form field.

The page at / (static/index.html + static/app.js, no external scripts) records
the microphone and converts it to 16 kHz mono 16-bit WAV itself. Browsers only
allow the microphone in a secure context: open it on localhost/127.0.0.1, or
put the service behind HTTPS.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports below: a Ctrl-C while they load ends in one line
    from utils.errors import hold_ctrl_c_until_main

    hold_ctrl_c_until_main()

import argparse
import asyncio
import contextlib
import errno
import hmac
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from utils.audio import MIN_SPEECH_SECONDS, SAMPLE_RATE, AudioError, AudioTooLongError, Recording, prepare_recording
from utils.config import HelpFormatter, check_threshold, fail, print_arguments
from utils.errors import UserError, run_cli

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_REGISTER_FILES = 16
MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and the name field on top of the audio bytes
# how many audio files each endpoint takes: its request body may hold that many --max_upload_mb files
LIVE_MESSAGE_BYTES = 64000  # 2 s of 16 kHz 16-bit audio per WebSocket message at most
LIVE_MAX_SECONDS = 4 * 3600.0  # one live session
LIVE_MAX_SESSIONS = 8  # live sessions at once (each holds a recogniser and its queue of messages)
REGISTER_BODY_FILES = 4  # a registration's whole body holds at most this many --max_upload_mb files' worth
FILES_PER_REQUEST = {"/contrast": 2, "/recognize": 1, "/register": REGISTER_BODY_FILES}

log = logging.getLogger("infer_server")


# responses (documented at /docs)


class Speech(BaseModel):
    """What a recording held (silero-vad speech detection and level measures)."""

    seconds: float
    speech_seconds: float = Field(description="net speech used")
    peak: float
    speech_level_dbfs: float
    clipped_fraction: float
    snr_db: float | None


class ContrastResult(BaseModel):
    score: float
    threshold: float
    same_speaker: bool
    probability_same: float | None = Field(
        None, description="calibrated probability of one speaker (models calibrated with eval.py --fit_calibration)"
    )
    speech: list[Speech] = Field(description="file1's and file2's speech")


class NewRecording(Speech):
    consistency: float | None = Field(description="similarity to the speaker's other recordings (null: no other)")


class RegisterResult(BaseModel):
    name: str
    recordings: int
    new: list[NewRecording]
    warnings: list[str] = Field(description="problems worth re-recording for: noise, clipping, mismatch, too little")


class RecognizeResult(BaseModel):
    name: str | None
    score: float
    runner_up: str | None
    runner_up_score: float | None
    best: str | None = Field(None, description="top-ranked speaker (also when name is null); score is theirs")
    threshold: float
    speech: Speech | None


class SpeakersResult(BaseModel):
    speakers: dict[str, int]


class RemoveResult(BaseModel):
    removed: str


class HealthResult(BaseModel):
    status: str
    model: str
    speakers: int
    threshold: float  # /recognize (1:N)
    contrast_threshold: float  # /contrast (1:1)


class ErrorResult(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResult, "description": "undecodable, too short or silent audio; invalid speaker name"},
    413: {"model": ErrorResult, "description": "upload larger than --max_upload_mb or longer than --max_seconds"},
    422: {"model": ErrorResult, "description": "a form field is missing"},
}


# audio uploads


def _upload_name(upload: UploadFile, field: str) -> str:
    # the client's file name only labels error messages; keep it printable and short
    name = "".join(ch for ch in (upload.filename or "") if ch.isprintable())[:100]
    return name or field


class _BodyLimit:
    """ASGI middleware: 413 when a request body is larger than its endpoint allows.

    Checks the Content-Length header first (nothing is read), then counts the bytes
    actually received, so a chunked upload without Content-Length is cut off too.
    """

    def __init__(
        self, app: Any, limit_for: Callable[[str], tuple[int, str] | None], body_seconds: float = 60.0
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.body_seconds = body_seconds  # a client that trickles its upload is cut off (408) after this

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        rule = self.limit_for(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        limit, explain = rule
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_413(send, f"upload is {int(declared) / 2**20:.1f} MB; {explain}")
            return
        received = 0
        started = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_seconds

        async def limited_receive() -> dict:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise HTTPException(
                    408, f"request body not received within {self.body_seconds:g} s (--request_timeout)"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # an HTTPException passes through FastAPI's body parsing unchanged -> JSON 413
                    raise HTTPException(413, f"upload is larger than {limit / 2**20:.1f} MB; {explain}")
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if exc.status_code not in (408, 413) or started:
                raise
            await _send_error(send, exc.status_code, str(exc.detail))


async def _send_413(send: Callable, detail: str) -> None:
    await _send_error(send, 413, detail)


async def _send_error(send: Callable, status: int, detail: str) -> None:
    """A JSON error that also closes the connection (the rest of the body is never read)."""
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def timed_protocol(header_seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers: a client that opens
    connections and trickles its headers (slowloris) is disconnected instead of holding them forever.
    (Bodies have their own deadline in _BodyLimit; idle keep-alive connections, uvicorn's own.)"""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:  # between requests: the next one's headers
                self._arm()
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before or self.transport.get_protocol() is not self:
                self._disarm()  # a request's headers are complete, or the connection became a WebSocket

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and self.transport.get_protocol() is self:
                self.transport.close()

    return TimedH11Protocol


# who may call: Host allow-list (DNS rebinding), same-origin writes (CSRF), optional API key, page headers

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
OPEN_PATHS = ("/", "/health", "/openapi.json", "/docs")  # no API key needed (no data in or out)
PAGE_CSP = (
    "default-src 'self'; script-src 'self' blob:; worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
DOCS_CSP = PAGE_CSP.replace("script-src 'self' blob:", "script-src 'self' 'unsafe-inline'")  # Swagger UI's init


def _host_name(host_header: str) -> str:
    """'example.com:8000' -> 'example.com', '[::1]:8000' -> '::1'."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class _Guard:
    """ASGI middleware in front of everything: answers with one JSON line and never reaches a route when

    - the Host header is not a loopback name or one of --allowed_hosts (400: a DNS-rebinding page cannot
      talk to the service under its own name);
    - a state-changing request (POST, PUT, PATCH, DELETE) comes from another origin: its Origin differs
      from this server's, or the browser marks it cross-site in Sec-Fetch-Site (403: another web page
      cannot enrol or delete voices through the user's browser);
    - an API key is set and the request does not carry `Authorization: Bearer KEY` (401), except the page,
      its static files, /health and the API docs.
    Every response gets a Content-Security-Policy, X-Frame-Options, nosniff and no referrer.
    """

    def __init__(self, app: Any, allowed_hosts: Sequence[str], api_key: str | None) -> None:
        self.app = app
        self.allowed_hosts = {h.lower() for h in (*LOOPBACK_HOSTS, *allowed_hosts)}
        self.api_key = api_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "websocket":
            # a WebSocket ignores CORS: any page may open one, so its Origin must be this server's
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
            # wss behind an HTTPS proxy (X-Forwarded-Proto) is an https page's origin, ws an http one's
            scheme = "https" if scope.get("scheme") == "wss" else "http"
            refusal = self.refusal({**scope, "method": "POST", "scheme": scheme}, headers, websocket=True)
            if refusal is not None:
                await send({"type": "websocket.close", "code": 1008, "reason": refusal[1][:120]})
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        refusal = self.refusal(scope, headers)
        csp = DOCS_CSP if scope.get("path", "").startswith("/docs") else PAGE_CSP

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", csp.encode()), (b"x-frame-options", b"DENY"),
                         (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]  # fmt: skip
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if refusal is None and scope.get("method") == "OPTIONS":
            # what the path allows, and no CORS permission: another origin's preflight still fails
            allow = "GET, HEAD, POST, DELETE, OPTIONS"
            await Response(status_code=204, headers={"Allow": allow})(scope, receive, send_with_headers)
            return
        if refusal is None and scope.get("method") == "HEAD":  # a GET without its body

            async def send_head(message: dict) -> None:
                if message["type"] == "http.response.body":
                    message = {**message, "body": b""}
                await send_with_headers(message)

            await self.app({**scope, "method": "GET"}, receive, send_head)
            return
        if refusal is None:
            await self.app(scope, receive, send_with_headers)
            return
        status, detail = refusal
        extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
        response = JSONResponse({"detail": detail}, status_code=status, headers=extra)
        await response(scope, receive, send_with_headers)

    def refusal(self, scope: dict, headers: dict[str, str], websocket: bool = False) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if _host_name(host).lower() not in self.allowed_hosts:
            return 400, f"host not allowed: {host[:100]!r} (start the server with --allowed_hosts to add it)"
        if scope.get("method", "GET") in WRITE_METHODS:
            origin = headers.get("origin")
            own = f"{scope.get('scheme', 'http')}://{host}"
            if origin is not None and origin != own:
                return 403, f"cross-origin request refused (Origin {origin[:100]!r} is not {own!r})"
            if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return 403, "cross-site request refused (Sec-Fetch-Site)"
        path = scope.get("path", "")
        if self.api_key and not (path in OPEN_PATHS or path.startswith(("/static/", "/docs"))):
            given = headers.get("authorization", "")
            if websocket:  # a browser cannot set headers on a WebSocket: the key comes as ?key=
                from urllib.parse import parse_qs

                keys = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("key", [""])
                given = f"Bearer {keys[0]}"
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return 401, "missing or wrong API key (send Authorization: Bearer KEY)"
        return None


# the service's state: set up once by create_app, shared by every request


@dataclass
class Service:
    """The loaded model, the library and the limits every route works with.

    Two operating points, as in the command-line tools: /contrast (1:1, like infer_contrast.py) uses
    `threshold`; /recognize (1:N, like infer_recognition.py) uses the library's `recognition_threshold`.
    `model_slot` bounds how many requests run the model at once (memory and CPU stay bounded under load).
    SpeakerDB flocks the folder against other processes; `db_lock` makes this process's writers (register,
    remove) take turns. Readers never take it: sync() has SpeakerDB's own short lock and recognize() reads
    an immutable snapshot, so /speakers and /recognize do not wait while a registration is being embedded.
    """

    embedder: Any
    db: Any
    max_upload_mb: float
    max_seconds: float
    threshold: float
    recognition_threshold: float
    model_slot: threading.BoundedSemaphore
    db_lock: threading.RLock = field(default_factory=threading.RLock)
    threshold_given: bool = False  # --threshold: calibration never replaces it
    decode_slot: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(2))
    live_sessions: int = 0  # open /live WebSockets (changed on the event loop only)

    def contrast_threshold(self, speech_seconds: float) -> float:
        """The 1:1 threshold for a pair whose shorter recording holds `speech_seconds` of speech: a calibrated
        library measured it by length, otherwise the one threshold."""
        if self.threshold_given or getattr(self.db, "calibration", None) is None:
            return self.threshold
        return float(self.db.verification_threshold_for(speech_seconds))

    def read_upload(self, upload: UploadFile, field: str, min_seconds: float = MIN_SPEECH_SECONDS) -> Recording:
        """An uploaded file as checked 16 kHz mono speech with its SpeechReport (utils.audio.prepare_recording,
        like every entry point)."""
        name = _upload_name(upload, field)
        max_bytes = int(self.max_upload_mb * 2**20)
        data = upload.file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"audio file {name} is larger than {self.max_upload_mb:g} MB (--max_upload_mb)")
        with self.decode_slot:  # decoded audio is the big allocation: a bounded number at once, whatever the load
            return prepare_recording(data, name=name, min_seconds=min_seconds, max_seconds=self.max_seconds,
                                     min_speech_seconds=min_seconds if min_seconds > MIN_SPEECH_SECONDS else None)  # fmt: skip


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
router = APIRouter()


# errors: always JSON {"detail": "<one line>"}, never a 500 for bad input


async def audio_error(request: Request, exc: AudioError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=413 if isinstance(exc, AudioTooLongError) else 400)


async def user_error(request: Request, exc: UserError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": _validation_message(exc)}, status_code=422)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal server error: {type(exc).__name__}"}, status_code=500)


# pages


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def swagger_ui(request: Request) -> Any:
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="voiceprint API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon-32x32.png",
    )


def _swagger_ui_assets() -> str | None:
    """Swagger UI's files from the swagger-ui-bundle package, so /docs works offline (no CDN)."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return str(swagger_ui_bundle.swagger_ui_path)


# API (sync endpoints: FastAPI runs them in its threadpool, so the model never blocks the event loop)


@router.post("/contrast", response_model=ContrastResult, responses=ERRORS, summary="Are two recordings one voice?")
def contrast(
    svc: ServiceDep,
    file1: Annotated[UploadFile, File(description="first recording")],
    file2: Annotated[UploadFile, File(description="second recording")],
) -> dict:
    rec1, rec2 = svc.read_upload(file1, "file1"), svc.read_upload(file2, "file2")
    with svc.model_slot:
        emb1, speech1 = svc.embedder.embed_recording(rec1, _upload_name(file1, "file1"))
        emb2, speech2 = svc.embedder.embed_recording(rec2, _upload_name(file2, "file2"))
    score = float(np.dot(emb1, emb2))
    probability = None
    if svc.embedder.operating_points.calibration is not None:  # eval.py --fit_calibration stored one
        from utils.calibration import ScoreCalibration

        calibration = ScoreCalibration.from_dict(svc.embedder.operating_points.calibration)
        probability = float(calibration.probability(score, speech1.seconds, speech2.seconds))
    threshold = svc.contrast_threshold(min(speech1.speech_seconds, speech2.speech_seconds))
    return {"score": score, "threshold": threshold, "same_speaker": score >= threshold,
            "probability_same": probability, "speech": [speech1.to_dict(), speech2.to_dict()]}  # fmt: skip


@router.post(
    "/register",
    response_model=RegisterResult,
    responses=ERRORS,
    summary="Register a speaker, or add recordings (add=true)",
)
def register(
    svc: ServiceDep,
    name: Annotated[str, Form(description="speaker name")],
    files: Annotated[list[UploadFile], File(description="one or more recordings of the speaker")],
    add: Annotated[
        bool,
        Form(description="add recordings to a registered speaker; each must be recognised as that speaker"),
    ] = False,
) -> dict:
    from utils.speaker_db import (
        MIN_REGISTER_SECONDS,
        SpeakerExistsError,
        UnknownSpeakerError,
        VoiceMismatchError,
        validate_name,
    )

    name = validate_name(name)  # reserved names: SpeakerDB.register, which knows who exists
    if len(files) > MAX_REGISTER_FILES:
        raise HTTPException(400, f"at most {MAX_REGISTER_FILES} files per registration, got {len(files)}")
    # all decoded and checked first (named by file), so one bad file registers nothing
    recordings = [svc.read_upload(f, "files", MIN_REGISTER_SECONDS) for f in files]
    try:
        with svc.db_lock, svc.model_slot:
            # checked once here: the library does not detect speech again
            enrolment = svc.db.enrol(name, recordings, add=add)
    except UnknownSpeakerError as exc:
        raise HTTPException(404, str(exc)) from None
    except SpeakerExistsError as exc:
        raise HTTPException(409, str(exc)) from None
    except VoiceMismatchError as exc:
        raise HTTPException(403, str(exc)) from None
    return enrolment.to_dict()


@router.post(
    "/recognize",
    response_model=RecognizeResult,
    responses={**ERRORS, 409: {"model": ErrorResult, "description": "no speaker is registered"}},
    summary="Who is speaking? (name is null for an unknown voice)",
)
def recognize(svc: ServiceDep, file: Annotated[UploadFile, File(description="recording to identify")]) -> dict:
    from utils.speaker_db import SpeakerDBError

    wav = svc.read_upload(file, "file")
    svc.db.refresh()  # another process (infer_recognition.py) may have registered or removed someone since
    try:
        with svc.model_slot:  # no db_lock: recognition reads an immutable snapshot of the library
            result = svc.db.recognize(wav, sample_rate=SAMPLE_RATE)
    except SpeakerDBError as exc:  # the library is empty
        raise HTTPException(409, str(exc)) from None
    return {
        "name": result.name,
        "score": float(result.score),
        "runner_up": result.runner_up,
        "runner_up_score": None if result.runner_up_score is None else float(result.runner_up_score),
        "best": result.best,
        "threshold": float(result.threshold),  # a library calibrated by length: this recording's
        "speech": result.speech.to_dict() if result.speech is not None else None,
    }


@router.get("/speakers", response_model=SpeakersResult, summary="Registered speakers and their recording counts")
def speakers(svc: ServiceDep) -> dict:
    svc.db.sync()  # pick up what other processes (infer_recognition.py) changed
    return {"speakers": {str(k): int(v) for k, v in svc.db.counts().items()}}


@router.delete(
    "/speakers/{name:path}",
    response_model=RemoveResult,
    responses={400: ERRORS[400], 404: {"model": ErrorResult, "description": "unknown speaker"}},
    summary="Remove a speaker and their recordings",
)
def remove(svc: ServiceDep, name: str) -> dict:
    from utils.speaker_db import SpeakerDBError, validate_name

    name = validate_name(name)
    with svc.db_lock:
        svc.db.sync()
        if name not in svc.db.names():
            raise HTTPException(404, f"unknown speaker: {name}")
        try:
            svc.db.remove(name)
        except SpeakerDBError as exc:  # removed by another process since the check
            raise HTTPException(404, str(exc)) from None
    return {"removed": name}


@router.get("/health", response_model=HealthResult, summary="Liveness, model and library size")
def health(svc: ServiceDep) -> dict:
    svc.db.refresh()
    return {
        "status": "ok",
        "model": str(svc.embedder.model_path),
        "speakers": len(svc.db),
        "threshold": svc.recognition_threshold,
        "contrast_threshold": svc.threshold,
    }


def _live_push(svc: Service, recognizer: Any, samples: np.ndarray) -> list:
    with svc.model_slot:  # the model is shared with the HTTP routes: the same bound
        return recognizer.push(samples)


@router.websocket("/live")
async def live(websocket: WebSocket) -> None:
    """Who is speaking now: the client sends 16 kHz mono 16-bit PCM (binary messages, any size up to
    LIVE_MESSAGE_BYTES); the server answers with a JSON LiveState every 0.25 s of audio (utils/live.py)."""
    from starlette.concurrency import run_in_threadpool

    from utils.live import LiveRecognizer

    svc: Service = websocket.app.state.service
    await websocket.accept()
    if svc.live_sessions >= LIVE_MAX_SESSIONS:
        await websocket.close(code=1013, reason=f"{LIVE_MAX_SESSIONS} live sessions are open: try again later")
        return
    svc.live_sessions += 1
    try:
        recognizer = LiveRecognizer(svc.db)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:  # a text message (receive_bytes() raised KeyError on one)
                await websocket.close(code=1003, reason="send audio as binary messages of 16-bit PCM, not text")
                return
            if len(data) > LIVE_MESSAGE_BYTES:
                await websocket.close(
                    code=1009, reason=f"send 16-bit PCM in pieces of at most {LIVE_MESSAGE_BYTES} bytes"
                )
                return
            if len(data) % 2:
                await websocket.close(code=1003, reason="16-bit PCM has an even number of bytes")
                return
            if recognizer.received / SAMPLE_RATE > LIVE_MAX_SECONDS:
                await websocket.close(code=1008, reason=f"a live session lasts at most {LIVE_MAX_SECONDS:g} s")
                return
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0

            for state in await run_in_threadpool(_live_push, svc, recognizer, samples):
                await websocket.send_json(state.to_dict())
    except WebSocketDisconnect:
        return
    finally:
        svc.live_sessions -= 1


# the app


def create_app(
    embedder: Any,
    db: Any,
    max_upload_mb: float = 10.0,
    max_seconds: float = 60.0,
    threshold: float | None = None,
    inference_slots: int | None = None,
    allowed_hosts: Sequence[str] = (),
    api_key: str | None = None,
    request_timeout: float = 60.0,
) -> FastAPI:
    """The web service around a loaded `Embedder` and a `SpeakerDB` (see main() for the flags).

    /contrast uses `threshold`, by default the model's EER threshold; /recognize uses the library's own
    `db.threshold` (SpeakerDB(threshold=...), by default the model's stricter recognition threshold).
    `inference_slots` bounds concurrent model runs; default: CPU cores / torch threads.
    """
    if inference_slots is None:
        import torch

        inference_slots = max(1, (os.cpu_count() or 1) // max(1, torch.get_num_threads()))
    docs_assets = _swagger_ui_assets()
    app = FastAPI(
        docs_url=None if docs_assets else "/docs",  # served below from local files when they are installed
        redoc_url=None,  # ReDoc would load its script and fonts from a CDN: /docs is the local one
        title="voiceprint",
        summary="Speaker recognition: compare two voices, register speakers, recognise who is speaking.",
        description=(
            f"Uploads: WAV/FLAC/OGG/MP3, at most {max_upload_mb:g} MB and {max_seconds:g} s per file. "
            'Errors are JSON `{"detail": "..."}`.'
        ),
    )
    app.state.service = Service(
        embedder=embedder,
        db=db,
        max_upload_mb=max_upload_mb,
        max_seconds=max_seconds,
        # a calibrated library's own 1:1 threshold wins over the model's (infer_recognition.py --calibrate)
        threshold=threshold
        if threshold is not None
        else (
            db.verification_threshold
            if getattr(db, "calibration", None) is not None
            else embedder.operating_points.resolve("verification", None)
        ),  # fmt: skip
        recognition_threshold=float(db.threshold),
        threshold_given=threshold is not None,
        model_slot=threading.BoundedSemaphore(inference_slots),
        decode_slot=threading.BoundedSemaphore(inference_slots),
    )
    app.add_middleware(
        _BodyLimit, limit_for=lambda path: _request_limit(path, max_upload_mb), body_seconds=request_timeout
    )
    app.add_middleware(_Guard, allowed_hosts=allowed_hosts, api_key=api_key)  # added last: runs first
    app.add_exception_handler(AudioError, audio_error)
    app.add_exception_handler(UserError, user_error)  # an invalid speaker name, a library problem
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
    if docs_assets:
        app.mount("/docs-assets", StaticFiles(directory=docs_assets), name="docs-assets")
        app.add_api_route("/docs", swagger_ui, include_in_schema=False)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
    return app


def _request_limit(path: str, max_upload_mb: float) -> tuple[int, str] | None:
    """(largest request body, its explanation) for the upload endpoints; None for the others."""
    path = path.rstrip("/") or "/"
    files = FILES_PER_REQUEST.get(path)
    if files is None:
        return None
    per_file = f"{files} files of at most {max_upload_mb:g} MB each" if files > 1 else f"{max_upload_mb:g} MB"
    if path == "/register":
        per_file = f"at most {files * max_upload_mb:g} MB in one request ({MAX_REGISTER_FILES} files at most)"
    return files * int(max_upload_mb * 2**20) + MULTIPART_SLACK, f"{path} accepts {per_file} (--max_upload_mb)"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ()) if x not in ("body", "query", "path", "header")]
        field = ".".join(loc) or "request"
        if error.get("type") == "missing":
            parts.append(f"missing field '{field}'")
        else:
            parts.append(f"field '{field}': {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # service
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--max_upload_mb", type=float, default=10.0, help="largest accepted audio file, in MB")
    parser.add_argument(
        "--request_timeout",
        type=float,
        default=60.0,
        help="seconds a client has to send a request's headers (at most 10 s) and its whole body; slower "
        "connections are closed",
    )
    parser.add_argument("--max_seconds", type=float, default=60.0, help="longest accepted recording, in seconds")
    parser.add_argument(
        "--api_key",
        default=os.environ.get("VOICEPRINT_API_KEY"),
        help="require 'Authorization: Bearer KEY' on the API (default: $VOICEPRINT_API_KEY; needed beyond loopback)",
    )
    parser.add_argument(
        "--allowed_hosts",
        nargs="*",
        default=[],
        help="host names clients may use besides localhost/127.0.0.1/::1 (e.g. the server's LAN name)",
    )
    # model and library
    parser.add_argument("--model_path", default="models/voiceprint_resnet34.pt", help="inference model file")
    parser.add_argument(
        "--audio_db", default="audio_db", help="voiceprint library folder (shared with infer_recognition.py)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cosine similarity that counts as the same speaker, for /contrast and /recognize "
        "(default: the model's EER threshold for /contrast, its stricter 1:N threshold for /recognize)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--verbose", action="store_true", help="print the whole configuration first")
    return parser


def check_listen_address(host: str, port: int) -> None:
    """Fail in one line, before the model loads, when the address cannot be listened on (a port in use made
    uvicorn log an error among its start-up lines and exit 3)."""
    import socket

    try:
        # "" is every interface to asyncio: passive lookup of None gives the same wildcard address
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        fail(f"--host {host}: {exc.strerror}")
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            hint = ": another server is running there (choose one with --port)" if exc.errno == errno.EADDRINUSE else ""
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}")


KEY_IN_QUERY = re.compile(r"(?i)([?&]key=)[^&\s\"]*")


def hide_api_key(record: logging.LogRecord) -> bool:
    """uvicorn logs each request's path with its query string, and the page's WebSocket has to send the API
    key as ?key= (a browser cannot set its headers): the key never reaches the log."""
    if isinstance(record.args, tuple):
        record.args = tuple(KEY_IN_QUERY.sub(r"\1***", arg) if isinstance(arg, str) else arg for arg in record.args)
    if isinstance(record.msg, str):
        record.msg = KEY_IN_QUERY.sub(r"\1***", record.msg)
    return True


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.verbose:
        print_arguments(args)
    if not 0 < args.port < 65536:
        fail(f"--port must be in 1..65535, got {args.port}")
    if not (args.max_upload_mb > 0 and args.max_seconds > 0):  # also rejects NaN
        fail("--max_upload_mb and --max_seconds must be positive")
    if not (0 < args.request_timeout < 1e6):
        fail(f"--request_timeout must be a positive number of seconds, got {args.request_timeout}")
    check_threshold(args.threshold)
    if args.host not in LOOPBACK_HOSTS and not args.api_key:
        fail(f"--host {args.host} listens beyond this machine: set --api_key KEY (or VOICEPRINT_API_KEY)")
    if args.api_key is not None and len(args.api_key) < 16:
        fail("--api_key must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_hex(16))')")
    check_listen_address(args.host, args.port)

    import torch
    import uvicorn

    from utils.checkpoint import CheckpointError
    from utils.embedder import Embedder
    from utils.speaker_db import SpeakerDB, SpeakerDBError

    # model: loaded once; each request runs it on few threads so concurrent requests share the cores
    torch.set_num_threads(max(1, min(4, (os.cpu_count() or 1) // 2)))
    try:
        embedder = Embedder(args.model_path, device=args.device)
        db = SpeakerDB(args.audio_db, embedder, threshold=args.threshold)
        allowed = [*args.allowed_hosts, *([args.host] if args.host not in ("0.0.0.0", "::") else [])]
        app = create_app(embedder, db, args.max_upload_mb, args.max_seconds, threshold=args.threshold,
                         allowed_hosts=allowed, api_key=args.api_key, request_timeout=args.request_timeout)  # fmt: skip
    except (AudioError, CheckpointError, SpeakerDBError, ValueError) as exc:
        fail(str(exc))
    print(f"model {args.model_path} on {embedder.device}; {len(db)} speakers in {args.audio_db}")
    print(f"page: http://{args.host}:{args.port}/   API docs: http://{args.host}:{args.port}/docs", flush=True)

    # service
    # WebSocket messages: no compression and uvicorn's own size limit at ours (it accepted 16 MiB
    # permessage-deflate messages, inflated and queued before /live could refuse them: 1 MB sent, 450 MB held)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5,
                            http=timed_protocol(min(10.0, args.request_timeout)), ws_max_size=LIVE_MESSAGE_BYTES,
                            ws_per_message_deflate=False)  # fmt: skip
    for name in ("uvicorn.access", "uvicorn.error"):  # after uvicorn.Config has set up its logging
        logging.getLogger(name).addFilter(hide_api_key)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn's graceful shutdown, then exit 0
        uvicorn.Server(config).run()


if __name__ == "__main__":
    run_cli(main)
