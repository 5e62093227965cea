"""infer_contrast.py: verdicts on the demo clips and on real LibriSpeech speech, JSON output, thresholds, errors.

The README's same-pair command runs as a subprocess; the other cases call `infer_contrast.main(argv)`
in-process to avoid paying the torch start-up again.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import infer_contrast
from utils.checkpoint import atomic_torch_save, load_torch_file

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "voiceprint_resnet34.pt"
DEMO = sorted((ROOT / "audio").glob("*.wav"))  # {a,b,c}{1,2}.wav: the letter is the voice


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "infer_contrast.py", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The command-line run (same pair), and every demo pair's score computed in-process while it runs."""
    tmp = tmp_path_factory.mktemp("contrast")
    proc = start(["--audio_path1=audio/a1.wav", "--audio_path2=audio/a2.wav", f"--json_path={tmp / 'same.json'}"])
    from utils.embedder import Embedder

    embedder = Embedder(MODEL, device="cpu")
    emb = {p.name: embedder.embed_file(p) for p in DEMO}
    result = {
        "tmp": tmp,
        "scores": {(a, b): float(emb[a] @ emb[b]) for a, b in itertools.combinations(sorted(emb), 2)},
        "threshold": embedder.threshold,
    }
    out, err = proc.communicate(timeout=180)
    result["same"] = (proc.returncode, out, err)
    return result


@pytest.fixture(autouse=True)
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the demo paths are relative, as in the README


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    infer_contrast.main([*argv, "--device", "cpu"])
    return capsys.readouterr().out


# the demo clips


def test_cli_same_pair(demo: dict) -> None:
    code, out, err = demo["same"]
    assert code == 0, err[-2000:]
    assert "Configuration Arguments" not in out  # the configuration only with --verbose
    line, speech_line, model_line = out.strip().splitlines()  # the answer, how much speech, which model
    assert re.fullmatch(r"speech used: \d+\.\d s and \d+\.\d s", speech_line), speech_line
    assert model_line.startswith("model: models/voiceprint_resnet34.pt (resnet34 width 16")
    assert line.startswith("audio/a1.wav and audio/a2.wav are the same person, similarity: ")
    assert line.endswith(f"(threshold {demo['threshold']:.3f})")
    result = json.loads((demo["tmp"] / "same.json").read_text())
    assert set(result) == {
        "score",
        "threshold",
        "same_speaker",
        "audio_path1",
        "audio_path2",
        "speech1",
        "speech2",
        "probability_same",
    }
    assert result["probability_same"] is None  # the bundled model carries no score calibration
    for key, path in (("speech1", "audio/a1.wav"), ("speech2", "audio/a2.wav")):
        seconds = sf.info(str(ROOT / path)).duration
        assert result[key]["seconds"] == pytest.approx(seconds, abs=0.01)
        assert 0.3 * seconds < result[key]["speech_seconds"] <= seconds + 0.01
        assert f"{result[key]['speech_seconds']:.1f} s" in speech_line
    assert result["same_speaker"] is True
    assert (result["audio_path1"], result["audio_path2"]) == ("audio/a1.wav", "audio/a2.wav")
    assert result["threshold"] == pytest.approx(demo["threshold"])  # the threshold stored in the model file
    assert result["score"] == pytest.approx(demo["scores"][("a1.wav", "a2.wav")], abs=1e-5)
    assert f"similarity: {result['score']:.4f}" in line


def test_different_pair(demo: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main(["--audio_path1=audio/a1.wav", "--audio_path2=audio/b2.wav"], capsys)
    score = demo["scores"][("a1.wav", "b2.wav")]
    expected = (
        f"audio/a1.wav and audio/b2.wav are not the same person, similarity: {score:.4f} "
        f"(threshold {demo['threshold']:.3f})"
    )
    assert out.strip().splitlines()[0] == expected


def test_demo_same_voice_pairs_accepted(demo: dict) -> None:
    scores, threshold = demo["scores"], demo["threshold"]
    for voice in "abc":
        assert scores[(f"{voice}1.wav", f"{voice}2.wav")] >= threshold, voice


def test_demo_pairs_separable(demo: dict) -> None:
    """Every same-voice pair scores above every different-voice pair."""
    scores = demo["scores"]
    same = [s for (a, b), s in scores.items() if a[0] == b[0]]
    different = [s for (a, b), s in scores.items() if a[0] != b[0]]
    assert len(same) == 3 and len(different) == 12
    assert min(same) > max(different)


def test_demo_voices_are_told_apart(demo: dict) -> None:
    """Every same-voice pair of the demo clips outscores every different-voice pair by a wide margin, and the
    pairs the demo shows get the right verdict at the stored threshold. (That threshold is measured on read
    LibriSpeech speech: the closest different pair of these synthetic voices, a2/c2, sits near it, which is
    what `infer_recognition.py --calibrate` on your own voices is for.)"""
    scores, threshold = demo["scores"], demo["threshold"]
    same = [s for (a, b), s in scores.items() if a[0] == b[0]]
    different = [s for (a, b), s in scores.items() if a[0] != b[0]]
    assert len(same) == 3 and len(different) == 12
    assert min(same) - max(different) > 0.2, (min(same), max(different))
    for a, b in (("a1.wav", "a2.wav"), ("a1.wav", "b2.wav")):
        score = scores.get((a, b), scores.get((b, a)))
        assert (score >= threshold) == (a[0] == b[0]), (a, b, score, threshold)


def test_threshold_option_overrides_model(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main(["--audio_path1=audio/a1.wav", "--audio_path2=audio/a2.wav", "--threshold", "0.99"], capsys)
    assert "are not the same person" in out and "(threshold 0.990)" in out


def test_model_without_threshold_falls_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = load_torch_file(MODEL)
    blob["operating_points"]["verification"] = None
    atomic_torch_save(blob, tmp_path / "model.pt")
    argv = ["--audio_path1=audio/a1.wav", "--audio_path2=audio/b2.wav", f"--model_path={tmp_path / 'model.pt'}"]
    with pytest.warns(UserWarning, match="stores no verification threshold; using 0.5"):
        out = run_main([*argv, f"--json_path={tmp_path / 'r.json'}"], capsys)
    assert "(threshold 0.500)" in out
    assert json.loads((tmp_path / "r.json").read_text())["threshold"] == 0.5


# real speech


def dev_clean(shared_data: Path, speaker: str, index: int) -> str:
    return str(sorted((shared_data / "librispeech" / "dev-clean" / speaker).glob("*/*.mp3"))[index])


def test_librispeech_pairs(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a1, a2 = dev_clean(shared_data, "1272", 0), dev_clean(shared_data, "1272", 1)
    b = dev_clean(shared_data, "2035", 1)
    out = run_main([f"--audio_path1={a1}", f"--audio_path2={a2}", f"--json_path={tmp_path / 'same.json'}"], capsys)
    assert f"{a1} and {a2} are the same person" in out
    out = run_main([f"--audio_path1={a1}", f"--audio_path2={b}", f"--json_path={tmp_path / 'diff.json'}"], capsys)
    assert f"{a1} and {b} are not the same person" in out
    same = json.loads((tmp_path / "same.json").read_text())
    different = json.loads((tmp_path / "diff.json").read_text())
    assert same["same_speaker"] is True and different["same_speaker"] is False
    assert same["score"] > different["score"] + 0.3
    assert np.isfinite([same["score"], different["score"]]).all()


# errors


@pytest.mark.parametrize("which", ["missing", "broken"])
def test_bad_audio_is_one_line_error(tmp_path: Path, which: str) -> None:
    path = tmp_path / "x.wav"
    if which == "broken":
        path.write_bytes(b"RIFF....WAVEfmt garbage")
    proc = subprocess.run(
        [sys.executable, "infer_contrast.py", "--audio_path1=audio/a1.wav", f"--audio_path2={path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_model_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        infer_contrast.main(["--model_path", str(tmp_path / "none.pt")])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: model file not found: {tmp_path / 'none.pt'}"


def test_default_model_found_from_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # `python /path/to/infer_contrast.py ...` from elsewhere: the default models/... is the project's
    monkeypatch.chdir(tmp_path)
    infer_contrast.main(["--audio_path1", str(ROOT / "audio" / "a1.wav"), "--audio_path2", str(DEMO[1])])
    assert "are the same person" in capsys.readouterr().out.splitlines()[0]
    # a relative path that exists neither here nor in the project is still reported as missing
    with pytest.raises(SystemExit):
        infer_contrast.main(["--audio_path1", str(DEMO[0]), "--audio_path2", str(DEMO[1]), "--model_path", "no.pt"])
    assert "model file not found: no.pt" in capsys.readouterr().err
