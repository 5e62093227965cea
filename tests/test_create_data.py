"""create_data.py on small real-speech subsets (symlinks into ../shared/data, nothing copied into the repo).

Most runs call `create_data.main(argv)` in-process: a fresh interpreter spends ~3 s importing torch
(utils.data), so only the runs that check the command line itself (exit code, worker pool, stderr)
use a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import create_data
from tests.test_errors import kill_leftovers
from utils.data import read_list

ROOT = Path(__file__).resolve().parents[1]
DEV_SPEAKERS = ("84", "174", "251")


# helpers


def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "create_data.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    create_data.main([*args, "--num_workers", "1"])
    captured = capsys.readouterr()
    return captured.out, captured.err


def run_fail(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        create_data.main([*args, "--num_workers", "1"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def read_map(path: Path) -> dict[int, str]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    return {int(label): speaker for label, speaker in rows}


def read_skipped(path: Path) -> dict[str, str]:
    rows = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines()]
    return {os.path.basename(name): reason for name, reason in rows}


def link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source.resolve())


def speakers_of(items: list[tuple[str, int]], labels: dict[int, str]) -> set[str]:
    return {labels[label] for _, label in items}


# fixtures (small trees of symlinks to real speech)


@pytest.fixture
def libri_flat(shared_data: Path, tmp_path: Path) -> Path:
    """Six train-clean-100 speakers, one 10-16 s FLAC each, named <spk>-<chapter>-<utt>.flac."""
    folder = tmp_path / "train-clean-100"
    for source in sorted((shared_data / "librispeech" / "train-clean-100").glob("*.flac"))[:6]:
        link(source, folder / source.name)
    return folder


@pytest.fixture
def dev_folder(shared_data: Path, tmp_path: Path) -> Path:
    """dev-clean layout <spk>/<chapter>/*.mp3: three speakers, two chapters, two files each."""
    folder = tmp_path / "dev-clean"
    for speaker in DEV_SPEAKERS:
        for chapter in sorted((shared_data / "librispeech" / "dev-clean" / speaker).iterdir())[:2]:
            for source in sorted(chapter.glob("*.mp3"))[:2]:
                link(source, folder / speaker / chapter.name / source.name)
    return folder


@pytest.fixture
def speech(shared_data: Path) -> np.ndarray:
    """14 s of real 16 kHz speech to cut test files from."""
    wav, rate = sf.read(shared_data / "librispeech" / "train-clean-100" / "103-1240-0000.flac", dtype="float32")
    assert rate == 16000
    return wav


# layouts


def test_flat_librispeech_open_set_split_is_stable(libri_flat: Path, tmp_path: Path) -> None:
    list_dir = tmp_path / "lists"
    args = ["--dataset_dir", str(libri_flat), "--dataset_format", "flat", "--speaker_regex", r"^(\d+)-"]
    args += ["--test_speakers", "2", "--list_dir", str(list_dir), "--num_workers", "2"]
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    train, test = read_list(list_dir / "train_list.txt"), read_list(list_dir / "test_list.txt")
    train_map, test_map = read_map(list_dir / "speakers.txt"), read_map(list_dir / "test_speakers.txt")
    # open set: 4 + 2 speakers, disjoint, each side labelled 0..K-1 in sorted speaker order
    assert sorted(train_map) == [0, 1, 2, 3] and sorted(test_map) == [0, 1]
    assert list(train_map.values()) == sorted(train_map.values())
    assert not set(train_map.values()) & set(test_map.values())
    assert speakers_of(train, train_map) == set(train_map.values())
    assert speakers_of(test, test_map) == set(test_map.values())
    for path, label in train + test:
        speaker = (train_map if (path, label) in train else test_map)[label]
        assert Path(path).name.startswith(speaker + "-")
        assert path.startswith(str(libri_flat))  # as given: the symlink, not the file it points to
    assert "fewer than 2 test utterances" in first.stderr  # one file per speaker: no target trials
    assert "train: 4 speakers, 4 utterances" in first.stdout
    assert "dataset_dir" in (list_dir / "create_data_args.json").read_text()
    before = {name: (list_dir / name).read_text() for name in ("speakers.txt", "test_speakers.txt", "train_list.txt")}
    second = run_cli(args)
    assert second.returncode == 0, second.stderr
    assert before == {name: (list_dir / name).read_text() for name in before}


def test_relative_dataset_dir_stays_relative(
    libri_flat: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    relative = os.path.relpath(libri_flat, ROOT)
    args = ["--dataset_dir", relative, "--dataset_format", "flat", "--speaker_regex", r"^(\d+)-"]
    run_main([*args, "--test_mode", "none", "--list_dir", str(tmp_path / "lists")], capsys)
    paths = [path for path, _ in read_list(tmp_path / "lists" / "train_list.txt")]
    assert len(paths) == 6
    assert all(path.startswith(relative + os.sep) and os.path.isfile(path) for path in paths)


def test_folder_layout_dev_clean(dev_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    list_dir = tmp_path / "lists"
    args = ["--dataset_dir", str(dev_folder), "--dataset_format", "folder", "--test_speaker_ids", "251"]
    out, _ = run_main([*args, "--list_dir", str(list_dir)], capsys)
    train_map, test_map = read_map(list_dir / "speakers.txt"), read_map(list_dir / "test_speakers.txt")
    assert train_map == {0: "174", 1: "84"} and test_map == {0: "251"}
    train, test = read_list(list_dir / "train_list.txt"), read_list(list_dir / "test_list.txt")
    assert len(train) == 8 and len(test) == 4  # both chapters of every speaker
    assert all(Path(path).parts[-3] == train_map[label] for path, label in train)
    assert {label for _, label in test} == {0}
    assert "test: 1 speaker, 4 utterances" in out


def test_fsdd_flat_8khz_short(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "fsdd"
    for speaker in ("george", "jackson", "lucas"):
        for digit in range(3):
            link(shared_data / "fsdd" / f"{digit}_{speaker}_0.wav", folder / f"{digit}_{speaker}_0.wav")
    args = ["--dataset_dir", str(folder), "--dataset_format", "flat", "--speaker_regex", "_([a-z]+)_"]
    run_main([*args, "--min_duration", "0.3", "--test_mode", "none", "--list_dir", str(tmp_path / "l")], capsys)
    assert read_map(tmp_path / "l" / "speakers.txt") == {0: "george", 1: "jackson", 2: "lucas"}
    # 0_george_0.wav really is 0.298 s long
    assert len(read_list(tmp_path / "l" / "train_list.txt")) == 8
    assert read_skipped(tmp_path / "l" / "skipped.txt") == {
        "0_george_0.wav": "too short: 0.298 s (need at least 0.3 s)"
    }
    assert read_list(tmp_path / "l" / "test_list.txt") == []


def test_fsdd_default_min_duration_fails_clearly(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "fsdd"
    link(shared_data / "fsdd" / "0_george_0.wav", folder / "0_george_0.wav")
    err = run_fail(
        ["--dataset_dir", str(folder), "--dataset_format", "flat", "--speaker_regex", "_([a-z]+)_"]
        + ["--list_dir", str(tmp_path / "l")],
        capsys,
    )
    assert "error: no usable audio left" in err
    assert not (tmp_path / "l").exists()  # nothing half-written


def make_zhvoice(root: Path, speech: np.ndarray) -> None:
    """Tiny zhvoice corpus: text/infodata.json (JSON lines) + MP3 files of real speech."""
    entries = []
    for s, speaker in enumerate(("spk_b", "spk_a")):
        for k in range(2):
            rel = f"zhaidatatang/{speaker}/{k}.mp3"
            start = (2 * s + k) * 32000
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, speech[start : start + 32000], 16000, format="MP3")
            entries.append({"index": rel, "speaker": speaker, "duration_ms": 2000})
    # claims to be short but is 2 s of speech: only --trust_duration believes the metadata
    sf.write(root / "zhaidatatang/spk_a/liar.mp3", speech[:32000], 16000, format="MP3")
    entries.append({"index": "zhaidatatang/spk_a/liar.mp3", "speaker": "spk_a", "duration_ms": 500})
    entries.append({"index": "zhaidatatang/spk_a/gone.mp3", "speaker": "spk_a", "duration_ms": 3000})
    (root / "text").mkdir()
    lines = [json.dumps(e) for e in entries] + ["", "{not json"]
    (root / "text" / "infodata.json").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_zhvoice_layout(speech: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "zhvoice"
    make_zhvoice(root, speech)
    base = ["--dataset_dir", str(root), "--test_mode", "utterances", "--test_every", "2"]
    out, _ = run_main([*base, "--list_dir", str(tmp_path / "a")], capsys)
    train, test = read_list(tmp_path / "a" / "train_list.txt"), read_list(tmp_path / "a" / "test_list.txt")
    assert read_map(tmp_path / "a" / "speakers.txt") == {0: "spk_a", 1: "spk_b"}
    assert len(train) + len(test) == 5  # liar.mp3 decodes to 2 s and is kept
    assert all(path.startswith(str(root / "zhaidatatang")) and path.endswith(".mp3") for path, _ in train + test)
    skipped = read_skipped(tmp_path / "a" / "skipped.txt")
    assert skipped["gone.mp3"].startswith("missing")
    assert skipped["infodata.json:8"] == "bad metadata: not valid JSON"  # line 7 is blank
    assert "kept 5 files, skipped 2" in out
    run_main([*base, "--trust_duration", "--list_dir", str(tmp_path / "b")], capsys)
    skipped = read_skipped(tmp_path / "b" / "skipped.txt")
    assert skipped["liar.mp3"].startswith("too short: duration_ms 500")


def test_zhvoice_convert_delete_and_rerun(
    speech: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "zhvoice"
    make_zhvoice(root, speech)
    args = ["--dataset_dir", str(root), "--test_mode", "none", "--list_dir", str(tmp_path / "l")]
    args += ["--convert_to_wav", "--wav_dir", str(tmp_path / "wav"), "--delete_source"]
    out, _ = run_main(args, capsys)
    assert "written 5" in out
    assert not list(root.rglob("*.mp3"))  # sources deleted once their WAV was verified
    first = read_list(tmp_path / "l" / "train_list.txt")
    assert [Path(p).relative_to(tmp_path / "wav").as_posix() for p, _ in first][:2] == [
        "zhaidatatang/spk_a/0.wav",
        "zhaidatatang/spk_a/1.wav",
    ]
    # infodata.json still names the MP3s: a rerun finds their WAVs instead of reporting them missing
    out, _ = run_main(args, capsys)
    assert "in place 5" in out and "kept 5 files" in out
    assert read_list(tmp_path / "l" / "train_list.txt") == first


def test_zhvoice_metadata_cannot_lead_out_of_the_corpus_or_list_a_file_twice(
    speech: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a review: an index "../outside/precious.flac" was deleted with --delete_source and its WAV
    # written outside --wav_dir; "./x" and "x//y" listed one file several times; a non-UTF-8 byte or JSON
    # nested 100000 deep ended in a traceback
    root = tmp_path / "zhvoice"
    make_zhvoice(root, speech)
    outside = tmp_path / "outside" / "precious.mp3"
    outside.parent.mkdir()
    sf.write(outside, speech[:32000], 16000, format="MP3")
    hostile = [{"index": "../outside/precious.mp3", "speaker": "spk_a"}, {"index": str(outside), "speaker": "spk_a"},
               {"index": "./zhaidatatang/spk_b/0.mp3", "speaker": "spk_b"},
               {"index": "zhaidatatang//spk_b/0.mp3", "speaker": "spk_c"}]  # fmt: skip
    with open(root / "text" / "infodata.json", "ab") as f:
        f.write(b"".join(json.dumps(e).encode() + b"\n" for e in hostile))
        f.write(
            b'{"index": "zhaidatatang/spk_a/0.mp3", "speaker": "caf\xe9"}\n' + b"[" * 100000 + b"]" * 100000 + b"\n"
        )
    args = ["--dataset_dir", str(root), "--test_mode", "none", "--list_dir", str(tmp_path / "l"), "--convert_to_wav",
            "--wav_dir", str(tmp_path / "wav"), "--delete_source"]  # fmt: skip
    out, _ = run_main(args, capsys)
    assert outside.is_file() and not (tmp_path / "outside" / "precious.wav").exists()
    listed = [path for path, _ in read_list(tmp_path / "l" / "train_list.txt")]
    assert len(listed) == len(set(listed)) == 5 and all(p.startswith(str(tmp_path / "wav")) for p in listed)
    assert read_map(tmp_path / "l" / "speakers.txt") == {0: "spk_a", 1: "spk_b"}
    reasons = list(read_skipped(tmp_path / "l" / "skipped.txt").values())
    assert sum("leads out of" in r for r in reasons) == 2 and sum("not valid JSON" in r for r in reasons) == 3


def two_speakers(corpus: Path, speech: np.ndarray) -> None:
    """corpus/spka/x.flac and corpus/spkb/x.flac: 2 s of real speech each."""
    for speaker in ("spka", "spkb"):
        (corpus / speaker).mkdir(parents=True)
        sf.write(corpus / speaker / "x.flac", speech[:32000], 16000)


def test_an_unrelated_wav_of_the_same_length_is_not_taken_for_a_conversion(
    speech: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # x.wav, another take of exactly x.flac's length, was "reused" as its conversion and x.flac deleted
    two_speakers(tmp_path / "c", speech)
    for speaker in ("spka", "spkb"):
        sf.write(tmp_path / "c" / speaker / "y.flac", speech[40000:72000], 16000)
    sf.write(tmp_path / "c" / "spka" / "x.wav", speech[80000:112000], 16000, subtype="PCM_16")
    other_take = (tmp_path / "c" / "spka" / "x.wav").read_bytes()
    _, err = run_main(["--dataset_dir", str(tmp_path / "c"), "--dataset_format", "folder", "--test_mode", "none",
                       "--list_dir", str(tmp_path / "l"), "--convert_to_wav", "--delete_source"], capsys)  # fmt: skip
    assert "conflict" in err
    assert (tmp_path / "c" / "spka" / "x.flac").is_file()  # kept: its conversion could not be written
    assert (tmp_path / "c" / "spka" / "x.wav").read_bytes() == other_take


def test_a_file_name_that_is_not_utf8_is_skipped_not_a_traceback(
    speech: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two_speakers(tmp_path / "c", speech)
    odd = os.fsdecode(os.fsencode(str(tmp_path / "c" / "spka")) + b"/b\xffad.flac")
    sf.write(os.fsencode(odd), speech[:32000], 16000, format="FLAC")
    out, _ = run_main(["--dataset_dir", str(tmp_path / "c"), "--dataset_format", "folder", "--test_mode", "none",
                       "--list_dir", str(tmp_path / "l")], capsys)  # fmt: skip
    assert "kept 2 files, skipped 1" in out
    skipped = (tmp_path / "l" / "skipped.txt").read_text(encoding="utf-8")
    assert "b\\udcffad.flac\tbad name: the path or speaker id is not valid UTF-8" in skipped


def test_links_inside_the_corpus_and_same_named_recordings(
    speech: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a link dave/link -> ../alice made alice's files dave's (walk order); a file link listed one recording
    # under two speakers; x.flac, x.ogg and a 22.05 kHz x.wav (three recordings) were cut to x.flac, unseen
    corpus = tmp_path / "c"
    for k, speaker in enumerate(("alice", "bob", "dave")):
        (corpus / speaker).mkdir(parents=True)
        sf.write(corpus / speaker / f"{speaker}0.flac", speech[k * 32000 : (k + 1) * 32000], 16000)
    (corpus / "dave" / "link").symlink_to("../alice")
    (corpus / "dave" / "dup.flac").symlink_to("../bob/bob0.flac")
    sf.write(corpus / "bob" / "x.flac", speech[:24000], 16000)
    sf.write(corpus / "bob" / "x.ogg", speech[30000:54000], 16000, format="OGG", subtype="VORBIS")
    sf.write(corpus / "bob" / "x.wav", speech[60000:124000:2], 22050)
    run_main(["--dataset_dir", str(corpus), "--dataset_format", "folder", "--test_mode", "none", "--list_dir",
              str(tmp_path / "l")], capsys)  # fmt: skip
    labels = read_map(tmp_path / "l" / "speakers.txt")
    listed = {Path(path).relative_to(corpus).as_posix(): labels[label] for path, label in
              read_list(tmp_path / "l" / "train_list.txt")}  # fmt: skip
    assert listed == {"alice/alice0.flac": "alice", "bob/bob0.flac": "bob", "dave/dave0.flac": "dave",
                      "bob/x.flac": "bob", "bob/x.ogg": "bob", "bob/x.wav": "bob"}  # fmt: skip


def test_ctrl_c_while_the_workers_start_leaves_no_process_behind(shared_data: Path, tmp_path: Path) -> None:
    """A Ctrl-C while the pool forked its workers was lost (a traceback from a fork hook, then the whole run,
    exit 0: 21 of 30 tries) or left workers alive after the script (they held its pipes: the caller hung)."""
    import signal
    import time

    corpus = shared_data / "librispeech" / "dev-clean" / "1272"
    for delay in (0.0, 0.002, 0.004, 0.006, 0.008):
        proc = subprocess.Popen(
            [sys.executable, "create_data.py", "--dataset_dir", str(corpus), "--dataset_format", "folder",
             "--list_dir", str(tmp_path / "lists"), "--test_mode", "none", "--num_workers", "16"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        err = b""
        while b"checking" not in err:  # the progress bar is drawn just before the pool starts
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, err.decode(errors="replace")
            err += chunk
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=60)
        left_behind = kill_leftovers(proc)
        err += proc.stderr.read()
        proc.stderr.close()
        assert not left_behind and status == 130, (delay, status, err.decode(errors="replace")[-800:])
        assert b"Traceback" not in err and err.decode().rstrip().endswith("interrupted")


def test_bad_files_are_skipped_with_reasons(
    libri_flat: Path, speech: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (libri_flat / "900-1-empty.wav").write_bytes(b"")
    (libri_flat / "901-1-noise.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    sf.write(libri_flat / "902-1-short.wav", speech[:8000], 16000)
    sf.write(libri_flat / "903-1-silent.wav", np.zeros(48000, dtype=np.float32), 16000)
    nan = speech[:48000].copy()
    nan[100] = np.nan
    sf.write(libri_flat / "904-1-nan.wav", nan, 16000, subtype="FLOAT")
    (libri_flat / "nospeaker.wav").symlink_to(sorted(libri_flat.glob("*.flac"))[0].resolve())
    list_dir = tmp_path / "lists"
    args = ["--dataset_dir", str(libri_flat), "--dataset_format", "flat", "--speaker_regex", r"^(\d+)-"]
    out, _ = run_main([*args, "--test_mode", "none", "--list_dir", str(list_dir)], capsys)
    skipped = read_skipped(list_dir / "skipped.txt")
    assert {name: reason.split(":")[0] for name, reason in skipped.items()} == {
        "900-1-empty.wav": "empty",
        "901-1-noise.wav": "undecodable",
        "902-1-short.wav": "too short",
        "903-1-silent.wav": "silent",
        "904-1-nan.wav": "non-finite",
        "nospeaker.wav": "no speaker",
    }
    assert "0.500 s" in skipped["902-1-short.wav"]
    assert len(read_list(list_dir / "train_list.txt")) == 6
    assert "kept 6 files, skipped 6" in out and "too short: 1" in out


def test_utterances_mode_is_closed_set(dev_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    list_dir = tmp_path / "lists"
    args = ["--dataset_dir", str(dev_folder), "--dataset_format", "folder", "--test_mode", "utterances"]
    run_main([*args, "--test_every", "5", "--list_dir", str(list_dir)], capsys)
    train, test = read_list(list_dir / "train_list.txt"), read_list(list_dir / "test_list.txt")
    everything = sorted(train + test)
    assert len(everything) == 12
    assert test == [everything[i] for i in (0, 5, 10)]  # every 5th of the sorted list
    labels = read_map(list_dir / "speakers.txt")
    assert labels == {0: "174", 1: "251", 2: "84"}
    test_labels = read_map(list_dir / "test_speakers.txt")
    assert all(labels[label] == test_labels[label] for _, label in test)  # same labels as training


def test_speakers_filter_across_two_dirs(
    libri_flat: Path, dev_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    list_dir = tmp_path / "lists"
    args = ["--dataset_dir", str(libri_flat), str(dev_folder), "--dataset_format", "flat", "folder"]
    args += ["--speaker_regex", r"^(\d+)-", "--list_dir", str(list_dir)]
    out, _ = run_main([*args, "--speakers", "dev-clean/84", "dev-clean/251", "--test_speaker_ids", "251"], capsys)
    train_map = read_map(list_dir / "speakers.txt")
    names = set(train_map.values())
    # the flat dir is named by no entry, so all its speakers stay; dev-clean keeps only 84 (251 is test)
    assert names == {f"train-clean-100/{p.name.split('-')[0]}" for p in libri_flat.iterdir()} | {"dev-clean/84"}
    assert read_map(list_dir / "test_speakers.txt") == {0: "dev-clean/251"}
    assert "left out 4 files" in out
    # a plain id filters every dir; an unknown id is an error, not an empty list
    run_main([*args, "--speakers", "84", "174", "--test_mode", "none"], capsys)
    assert set(read_map(list_dir / "speakers.txt").values()) == {"dev-clean/84", "dev-clean/174"}
    err = run_fail([*args, "--speakers", "9999"], capsys)
    assert "--speakers: speaker(s) not found in the data: 9999" in err


# conversion


def test_convert_to_wav_keeps_sources_unless_asked(
    dev_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    list_dir = tmp_path / "lists"
    args = ["--dataset_dir", str(dev_folder), "--dataset_format", "folder", "--test_mode", "none"]
    args += ["--list_dir", str(list_dir), "--convert_to_wav"]
    sources = sorted(dev_folder.rglob("*.mp3"))
    real_files = [source.resolve() for source in sources]
    # a file we did not write sits where one WAV would go: it must be left alone
    foreign = sources[0].with_suffix(".wav")
    foreign.write_bytes(b"precious")
    out, err = run_main(args, capsys)
    assert "written 11" in out and "conflict" in err
    assert foreign.read_bytes() == b"precious"
    listed = {path for path, _ in read_list(list_dir / "train_list.txt")}
    assert str(sources[0]) in listed and len(listed) == 12
    for source in sources[1:]:
        wav = source.with_suffix(".wav")
        assert str(wav) in listed and source.is_symlink()  # original kept
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    foreign.unlink()
    # rerun: existing conversions are reused (not rewritten) and not listed twice
    mtime = sources[1].with_suffix(".wav").stat().st_mtime_ns
    out, _ = run_main(args, capsys)
    assert "written 1, reused 11" in out
    assert sources[1].with_suffix(".wav").stat().st_mtime_ns == mtime
    assert len(read_list(list_dir / "train_list.txt")) == 12
    # --delete_source removes the sources (here: our symlinks) only once the WAV is verified
    run_main([*args, "--delete_source"], capsys)
    assert not any(dev_folder.rglob("*.mp3"))
    assert all(real.is_file() for real in real_files)  # the shared data behind the links is untouched
    listed = [path for path, _ in read_list(list_dir / "train_list.txt")]
    assert len(listed) == 12 and all(path.endswith(".wav") and os.path.isfile(path) for path in listed)


def test_convert_to_wav_dir_and_8khz_wav(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "fsdd"
    for speaker in ("george", "lucas"):
        link(shared_data / "fsdd" / f"1_{speaker}_0.wav", folder / f"1_{speaker}_0.wav")
    args = ["--dataset_dir", str(folder), "--dataset_format", "flat", "--speaker_regex", "_([a-z]+)_"]
    args += ["--min_duration", "0.3", "--test_mode", "none", "--list_dir", str(tmp_path / "l")]
    run_main([*args, "--convert_to_wav", "--wav_dir", str(tmp_path / "wav")], capsys)
    listed = [path for path, _ in read_list(tmp_path / "l" / "train_list.txt")]
    assert listed == [str(tmp_path / "wav" / "1_george_0.wav"), str(tmp_path / "wav" / "1_lucas_0.wav")]
    assert sf.info(listed[0]).samplerate == 16000
    # without --wav_dir an 8 kHz .wav cannot be replaced by its own conversion: it gets a .16k.wav name
    run_main([*args, "--convert_to_wav"], capsys)
    listed = [path for path, _ in read_list(tmp_path / "l" / "train_list.txt")]
    assert listed == [str(folder / "1_george_0.16k.wav"), str(folder / "1_lucas_0.16k.wav")]
    assert (folder / "1_george_0.wav").is_symlink()


# errors


def test_missing_dataset_dir_is_one_line_error(tmp_path: Path) -> None:
    result = run_cli(["--dataset_dir", str(tmp_path / "nope"), "--list_dir", str(tmp_path / "l")])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: dataset dir not found: {tmp_path / 'nope'}"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset_format", "flat", "--speaker_regex", r"^\d+-"], "has no group"),
        (["--dataset_format", "flat"], "needs --speaker_regex"),
        (["--dataset_format", "folder", "flat"], "one value or one per --dataset_dir"),
        (["--dataset_format", "zhvoice"], "infodata.json not found"),
        (["--dataset_format", "folder", "--test_mode", "none", "--test_speakers", "1"], "need --test_mode speakers"),
    ],
)
def test_bad_arguments_fail_clearly(
    libri_flat: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    err = run_fail(["--dataset_dir", str(libri_flat), "--list_dir", str(tmp_path / "l"), *extra], capsys)
    assert err.startswith("error: ") and message in err


def test_no_audio_and_no_training_speakers(
    dev_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    err = run_fail(
        ["--dataset_dir", str(tmp_path / "empty"), "--dataset_format", "folder", "--list_dir", str(tmp_path / "l")],
        capsys,
    )
    assert "no audio files found in" in err
    args = ["--dataset_dir", str(dev_folder), "--dataset_format", "folder", "--list_dir", str(tmp_path / "l")]
    err = run_fail([*args, "--test_speakers", "3"], capsys)
    assert "no speakers left for training" in err
    err = run_fail([*args, "--speakers", "84", "--test_speaker_ids", "84"], capsys)
    assert "no speakers left for training" in err


def test_same_or_nested_dataset_dirs_are_refused(
    dev_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # listing a folder twice would turn every real speaker into two training classes
    base = ["--dataset_format", "folder", "--list_dir", str(tmp_path / "l"), "--test_mode", "none"]
    err = run_fail(["--dataset_dir", str(dev_folder), str(dev_folder) + "/", *base], capsys)
    assert "are the same folder" in err
    inner = next(p for p in dev_folder.iterdir() if p.is_dir())
    err = run_fail(["--dataset_dir", str(dev_folder), str(inner), *base], capsys)
    assert f"{inner} is inside {dev_folder}" in err
    assert not (tmp_path / "l").exists()


def test_default_split_holds_out_two_speakers(
    libri_flat: Path, dev_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # few speakers: 10% would be 0 or 1, and one test speaker gives no different-speaker trials
    args = ["--dataset_dir", str(libri_flat), "--dataset_format", "flat", "--speaker_regex", r"^(\d+)-"]
    run_main([*args, "--list_dir", str(tmp_path / "a")], capsys)
    assert len(read_map(tmp_path / "a" / "test_speakers.txt")) == 2
    _, err = run_main(["--dataset_dir", str(dev_folder), "--dataset_format", "folder", "--list_dir",
                       str(tmp_path / "b")], capsys)  # fmt: skip
    assert "only 1 test speaker" in err  # 3 speakers: 2 for training, 1 for test, and the user is told


def test_check_speech_skips_noise_tones_and_hum(
    dev_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = np.arange(3 * 16000) / 16000
    fakes = {
        "84/noise.wav": np.random.default_rng(0).normal(0, 0.1, len(t)),
        "174/tone.wav": 0.3 * np.sin(2 * np.pi * 440 * t),
        "251/hum.wav": 0.2 * np.sin(2 * np.pi * 50 * t) + 0.05,
    }
    for rel, wav in fakes.items():
        sf.write(dev_folder / rel, wav.astype(np.float32), 16000)
    base = ["--dataset_dir", str(dev_folder), "--dataset_format", "folder", "--test_mode", "none"]
    # without the flag nothing judges speech: the fakes are listed like recordings
    run_main([*base, "--list_dir", str(tmp_path / "plain")], capsys)
    assert len(read_list(tmp_path / "plain" / "train_list.txt")) == 15
    out, _ = run_main([*base, "--list_dir", str(tmp_path / "checked"), "--check_speech"], capsys)
    kept = read_list(tmp_path / "checked" / "train_list.txt")
    skipped = read_skipped(tmp_path / "checked" / "skipped.txt")
    assert len(kept) == 12 and not any(Path(path).name in {"noise.wav", "tone.wav", "hum.wav"} for path, _ in kept)
    assert {Path(p).name for p in skipped} == {"noise.wav", "tone.wav", "hum.wav"}
    assert all(reason.startswith("no speech: ") and "silero-vad" in reason for reason in skipped.values())
    assert "skipped 3 (no speech: 3)" in out
    # a bar the real recordings cannot pass skips them too (the value is used, not just the flag)
    strict = run_fail([*base, "--list_dir", str(tmp_path / "strict"), "--check_speech", "60"], capsys)
    assert "no usable audio left" in strict
    assert "--check_speech must be 0 or more" in run_fail([*base, "--check_speech", "-1"], capsys)
