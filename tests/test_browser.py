"""The microphone page of infer_server.py in a real browser: Debian Chromium (headless) driven by Playwright.

Chromium's fake capture device plays a WAV file as the microphone, so the page's
own code records it (getUserMedia + AudioWorklet), resamples it to 16 kHz and
uploads the WAV it builds. The page registers a speaker from one recording; a
second browser whose microphone plays *other* utterances of the same speaker
recognises them, while two more speakers are in the library. A screenshot goes
to test_artifacts/browser.png.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "test_artifacts" / "browser.png"
CAPTURE_RATE = 48000  # Chromium resamples the fake file to its capture rate; 16 and 44.1 kHz work as well
CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# a CSS selector, not a JS expression: the page's Content-Security-Policy forbids eval, for tests too
STATE_SETTLED = "#result[data-state=ok], #result[data-state=unknown], #result[data-state=error]"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def playwright_api():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="python package playwright is not installed")
    pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -r requirements.txt)")
    with sync_api.sync_playwright() as api:
        yield api


def _dev_files(shared_data: Path, speaker: str, count: int = 8) -> list[Path]:
    """The first `count` dev-clean utterances of 3-12 s (sf.info decodes an MP3 to count frames: stop early)."""
    picked = []
    for path in sorted((shared_data / "librispeech" / "dev-clean" / speaker).glob("*/*.mp3")):
        if 3.0 <= sf.info(str(path)).duration <= 12.0:
            picked.append(path)
            if len(picked) == count:
                break
    return picked


def _fake_microphone(files: list[Path], path: Path) -> Path:
    """Concatenated utterances as a 16-bit WAV at CAPTURE_RATE: what the fake capture device plays (looped)."""
    from utils.audio import load_audio, resample

    wav = np.concatenate([load_audio(f) for f in files])
    sf.write(path, resample(wav, 16000, CAPTURE_RATE), CAPTURE_RATE, subtype="PCM_16")
    return path


def _record(page, slot: str, seconds: float) -> float:
    """Click the slot's record button, let the fake microphone play, click stop; returns the clip length."""
    page.click(f"#record-{slot}")
    page.wait_for_selector('#mic-status[data-state="countdown"]', timeout=5000)  # 3-2-1 first
    page.wait_for_selector('#mic-status[data-state="recording"]', timeout=15000)
    page.wait_for_timeout(seconds * 1000)
    assert re.fullmatch(r"recording \d+\.\d s", page.text_content("#mic-status"))  # time recorded so far
    page.click(f"#record-{slot}")
    clip = page.wait_for_selector(f"#clip-{slot}[data-seconds]", timeout=15000)
    return float(clip.get_attribute("data-seconds"))


def _clip_wav(page, slot: str) -> tuple[np.ndarray, object]:
    """The WAV the page built for a slot (from its <audio> element), decoded here."""
    data = page.evaluate(
        """async (slot) => {
            const response = await fetch(document.querySelector(`#clip-${slot} audio`).src);
            const bytes = new Uint8Array(await response.arrayBuffer());
            let text = "";
            for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
            return btoa(text);
        }""",
        slot,
    )
    raw = base64.b64decode(data)
    return sf.read(io.BytesIO(raw), dtype="float32")[0], sf.info(io.BytesIO(raw))


def _wait_result(page) -> str:
    page.wait_for_selector(STATE_SETTLED, timeout=60000)
    return page.text_content("#result")


def test_register_and_recognise_in_the_page(playwright_api, shared_data: Path, tmp_path: Path) -> None:
    import httpx

    from benchmarks.server_load import ServerProcess

    library = tmp_path / "audio_db"
    server = ServerProcess(library, "--device", "cpu")
    server.start(wait=False)  # the model loads while the microphones and the first browser get ready
    api = httpx.Client(base_url=server.url, timeout=60)
    try:
        alice = _dev_files(shared_data, "777")
        others = {"bob": _dev_files(shared_data, "1272", 3), "carol": _dev_files(shared_data, "1988", 3)}
        register_mic = _fake_microphone(alice[0:2], tmp_path / "register.wav")
        recognise_mic = _fake_microphone(alice[4:6], tmp_path / "recognise.wav")  # other utterances, same voice
        # browser 1: its microphone plays alice's first utterances -> register "alice" from the page
        browser = playwright_api.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={register_mic}"]
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            server.wait_ready()
            for name, files in others.items():
                upload = [("files", (p.name, p.read_bytes())) for p in files]
                assert api.post("/register", data={"name": name}, files=upload).status_code == 200
            page.goto(server.url + "/")
            assert _record(page, "register", 3.0) >= 2.5
            wav, info = _clip_wav(page, "register")
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert float(np.sqrt(np.mean(wav**2))) > 0.01  # real signal, not silence
            # the page warns about a recording too quiet or clipped to trust (the same rule as the command line)
            problems = page.evaluate(
                """() => [levelProblem(new Float32Array(16000).fill(0.003)),
                          levelProblem(new Float32Array(16000).fill(1.0)), levelProblem(new Float32Array(16000).fill(0.3))]"""
            )
            assert problems[0].startswith("too quiet (peak -50 dBFS)") and problems[1].startswith("clipped")
            assert problems[2] == "" and page.get_attribute("#mic-status", "data-state") == "idle"
            page.fill("#name", "alice")
            page.click("#register")
            assert _wait_result(page) == "Registered alice (1 recording)"
            assert errors == []
        finally:
            browser.close()
        assert api.get("/speakers").json()["speakers"] == {"alice": 1, "bob": 3, "carol": 3}
        # the voiceprint the page made is alice's voice: a file of hers the page never heard is recognised
        probe = alice[7]
        assert api.post("/recognize", files={"file": (probe.name, probe.read_bytes())}).json()["name"] == "alice"

        # browser 2: its microphone plays other utterances of alice -> recognise, then compare two recordings
        browser = playwright_api.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={recognise_mic}"]
        )
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/")
            _record(page, "recognize", 2.5)
            page.click("#recognize")
            text = _wait_result(page)
            assert text.startswith("Recognised: alice"), text
            assert page.get_attribute("#result", "data-name") == "alice"
            score = float(page.text_content("#score"))
            assert score > float(page.text_content("#threshold"))
            _record(page, "a", 1.0)
            _record(page, "b", 1.0)
            page.click("#compare")
            assert _wait_result(page).startswith("Same speaker"), page.text_content("#result")
            page.click("#refresh")
            page.wait_for_selector('#speakers li[data-name="alice"]')
            page.click("#recognize")  # back to the recognition for the screenshot
            assert _wait_result(page).startswith("Recognised: alice")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert errors == []
        finally:
            browser.close()
    finally:
        api.close()
        server.stop()
    assert "Traceback" not in server.log(tail=0), server.log()
    assert SCREENSHOT.stat().st_size > 10000


def test_another_origin_cannot_enrol_or_delete(playwright_api, shared_data: Path, tmp_path: Path) -> None:
    """The attack from issue 14, in real Chromium: a page on another origin (another port of this machine)
    posts a real recording to /register and sends DELETE /speakers/NAME, as any web page the user visits
    could. The server refuses both (Origin / Sec-Fetch-Site); the library is untouched."""
    import functools
    import http.server
    import threading

    import httpx

    from benchmarks.server_load import ServerProcess

    evil_root = tmp_path / "evil"
    evil_root.mkdir()
    (evil_root / "voice.wav").write_bytes(_fake_microphone(_dev_files(shared_data, "1988", 1), tmp_path / "v.wav")
                                          .read_bytes())  # fmt: skip
    library = tmp_path / "db"
    with ServerProcess(library, "--device", "cpu") as server:
        victim = httpx.post(f"{server.url}/register", data={"name": "victim"},
                            files=[("files", ("a.mp3", _dev_files(shared_data, "777", 1)[0].read_bytes()))])  # fmt: skip
        assert victim.status_code == 200, victim.text
        (evil_root / "index.html").write_text(f"""<!doctype html><script>
          (async () => {{
            const voice = await (await fetch("voice.wav")).blob();
            const form = new FormData();
            form.append("name", "from_evil_origin");
            form.append("files", voice, "voice.wav");
            const results = [];
            // a multipart POST is a "simple" request: sent without asking; DELETE needs a CORS preflight first
            for (const [method, url, body, mode] of [["POST", "{server.url}/register", form, "no-cors"],
                                                     ["DELETE", "{server.url}/speakers/victim", null, "cors"]]) {{
              try {{ await fetch(url, {{method, body, mode}}); results.push("sent"); }}
              catch (e) {{ results.push("blocked: " + e); }}
            }}
            document.title = "done " + results.join(", ");
          }})();
        </script>""")
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(evil_root))
        evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            browser = playwright_api.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{evil.server_address[1]}/index.html")
            page.wait_for_function("document.title.startsWith('done')", timeout=30000)
            title = page.title()
            browser.close()
        finally:
            evil.shutdown()
        speakers = httpx.get(f"{server.url}/speakers").json()["speakers"]
        log = server.log(tail=0)
    assert "from_evil_origin" not in speakers and speakers == {"victim": 1}, (title, speakers)
    assert '"POST /register HTTP/1.1" 403' in log, log[-3000:]  # it arrived, and the server said no
    # the preflight gets no CORS permission, so Chromium never sends the DELETE itself
    assert "blocked" in title.split(", ")[1] and "DELETE /speakers" not in log, (title, log[-3000:])


def test_live_view_names_who_is_speaking(playwright_api, shared_data: Path, tmp_path: Path) -> None:
    """The page's live view: its microphone (Chromium's fake capture) plays ann for 7 s, then bob; the
    server's /live WebSocket answers 4 times a second and the page shows the name; the change to bob is
    shown within 1.5 s of stream time."""
    import json

    from benchmarks.server_load import ServerProcess
    from utils.audio import load_audio
    from utils.embedder import Embedder
    from utils.speaker_db import SpeakerDB

    files = {name: sorted((shared_data / "librispeech" / "dev-clean" / s).rglob("*.mp3")) for name, s in
             (("ann", "1272"), ("bob", "2035"))}  # fmt: skip
    library = tmp_path / "db"
    db = SpeakerDB(library, Embedder(ROOT / "models" / "voiceprint_resnet34.pt", device="cpu"))
    for name, paths in files.items():
        db.register(name, paths[:3])
    db.calibrate()
    parts = []
    for name in ("ann", "bob"):
        wav = np.concatenate([load_audio(p) for p in files[name][5:8]])[: 7 * 16000]
        parts.append(wav / np.max(np.abs(wav)) * 0.5)
    talk = tmp_path / "talk.wav"
    from utils.audio import resample

    sf.write(talk, resample(np.concatenate(parts).astype(np.float32), 16000, CAPTURE_RATE), CAPTURE_RATE,
             subtype="PCM_16")  # fmt: skip
    with ServerProcess(library, "--device", "cpu") as server:
        browser = playwright_api.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={talk}"]
        )
        try:
            page = browser.new_page()
            page.goto(server.url)
            page.click("#live-toggle")
            page.wait_for_selector("#live[data-label='ann']", timeout=20000)
            page.wait_for_selector("#live[data-label='bob']", timeout=20000)
            page.wait_for_timeout(2500)
            timeline = json.loads(page.get_attribute("body", "data-live-timeline"))
            shown = page.text_content("#live")
            page.click("#live-toggle")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT.with_name("live.png")), full_page=True)
        finally:
            browser.close()
    assert shown.startswith("now speaking: bob ("), shown
    change = 7.0  # in the played file; the stream may have started a little into it, which only shortens this
    after = [s for s in timeline if s["time"] > change]
    settled = next(s["time"] for k, s in enumerate(after) if all(t["label"] == "bob" for t in after[k : k + 4]))
    print(f"page: speaker change -> new label within {settled - change:.2f} s of stream time")
    assert settled - change <= 1.5
    assert any(s["label"] == "ann" for s in timeline if s["time"] < change)
