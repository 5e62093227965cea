"""Speaker-recognition web service: compare, register and recognise voices over HTTP.

Usage:
    python infer_server.py                                   # http://127.0.0.1:8000
    python infer_server.py --host 0.0.0.0 --port 8080 --audio_db audio_db --threshold 0.35

    open http://127.0.0.1:8000/       the microphone page (register, recognise, compare)
    open http://127.0.0.1:8000/docs   the API (Swagger UI, served locally)

    curl -F file1=@audio/a_1.wav -F file2=@audio/a_2.wav http://127.0.0.1:8000/contrast
    curl -F name=alice -F files=@audio/a_1.wav http://127.0.0.1:8000/register     # files= may repeat
    curl -F file=@audio/a_2.wav http://127.0.0.1:8000/recognize
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

import argparse
import io
import logging
import math
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import soundfile as sf
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from utils.audio import MAX_RATE, MIN_RATE, SAMPLE_RATE, AudioError, check_speech, resample
from utils.config import HelpFormatter, fail, print_arguments
from utils.errors import run_cli

STATIC_DIR = Path(__file__).resolve().parent / "static"
MIN_SECONDS = 0.3  # same floor as utils.embedder
MAX_REGISTER_FILES = 16
MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and the name field on top of the audio bytes
# how many audio files each endpoint takes: its request body may hold that many --max_upload_mb files
FILES_PER_REQUEST = {"/contrast": 2, "/recognize": 1, "/register": MAX_REGISTER_FILES}

log = logging.getLogger("infer_server")


# responses (documented at /docs)


class ContrastResult(BaseModel):
    score: float
    threshold: float
    same_speaker: bool


class RegisterResult(BaseModel):
    name: str
    recordings: int


class RecognizeResult(BaseModel):
    name: str | None
    score: float
    runner_up: str | None
    runner_up_score: float | None
    best: str | None = Field(None, description="top-ranked speaker (also when name is null); score is theirs")
    threshold: float


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


class TooLongError(AudioError):
    """A recording longer than --max_seconds (answered with 413)."""


def decode_audio_bytes(
    data: bytes,
    name: str = "audio",
    max_seconds: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float = MIN_SECONDS,
) -> np.ndarray:
    """Decode an uploaded WAV/FLAC/OGG/MP3 to mono float32 at `sample_rate`, checked for usable speech.

    The messages match utils.audio.load_audio/check_speech, with the upload's
    file name in place of a path. A recording longer than `max_seconds` raises
    TooLongError before it is decoded in full, so memory stays bounded.
    """
    if not data:
        raise AudioError(f"audio file is empty (0 bytes): {name}")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = int(f.samplerate)
            if not MIN_RATE <= rate <= MAX_RATE:
                # a header claiming e.g. 1 Hz would be "resampled" into gigabytes
                raise AudioError(f"audio file {name} has an implausible sample rate of {rate} Hz")
            limit = None if max_seconds is None else int(max_seconds * rate)
            if limit is not None and f.frames > limit:
                raise TooLongError(_too_long(name, f.frames / rate, max_seconds))
            # block by block, each downmixed at once: memory holds one mono copy, whatever the channel count;
            # one frame past the limit tells a too-long file apart when the header's length is wrong
            blocks, total = [], 0
            for block in f.blocks(blocksize=rate, dtype="float32", always_2d=True):
                blocks.append(block.mean(axis=1) if block.shape[1] > 1 else block[:, 0].copy())
                total += len(block)
                if limit is not None and total > limit:
                    break
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises several types for bad data
        # soundfile names the stream by its repr (<_io.BytesIO object at 0x...>): name the upload instead
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", repr(name), _short(exc))
        raise AudioError(f"cannot decode audio file {name}: {reason}") from None
    if limit is not None and total > limit:
        raise TooLongError(_too_long(name, None, max_seconds))
    if total == 0:
        raise AudioError(f"audio file {name} has no samples")
    wav = np.concatenate(blocks).astype(np.float32, copy=False)
    if not np.isfinite(wav).all():
        raise AudioError(f"audio file {name} contains NaN or infinite samples")
    wav = resample(wav, rate, sample_rate)
    check_speech(wav, sample_rate, min_seconds, name)
    return np.ascontiguousarray(wav, dtype=np.float32)


def _too_long(name: str, seconds: float | None, max_seconds: float) -> str:
    length = f"{seconds:.1f} s long" if seconds is not None else "too long"
    return f"audio file {name} is {length}; the server accepts at most {max_seconds:g} s per recording (--max_seconds)"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _upload_name(upload: UploadFile, field: str) -> str:
    # the client's file name only labels error messages; keep it printable and short
    name = "".join(ch for ch in (upload.filename or "") if ch.isprintable())[:100]
    return name or field


class _BodyLimit:
    """ASGI middleware: 413 when a request body is larger than its endpoint allows.

    Checks the Content-Length header first (nothing is read), then counts the bytes
    actually received, so a chunked upload without Content-Length is cut off too.
    """

    def __init__(self, app: Any, limit_for: Callable[[str], tuple[int, str] | None]) -> None:
        self.app = app
        self.limit_for = limit_for

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

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
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
            if exc.status_code != 413 or started:
                raise
            await _send_413(send, str(exc.detail))


async def _send_413(send: Callable, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# the app


def _swagger_ui_assets() -> str | None:
    """Swagger UI's files from the swagger-ui-bundle package, so /docs works offline (no CDN)."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return str(swagger_ui_bundle.swagger_ui_path)


def create_app(
    embedder: Any,
    db: Any,
    max_upload_mb: float = 10.0,
    max_seconds: float = 60.0,
    threshold: float | None = None,
    inference_slots: int | None = None,
) -> FastAPI:
    """The web service around a loaded `Embedder` and a `SpeakerDB` (see main() for the flags).

    Two operating points, as in the command-line tools: /contrast (1:1, like
    infer_contrast.py) uses `threshold`, by default the model's EER threshold;
    /recognize (1:N, like infer_recognition.py) uses the library's own
    `db.threshold` (SpeakerDB(threshold=...), by default the model's stricter
    recognition threshold). `inference_slots` bounds how many requests run the
    model at once (memory and CPU stay bounded under load); default: CPU cores
    / torch threads.
    """
    from utils.speaker_db import MIN_REGISTER_SECONDS, SpeakerDBError, validate_name

    recognition_threshold = float(db.threshold)
    threshold = embedder.operating_points.resolve("verification", threshold)
    max_bytes = int(max_upload_mb * 2**20)
    if inference_slots is None:
        import torch

        inference_slots = max(1, (os.cpu_count() or 1) // max(1, torch.get_num_threads()))
    model_slot = threading.BoundedSemaphore(inference_slots)
    # SpeakerDB flocks the folder against other processes; this lock makes this process's writers (register,
    # remove) take turns. Readers never take it: sync() has SpeakerDB's own short lock and recognize() reads
    # an immutable snapshot, so /speakers and /recognize do not wait while a registration is being embedded.
    db_lock = threading.RLock()

    def read_upload(upload: UploadFile, field: str, min_seconds: float = MIN_SECONDS) -> np.ndarray:
        name = _upload_name(upload, field)
        data = upload.file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"audio file {name} is larger than {max_upload_mb:g} MB (--max_upload_mb)")
        return decode_audio_bytes(data, name, max_seconds, min_seconds=min_seconds)

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
    app.add_middleware(_BodyLimit, limit_for=lambda path: _request_limit(path, max_upload_mb))
    if docs_assets:
        from fastapi.openapi.docs import get_swagger_ui_html

        app.mount("/docs-assets", StaticFiles(directory=docs_assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        def docs() -> Any:
            return get_swagger_ui_html(
                openapi_url="/openapi.json",
                title="voiceprint API",
                swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                swagger_css_url="/docs-assets/swagger-ui.css",
                swagger_favicon_url="/docs-assets/favicon-32x32.png",
            )

    # errors: always JSON {"detail": "<one line>"}, never a 500 for bad input

    @app.exception_handler(AudioError)
    async def audio_error(request: Request, exc: AudioError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413 if isinstance(exc, TooLongError) else 400)

    @app.exception_handler(SpeakerDBError)
    async def db_error(request: Request, exc: SpeakerDBError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal server error: {type(exc).__name__}"}, status_code=500)

    # pages

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # API (sync endpoints: FastAPI runs them in its threadpool, so the model never blocks the event loop)

    @app.post("/contrast", response_model=ContrastResult, responses=ERRORS, summary="Are two recordings one voice?")
    def contrast(
        file1: Annotated[UploadFile, File(description="first recording")],
        file2: Annotated[UploadFile, File(description="second recording")],
    ) -> dict:
        wav1, wav2 = read_upload(file1, "file1"), read_upload(file2, "file2")
        with model_slot:
            emb1 = embedder.embed_array(wav1, SAMPLE_RATE, _upload_name(file1, "file1"))
            emb2 = embedder.embed_array(wav2, SAMPLE_RATE, _upload_name(file2, "file2"))
        score = float(np.dot(emb1, emb2))
        return {"score": score, "threshold": threshold, "same_speaker": score >= threshold}

    @app.post("/register", response_model=RegisterResult, responses=ERRORS, summary="Add recordings of a speaker")
    def register(
        name: Annotated[str, Form(description="speaker name")],
        files: Annotated[list[UploadFile], File(description="one or more recordings of the speaker")],
    ) -> dict:
        name = validate_name(name)
        if len(files) > MAX_REGISTER_FILES:
            raise HTTPException(400, f"at most {MAX_REGISTER_FILES} files per registration, got {len(files)}")
        # all decoded and checked first (named by file), so one bad file registers nothing
        wavs = [read_upload(f, "files", MIN_REGISTER_SECONDS) for f in files]
        with db_lock, model_slot:
            count = db.register(name, wavs, sample_rate=SAMPLE_RATE)
        return {"name": name, "recordings": int(count)}

    @app.post(
        "/recognize",
        response_model=RecognizeResult,
        responses={**ERRORS, 409: {"model": ErrorResult, "description": "no speaker is registered"}},
        summary="Who is speaking? (name is null for an unknown voice)",
    )
    def recognize(file: Annotated[UploadFile, File(description="recording to identify")]) -> dict:
        wav = read_upload(file, "file")
        db.refresh()  # another process (infer_recognition.py) may have registered or removed someone since
        try:
            with model_slot:  # no db_lock: recognition reads an immutable snapshot of the library
                result = db.recognize(wav, sample_rate=SAMPLE_RATE)
        except SpeakerDBError as exc:  # the library is empty
            raise HTTPException(409, str(exc)) from None
        return {
            "name": result.name,
            "score": float(result.score),
            "runner_up": result.runner_up,
            "runner_up_score": None if result.runner_up_score is None else float(result.runner_up_score),
            "best": result.best,
            "threshold": recognition_threshold,
        }

    @app.get("/speakers", response_model=SpeakersResult, summary="Registered speakers and their recording counts")
    def speakers() -> dict:
        db.sync()  # pick up what other processes (infer_recognition.py) changed
        return {"speakers": {str(k): int(v) for k, v in db.counts().items()}}

    @app.delete(
        "/speakers/{name:path}",
        response_model=RemoveResult,
        responses={400: ERRORS[400], 404: {"model": ErrorResult, "description": "unknown speaker"}},
        summary="Remove a speaker and their recordings",
    )
    def remove(name: str) -> dict:
        name = validate_name(name)
        with db_lock:
            db.sync()
            if name not in db.names():
                raise HTTPException(404, f"unknown speaker: {name}")
            try:
                db.remove(name)
            except SpeakerDBError as exc:  # removed by another process since the check
                raise HTTPException(404, str(exc)) from None
        return {"removed": name}

    @app.get("/health", response_model=HealthResult, summary="Liveness, model and library size")
    def health() -> dict:
        db.refresh()
        return {
            "status": "ok",
            "model": str(embedder.model_path),
            "speakers": len(db),
            "threshold": recognition_threshold,
            "contrast_threshold": threshold,
        }

    return app


def _request_limit(path: str, max_upload_mb: float) -> tuple[int, str] | None:
    """(largest request body, its explanation) for the upload endpoints; None for the others."""
    path = path.rstrip("/") or "/"
    files = FILES_PER_REQUEST.get(path)
    if files is None:
        return None
    per_file = f"{files} files of at most {max_upload_mb:g} MB each" if files > 1 else f"{max_upload_mb:g} MB"
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
    parser.add_argument("--max_seconds", type=float, default=60.0, help="longest accepted recording, in seconds")
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


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.verbose:
        print_arguments(args)
    if not 0 < args.port < 65536:
        fail(f"--port must be in 1..65535, got {args.port}")
    if not (args.max_upload_mb > 0 and args.max_seconds > 0):  # also rejects NaN
        fail("--max_upload_mb and --max_seconds must be positive")
    if args.threshold is not None and not math.isfinite(args.threshold):
        fail(f"--threshold must be a finite number, got {args.threshold}")

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
        app = create_app(embedder, db, args.max_upload_mb, args.max_seconds, threshold=args.threshold)
    except (AudioError, CheckpointError, SpeakerDBError, ValueError) as exc:
        fail(str(exc))
    print(f"model {args.model_path} on {embedder.device}; {len(db)} speakers in {args.audio_db}")
    print(f"page: http://{args.host}:{args.port}/   API docs: http://{args.host}:{args.port}/docs", flush=True)

    # service
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    run_cli(main)
