"""Library calibration: thresholds measured on the enrolled recordings, stored, and used by later runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.calibration import (
    CALIBRATION_NAME,
    CalibrationError,
    LibraryCalibration,
    Piece,
    calibrate_library,
    gaussian_eer_threshold,
)

ROOT = Path(__file__).resolve().parents[1]


def clustered(speakers: int, per: int, spread: float, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((speakers, 64))
    emb = np.concatenate([c + spread * rng.standard_normal((per, 64)) for c in centres])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), [f"s{k}" for k in range(speakers) for _ in range(per)]


def test_gaussian_threshold_sits_inside_the_gap() -> None:
    target, nontarget = np.array([0.7, 0.75, 0.8, 0.85]), np.array([0.1, 0.15, 0.2, 0.25])
    assert 0.3 < gaussian_eer_threshold(target, nontarget) < 0.65
    # a wider non-target side pushes the threshold towards the targets
    wide = np.array([-0.2, 0.0, 0.2, 0.4])
    assert gaussian_eer_threshold(target, wide) > gaussian_eer_threshold(target, nontarget)


def test_calibrate_library_separates_speakers_and_counts_trials() -> None:
    emb, speakers = clustered(3, 5, spread=0.8)
    calibration = calibrate_library(emb, speakers)
    scores = emb @ emb.T
    same = np.equal.outer(speakers, speakers) & ~np.eye(len(emb), dtype=bool)
    different = ~np.equal.outer(speakers, speakers)
    assert scores[different].max() < calibration.verification < scores[same].min()
    assert calibration.verification_trials == (30, 75) and calibration.identification_trials == (15, 30)
    assert not calibration.steady and "add recordings" in calibration.describe()


def test_short_pieces_get_their_own_lower_thresholds() -> None:
    # whole recordings sit close to their speaker; 1 s pieces of them scatter more (less speech, lower scores)
    emb, speakers = clustered(3, 5, spread=0.4)
    rng = np.random.default_rng(1)
    pieces = {}
    for cut, spread in ((1.0, 1.2), (2.0, 0.8)):
        noisy = [e + spread * rng.standard_normal(64) / 8 for e in emb for _ in range(3)]
        pieces[cut] = [Piece(v / np.linalg.norm(v), k // 3, cut * 0.8) for k, v in enumerate(noisy)]
    calibration = calibrate_library(emb, speakers, pieces=pieces, speech_seconds=[6.0] * len(emb))
    seconds = [row[0] for row in calibration.by_speech]
    assert seconds == [0.8, 1.6, 6.0]
    short, middle, whole = calibration.by_speech
    assert short[1] < middle[1] < whole[1] and short[2] < whole[2]  # 1:1 and 1:N both fall with less speech
    assert whole[1:] == (calibration.verification, calibration.identification)
    # a recording with 1.6 s of speech is judged at the 1.6 s row; between rows: in between; beyond: the ends
    assert calibration.verification_at(1.6) == pytest.approx(middle[1], abs=1e-4)
    assert short[1] < calibration.verification_at(1.1) < middle[1]
    assert calibration.identification_at(30.0) == calibration.identification
    assert (
        calibration.verification_at(0.1) == short[1] and calibration.verification_at(None) == calibration.verification
    )
    # stored and read back as the same table
    assert LibraryCalibration.from_dict(json.loads(json.dumps(calibration.to_dict()))) == calibration
    bad = {**calibration.to_dict(), "by_speech": [[1.0, float("nan"), 0.5]]}
    with pytest.raises(ValueError, match="by_speech"):
        LibraryCalibration.from_dict(bad)


def test_calibrate_library_needs_two_speakers_with_two_recordings() -> None:
    emb, speakers = clustered(2, 2, spread=0.5)
    with pytest.raises(CalibrationError, match="at least 2 speakers with 2 or more recordings"):
        calibrate_library(emb[:3], speakers[:3])  # s0 x2, s1 x1


def test_cli_calibrate_stores_and_uses_thresholds(shared_data: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    for speaker in ("1272", "2035"):
        clips = sorted((shared_data / "librispeech" / "dev-clean" / speaker).rglob("*.mp3"))[:3]
        run = [sys.executable, "infer_recognition.py", "--audio_db", str(db), "--device", "cpu"]
        subprocess.run([*run, "--register", speaker, "--audio_path", *map(str, clips)], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
    result = subprocess.run([*run, "--calibrate", "--json_path", str(tmp_path / "c.json")], cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "calibrated on 2 speakers, 6 recordings" in result.stdout and "(6 same-speaker / 9 different" in result.stdout
    )
    stored = json.loads((db / CALIBRATION_NAME).read_text())
    assert stored == json.loads((tmp_path / "c.json").read_text())
    # a later recognition uses the library's threshold
    probe = sorted((shared_data / "librispeech" / "dev-clean" / "1272").rglob("*.mp3"))[5]
    again = subprocess.run([*run, "--recognize", str(probe), "--json_path", str(tmp_path / "r.json")], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    assert "calibrated by length" in again.stdout, again.stdout + again.stderr
    calibration = LibraryCalibration.from_dict(stored)
    assert len(calibration.by_speech) >= 3, stored  # whole recordings plus pieces of 0.5 s and more
    recognised = json.loads((tmp_path / "r.json").read_text())
    recognised = recognised[0] if isinstance(recognised, list) else recognised
    expected = calibration.identification_at(recognised["speech_seconds"])
    assert recognised["threshold"] == pytest.approx(expected, abs=0.002) and recognised["name"] == "1272"
    # infer_contrast.py --audio_db takes the library's 1:1 threshold for that much speech
    contrast = subprocess.run([sys.executable, "infer_contrast.py", "--audio_path1", str(probe), "--audio_path2",
                               str(probe), "--audio_db", str(db), "--device", "cpu"], cwd=ROOT, capture_output=True,
                              text=True)  # fmt: skip
    seconds = float(re.search(r"speech used: ([\d.]+) s", contrast.stdout).group(1))
    shown = float(re.search(r"\(threshold ([\d.]+)\)", contrast.stdout).group(1))
    assert shown == pytest.approx(calibration.verification_at(seconds), abs=0.01), contrast.stdout + contrast.stderr
    # too few recordings: one line, exit 1
    single = subprocess.run([sys.executable, "infer_recognition.py", "--audio_db", str(tmp_path / "empty"),
                             "--calibrate", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert single.returncode == 1 and single.stderr.strip().splitlines()[-1].startswith("error: calibration needs")
