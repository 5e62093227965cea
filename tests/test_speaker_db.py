"""utils.speaker_db on real speech (LibriSpeech dev-clean/train-clean-100, FSDD) with the bundled model.

Embedding runs with one torch thread: on a shared 2-core machine two OpenMP threads
fighting other processes are ~10x slower than one.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils.audio import AudioError, audio_info, load_audio
from utils.speaker_db import (
    CACHE_NAME,
    CacheWarning,
    Recognition,
    SpeakerDB,
    SpeakerDBError,
    check_new_name,
    validate_name,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "voiceprint_resnet34.pt"
SPEAKERS = ("1272", "2035", "2803")  # dev-clean speakers the bundled model never trained on


def short_utterances(shared_data: Path, speaker: str, count: int, skip: int = 0) -> list[Path]:
    """`count` utterances of 2-7 s of a dev-clean speaker, in a fixed order (short keeps the tests fast)."""
    picked = []
    for path in sorted((shared_data / "librispeech" / "dev-clean" / speaker).glob("*/*.mp3")):
        frames, rate = audio_info(path)  # an MP3 is decoded to count its frames: stop as soon as we have enough
        if 2.0 <= frames / rate <= 7.0:
            picked.append(path)
            if len(picked) == skip + count:
                return picked[skip:]
    raise AssertionError(f"not enough short utterances of {speaker}")


@pytest.fixture(scope="module")
def embedder():
    import torch

    from utils.embedder import Embedder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Embedder(MODEL, device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> dict[str, list[Path]]:
    """3 enrolment + 2 test utterances per speaker, and strangers never enrolled."""
    out = {spk: short_utterances(shared_data, spk, 5) for spk in SPEAKERS}
    # strangers that score well below the threshold (the model does false-accept some others at its EER
    # threshold: benchmarks/identification_eval.py measures how often)
    out["strangers"] = [
        shared_data / "librispeech" / "train-clean-100" / "1235-135883-0000.flac",
        shared_data / "fsdd" / "0_nicolas_5.wav",
    ]
    return out


def make_db(root: Path, embedder, speech: dict[str, list[Path]], per_speaker: int = 3) -> SpeakerDB:
    db = SpeakerDB(root, embedder)
    for spk in SPEAKERS:
        assert db.register(spk, speech[spk][:per_speaker]) == per_speaker
    return db


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# names


@pytest.mark.parametrize("name", ["alice", "  Bob Smith ", "李达康", "o'neil-2", "a.b", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name.strip()


def test_names_are_nfc_normalised(tmp_path: Path, embedder, speech) -> None:
    composed, decomposed = "Zo\u00eb", "Zoe\u0308"  # look the same; macOS and some browsers send the second
    assert validate_name(decomposed) == composed
    db = SpeakerDB(tmp_path / "db", embedder)
    db.register(decomposed, [speech["1272"][0]])
    db.register(composed, [speech["1272"][1]])
    assert db.counts() == {composed: 2}  # one speaker, one folder
    db.remove(decomposed)
    assert len(db) == 0


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "a\\b", "\x00", "a\x00b", "", "   ", ".", "..", ".hidden", "a\nb", "tab\there", "x" * 1024]
    + ["x" * 65, "\U0001f600" * 51]  # 65 characters; 51 characters but 204 UTF-8 bytes
    + ["\u0958" * 64],  # 64 characters, but 128 after NFC (it once passed here, then failed on disk)
)
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(SpeakerDBError):
        validate_name(name)


@pytest.mark.parametrize(
    "name", ["unknown", "Unknown-1", "unknown-12", "NO SPEECH", "no  speech", "no\xa0speech", "unknown\u20111",
             "unknown-\u0661", "\uff55nknown-1"],  # look-alikes: two spaces, NBSP, a non-breaking hyphen, an
)  # Arabic-Indic 1, a fullwidth u  # fmt: skip
def test_labels_of_the_not_enrolled_are_not_new_names(name: str, tmp_path: Path, embedder, speech) -> None:
    assert validate_name(name) == name  # an older library's folder of that name still loads and can be removed
    with pytest.raises(SpeakerDBError, match="reserved"):
        check_new_name(name)
    with pytest.raises(SpeakerDBError, match="reserved"):
        SpeakerDB(tmp_path / "db", embedder).register(name, [speech["1272"][0]])
    assert check_new_name("unknown-1b") == "unknown-1b" and check_new_name("Mr Unknown") == "Mr Unknown"


def test_an_older_librarys_reserved_name_can_still_be_added_to(tmp_path: Path, embedder, speech) -> None:
    db = SpeakerDB(tmp_path / "db", embedder)
    db.register("bob", [speech["1272"][0]])
    (tmp_path / "db" / "bob").rename(tmp_path / "db" / "unknown-1")  # made before the names were reserved
    db = SpeakerDB(tmp_path / "db", embedder)
    db.enrol("unknown-1", [speech["1272"][1]], add=True)
    assert db.counts() == {"unknown-1": 2}


def test_bad_names_write_nothing(tmp_path: Path, embedder, speech) -> None:
    root = tmp_path / "db"
    db = SpeakerDB(root, embedder)
    for name in ["../x", "a/b", "a\\b", "\x00", "", "y" * 1024, None]:
        with pytest.raises(SpeakerDBError):
            db.register(name, [speech["1272"][0]])
        with pytest.raises(SpeakerDBError):
            db.remove(name)
    assert not (tmp_path / "x").exists() and all_files(tmp_path) == []


# register / recognise / remove


def test_register_recognize_unknown_remove(tmp_path: Path, embedder, speech) -> None:
    db = make_db(tmp_path / "db", embedder, speech)
    assert db.names() == sorted(SPEAKERS) and len(db) == 3
    assert db.counts() == {spk: 3 for spk in SPEAKERS}
    # stored as 16-bit 16 kHz WAV in root/<name>/
    for spk in SPEAKERS:
        files = sorted((tmp_path / "db" / spk).glob("*.wav"))
        assert len(files) == 3
        info = sf.info(str(files[0]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")

    for spk in SPEAKERS:
        for path in speech[spk][3:]:
            result = db.recognize(path)
            assert result.name == spk, (path, result)
            assert result.score >= db.threshold and result.runner_up in set(SPEAKERS) - {spk}
            assert result.runner_up_score < result.score
    # an array at another sample rate: resampled before embedding
    wav16 = load_audio(speech["2035"][4])
    wav8 = load_audio(speech["2035"][4], sample_rate=8000)
    narrowband = db.recognize(wav8, sample_rate=8000)  # telephone band: the right speaker still ranks first
    assert narrowband.best == "2035" and narrowband.score > narrowband.runner_up_score + 0.3
    pcm = (wav16 * 32767).round().astype(np.int16)  # integer PCM straight from a sound card: scaled, not clipped
    assert db.recognize(pcm).score == pytest.approx(db.recognize(wav16).score, abs=1e-3)
    assert db.recognize(wav16).score == pytest.approx(db.recognize_embedding(embedder.embed_array(wav16)).score)

    for stranger in speech["strangers"]:
        result = db.recognize(stranger)
        assert result.name is None, (stranger, result)
        assert result.score < db.threshold and result.best in SPEAKERS
    unknown = db.recognize(speech["strangers"][0]).to_dict()
    assert set(unknown) == {"name", "score", "runner_up", "runner_up_score", "best", "threshold", "speech_seconds"}
    assert 1.0 < unknown["speech_seconds"] <= sf.info(str(speech["strangers"][0])).duration
    assert unknown["name"] is None and unknown["best"] in SPEAKERS and unknown["best"] != unknown["runner_up"]

    # a stricter threshold turns a match into "unknown"; the voiceprint itself scores 1
    strict = SpeakerDB(tmp_path / "db", embedder, threshold=0.999)
    assert strict.recognize(speech["1272"][3]).name is None
    own = strict.recognize_embedding(strict.voiceprint("1272"))
    assert own.name == "1272" and own.score == pytest.approx(1.0, abs=1e-5)

    db.remove("2803")
    assert db.names() == ["1272", "2035"] and not (tmp_path / "db" / "2803").exists()
    with pytest.raises(SpeakerDBError, match="unknown speaker"):
        db.remove("2803")
    db.remove("2035")
    only = db.recognize(speech["1272"][3])
    assert only == Recognition("1272", only.score, None, None, best="1272", threshold=db.threshold, speech=only.speech)
    db.remove("1272")
    with pytest.raises(SpeakerDBError, match="no speakers"):
        db.recognize(speech["1272"][3])


def test_register_checks_everything_before_writing(tmp_path: Path, embedder, speech, shared_data: Path) -> None:
    root = tmp_path / "db"
    db = SpeakerDB(root, embedder)
    short = shared_data / "fsdd" / "0_george_1.wav"  # 0.3 s: too short to enrol
    with pytest.raises(AudioError, match="too short"):
        db.register("alice", [speech["1272"][0], short])
    with pytest.raises(AudioError, match="not found"):
        db.register("alice", [tmp_path / "missing.wav"])
    with pytest.raises(AudioError, match="silent"):
        db.register("alice", [np.zeros(32000, dtype=np.float32)])
    with pytest.raises(SpeakerDBError, match="no recordings"):
        db.register("alice", [])
    assert len(db) == 0 and not (root / "alice").exists()


# persistence and the cache


def test_persistence_and_cache_invalidation(tmp_path: Path, embedder, speech) -> None:
    root = tmp_path / "db"
    make_db(root, embedder, speech, per_speaker=2)
    assert (root / CACHE_NAME).is_file()
    reopened = SpeakerDB(root, embedder)
    assert reopened.embedded_at_load == 0 and reopened.counts() == {spk: 2 for spk in SPEAKERS}
    assert reopened.sync() == 0
    before = reopened.voiceprint("2035")

    # a changed file (another utterance under the same name) is embedded again, only it
    victim = sorted((root / "2035").glob("*.wav"))[0]
    sf.write(str(victim), load_audio(speech["2035"][4]), 16000, subtype="PCM_16")
    assert reopened.sync() == 1
    assert not np.allclose(reopened.voiceprint("2035"), before)
    # a new file in any format dropped into the folder by hand
    shutil.copy(speech["2803"][4], root / "2803" / "extra.mp3")
    assert reopened.sync() == 1 and reopened.counts()["2803"] == 3
    # a deleted file is dropped without embedding anything
    os.unlink(root / "2803" / "extra.mp3")
    assert reopened.sync() == 0 and reopened.counts()["2803"] == 2
    # and all of it was written to the cache: another process starts with nothing to embed
    assert SpeakerDB(root, embedder).embedded_at_load == 0
    index = json.loads(bytes(np.load(root / CACHE_NAME, allow_pickle=False)["index"]))
    assert len(index["files"]) == 6 and all(not f["path"].startswith("/") for f in index["files"])


def test_model_change_rebuilds_cache(tmp_path: Path, embedder, speech) -> None:
    from utils.checkpoint import load_inference_model, save_inference_model
    from utils.embedder import Embedder
    from utils.operating_points import OperatingPoints

    root = tmp_path / "db"
    make_db(root, embedder, speech, per_speaker=1)
    # same weights, different bytes (new meta): a different model file as far as the cache is concerned
    model, info = load_inference_model(MODEL)
    other = tmp_path / "other.pt"
    save_inference_model(
        other,
        model,
        info["model_config"],
        info["feature_config"],
        OperatingPoints.from_info(info),
        {**info["meta"], "copy": 1},
    )
    other_embedder = Embedder(other, device="cpu")
    assert SpeakerDB(root, other_embedder).embedded_at_load == 3
    assert SpeakerDB(root, other_embedder).embedded_at_load == 0
    assert SpeakerDB(root, embedder).embedded_at_load == 3  # back to the first model: its cache was replaced


def test_legacy_flat_layout(tmp_path: Path, embedder, speech) -> None:
    root = tmp_path / "db"
    root.mkdir()
    # the original layout: one root/<name>.wav per person, next to a folder-style speaker
    sf.write(str(root / "1272.wav"), load_audio(speech["1272"][0]), 16000)
    sf.write(str(root / "2035.WAV"), load_audio(speech["2035"][0]), 16000)
    (root / "notes.txt").write_text("not audio")
    db = SpeakerDB(root, embedder)
    assert db.embedded_at_load == 2 and db.counts() == {"1272": 1, "2035": 1}
    db.register("2803", speech["2803"][:2])
    assert db.register("1272", speech["1272"][1:2]) == 2  # legacy file + the new folder
    assert db.recognize(speech["1272"][3]).name == "1272"
    assert db.recognize(speech["2035"][3]).name == "2035"
    assert SpeakerDB(root, embedder).embedded_at_load == 0
    db.remove("1272")
    db.remove("2035")
    assert not (root / "1272.wav").exists() and not (root / "1272").exists() and not (root / "2035.WAV").exists()
    assert db.names() == ["2803"] and (root / "notes.txt").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled", "wrong_shape"])
def test_corrupted_cache_is_rebuilt(tmp_path: Path, embedder, speech, damage: str) -> None:
    root = tmp_path / "db"
    make_db(root, embedder, speech, per_speaker=1)
    cache = root / CACHE_NAME
    if damage == "garbage":
        cache.write_bytes(b"\x00not a zip file" * 10)
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "pickled":  # an object array would need pickle to load: refused
        np.savez(cache, embeddings=np.zeros((3, 256), np.float32), index=np.array([{"files": []}], dtype=object))
    else:
        with zipfile.ZipFile(cache) as z:
            index = z.read("index.npy")
        np.savez(cache, embeddings=np.zeros((3, 7), np.float32), index=np.load(__import__("io").BytesIO(index)))
    with pytest.warns(CacheWarning, match="unreadable"):
        db = SpeakerDB(root, embedder)
    assert db.embedded_at_load == 3 and db.recognize(speech["2803"][3]).name == "2803"
    assert SpeakerDB(root, embedder).embedded_at_load == 0  # rewritten in good shape


def test_listing_without_a_model(tmp_path: Path, embedder, speech) -> None:
    root = tmp_path / "db"
    make_db(root, embedder, speech, per_speaker=1)
    plain = SpeakerDB(root, None)
    assert plain.counts() == {spk: 1 for spk in SPEAKERS}
    plain.remove("2035")
    assert plain.names() == ["1272", "2803"]
    with pytest.raises(SpeakerDBError, match="without a model"):
        plain.recognize(np.zeros(16000, np.float32))
    assert SpeakerDB(root, embedder).embedded_at_load == 0  # the stale cache entry is simply dropped


# two processes at once


def _register_in_child(root: str, name: str, paths: list[str], barrier, embedder) -> None:
    import torch

    torch.set_num_threads(1)  # forked after the parent ran OpenMP: a second pool thread would hang
    db = SpeakerDB(root, embedder)
    barrier.wait(timeout=30)
    for path in paths:
        db.register(name, [path])
        db.register("shared", [path])


def test_two_processes_registering_at_once(tmp_path: Path, embedder, speech) -> None:
    root = tmp_path / "db"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    jobs = [
        context.Process(
            target=_register_in_child, args=(str(root), spk, [str(p) for p in speech[spk][:2]], barrier, embedder)
        )
        for spk in ("1272", "2035")
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
    assert [job.exitcode for job in jobs] == [0, 0]
    db = SpeakerDB(root, embedder)
    assert db.counts() == {"1272": 2, "2035": 2, "shared": 4}
    assert db.embedded_at_load == 0, "a writer lost the other's cache entries"
    assert not list(root.rglob("*.tmp"))


def test_writers_wait_for_the_library_lock(tmp_path: Path, embedder, speech) -> None:
    import fcntl
    import time

    root = tmp_path / "db"
    root.mkdir()
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(1)
    with open(root / ".lock", "a+b") as lock:  # what another process enrolling right now would hold
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        job = context.Process(
            target=_register_in_child, args=(str(root), "2803", [str(speech["2803"][0])], barrier, embedder)
        )
        job.start()
        time.sleep(2.0)  # the child has long finished embedding: it now waits for the lock
        assert job.is_alive() and not list(root.rglob("*.wav")), "register wrote without taking the lock"
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    job.join(timeout=60)
    assert job.exitcode == 0
    assert SpeakerDB(root, embedder).counts() == {"2803": 1, "shared": 1}


def test_refresh_sees_other_processes_changes_only(tmp_path: Path, embedder, speech) -> None:
    # two SpeakerDB objects on one folder stand for infer_server.py and infer_recognition.py
    root = tmp_path / "db"
    server_side = SpeakerDB(root, embedder)
    other = SpeakerDB(root, embedder)
    scans = []
    scan = server_side._scan
    server_side._scan = lambda: scans.append(1) or scan()  # count folder scans
    other.register("1272", speech["1272"][:1])
    assert "1272" not in server_side
    assert server_side.refresh() == 0 and "1272" in server_side  # taken from the shared cache, not re-embedded
    assert len(scans) == 1
    server_side.refresh()
    assert len(scans) == 1  # unchanged library: two stat calls, no scan
    other.register("1272", speech["1272"][1:2])  # a second recording of a known speaker rewrites the cache
    server_side.refresh()
    assert server_side.counts() == {"1272": 2}
    other.remove("1272")
    assert server_side.refresh() == 0 and "1272" not in server_side and len(server_side) == 0


def test_enrolment_detects_speech_once_per_recording(tmp_path: Path, embedder, speech, monkeypatch) -> None:
    """The detector is the costly check: a file is checked once, and a Recording a caller (the server)
    has already prepared is not checked again; the stored 16-bit copy is what gets embedded."""
    import utils.audio as audio

    calls = []
    real = audio.analyse_speech
    monkeypatch.setattr(audio, "analyse_speech", lambda wav: calls.append(len(wav)) or real(wav))
    db = SpeakerDB(tmp_path / "db", embedder)
    db.enrol("alice", [speech["1272"][0], speech["1272"][1]])
    assert len(calls) == 2
    prepared = audio.prepare_recording(speech["1272"][2])
    calls.clear()
    enrolment = db.enrol("alice", [prepared])
    assert calls == [] and enrolment.count == 3 and enrolment.reports == [prepared.report]
    stored = sorted((tmp_path / "db" / "alice").glob("*.wav"))
    again = SpeakerDB(tmp_path / "db", embedder)  # re-embedding the files gives the cached vectors
    assert np.allclose(again.voiceprint("alice"), db.voiceprint("alice"), atol=1e-5) and len(stored) == 3
    with pytest.raises(AudioError, match="too little speech"):
        short = audio.Recording(prepared.wav[:8000], dataclasses.replace(prepared.report, speech_seconds=0.4))
        db.enrol("alice", [short])
