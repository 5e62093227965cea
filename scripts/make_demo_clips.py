"""Synthesise the redistributable demo clips in audio/ and audio_db/ with CMU Flite.

Three Flite voices, each built from a different real speaker, read different
English sentences; every clip is converted to 16 kHz mono 16-bit WAV with the
leading and trailing silence cut. Synthesis is deterministic, so re-running the
script reproduces the committed files byte for byte.

    audio/a1.wav audio/a2.wav   voice a (two sentences, for "same person" demos)
    audio/b1.wav ... audio/d2.wav
    audio_db/<voice>.wav          one enrolment clip per voice (a third sentence)
    audio/README.md               which file is which voice, licence, command

Usage:
    python scripts/make_demo_clips.py            # needs `flite` (apt install flite)
    python scripts/make_demo_clips.py --root /tmp/demo
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.audio import SAMPLE_RATE, AudioError, load_audio  # noqa: E402
from utils.config import fail, print_arguments  # noqa: E402
from utils.fileio import atomic_write_bytes, atomic_write_text  # noqa: E402

COMMAND = "python scripts/make_demo_clips.py"
MAX_TOTAL_BYTES = 1_000_000

# letter -> (preferred Flite voices, speaker description); the first available voice is used
VOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "a": (("awb",), "male, Scottish English (Alan W Black; CMU ARCTIC awb)"),
    "b": (("slt",), "female, US English (CMU ARCTIC slt)"),
    "c": (("rms",), "male, US English (CMU ARCTIC rms)"),
}
# the kal/kal16 diphone voice is not used: too synthetic to behave like a person (the bundled model scored
# it 0.38-0.44 against the awb and rms voices, above the 1:1 threshold)

# every clip has its own sentence, so same-voice pairs never share words by accident
SENTENCES: dict[str, tuple[str, str, str]] = {
    "a": (
        "The morning train was late again this week.",
        "Please leave the spare keys under the mat.",
        "My brother planted apple trees last spring.",
    ),
    "b": (
        "She painted the kitchen a bright sunny yellow.",
        "We should check the weather before we go.",
        "The library closes early on holidays.",
    ),
    "c": (
        "A cold wind blew across the field.",
        "He forgot to water the plants last week.",
        "Our neighbours are building a wooden fence.",
    ),
}

TRIM_TOP_DB = 45.0  # frames this far below the loudest one count as silence at the edges
EDGE_PAD_SECONDS = 0.1  # silence kept before and after the speech
PEAK = 0.89  # about -1 dBFS: same loudness for every clip, no clipping


# synthesis


def available_voices() -> set[str]:
    """Voice names reported by `flite -lv`."""
    result = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True)
    text = result.stdout + result.stderr
    return set(text.split(":", 1)[-1].split())


def pick_voices() -> dict[str, str]:
    """Map each letter to the first installed Flite voice of its list."""
    installed = available_voices()
    chosen = {}
    for letter, (names, _) in VOICES.items():
        name = next((n for n in names if n in installed), None)
        if name is None:
            raise AudioError(f"flite voice {' or '.join(names)} not installed (flite -lv lists: {sorted(installed)})")
        chosen[letter] = name
    return chosen


def synthesise(voice: str, text: str, workdir: Path) -> np.ndarray:
    """Run flite and return 16 kHz mono float32 (kal is 8 kHz and gets resampled by load_audio)."""
    out = workdir / f"{voice}.wav"
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], check=True, capture_output=True)
    return load_audio(out, SAMPLE_RATE)


def trim_edges(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cut leading/trailing silence only (pauses inside the sentence are kept as spoken)."""
    frame = int(sample_rate * 0.01)
    n = len(wav) // frame
    energy_db = 10.0 * np.log10(np.mean(wav[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy_db > energy_db.max() - TRIM_TOP_DB)
    pad = int(EDGE_PAD_SECONDS * sample_rate)
    start = max(loud[0] * frame - pad, 0)
    end = min((loud[-1] + 1) * frame + pad, len(wav))
    return wav[start:end]


def to_wav_bytes(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, wav, sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


# readme


def readme_text(rows: list[tuple[str, str, str, float, int]], voices: dict[str, str]) -> str:
    lines = [
        "# Demo clips",
        "",
        "Synthetic English speech made with [CMU Flite](http://cmuflite.org) 2.2 (Debian package `flite`).",
        "Each Flite voice was built from recordings of a different real speaker, so the three voices",
        "below behave as three different people for speaker recognition. Every clip has its own",
        "sentence (the demos are text-independent). 16 kHz, mono, 16-bit PCM WAV, leading and trailing",
        "silence trimmed, peak-normalised to -1 dBFS, no noise added.",
        "",
        "| voice | flite voice | speaker |",
        "| --- | --- | --- |",
    ]
    for letter, (_, description) in VOICES.items():
        lines.append(f"| {letter} | `{voices[letter]}` | {description} |")
    lines += ["", "| file | voice | seconds | bytes | text |", "| --- | --- | --- | --- | --- |"]
    for path, letter, text, seconds, size in rows:
        lines.append(f"| `{path}` | {letter} (`{voices[letter]}`) | {seconds:.2f} | {size} | {text} |")
    lines += [
        "",
        "Try them (after training or downloading a model):",
        "",
        "```bash",
        "python infer_contrast.py --audio_path1=audio/a1.wav --audio_path2=audio/a2.wav  # same person",
        "python infer_contrast.py --audio_path1=audio/a1.wav --audio_path2=audio/b2.wav  # different people",
        "```",
        "",
        "## Licence",
        "",
        "The clips are output of CMU Flite and its voices, which are free to use and redistribute.",
        "Flite and its voices are distributed under this licence (quoted from",
        '`/usr/share/doc/flite/copyright`, "All other files", which covers the voices):',
        "",
        "> Copyright (c) 1999-2001 by Language Technologies Institute, Carnegie Mellon University.",
        "> All Rights Reserved.",
        ">",
        "> Permission is hereby granted, free of charge, to use and distribute this software and its",
        "> documentation without restriction, including without limitation the rights to use, copy,",
        "> modify, merge, publish, distribute, sublicense, and/or sell copies of this work, and to",
        "> permit persons to whom this work is furnished to do so, subject to the following conditions:",
        "> 1. The code must retain the above copyright notice, this list of conditions and the following disclaimer.",
        "> 2. Any modifications must be clearly marked as such.",
        "> 3. Original authors' names are not deleted.",
        "> 4. The authors' names are not used to endorse or promote products derived from this",
        ">    software without specific prior written permission.",
        ">",
        "> CARNEGIE MELLON UNIVERSITY AND THE CONTRIBUTORS TO THIS WORK DISCLAIM ALL WARRANTIES WITH",
        "> REGARD TO THIS SOFTWARE, INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS, IN",
        "> NO EVENT SHALL CARNEGIE MELLON UNIVERSITY NOR THE CONTRIBUTORS BE LIABLE FOR ANY SPECIAL,",
        "> INDIRECT OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA",
        "> OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT",
        "> OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.",
        "",
        "The sentences were written for this project. The CMU ARCTIC recordings behind the `awb`, `rms`",
        "and `slt` voices are distributed by CMU under the same free licence (http://festvox.org/cmu_arctic/).",
        "",
        "## How they were made",
        "",
        "```bash",
        "apt-get install flite",
        COMMAND,
        "```",
        "",
        "Flite synthesis is deterministic: the command reproduces these files exactly.",
        "",
    ]
    return "\n".join(lines)


# main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default=str(ROOT), help="folder that receives audio/ and audio_db/")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print_arguments(args)
    if shutil.which("flite") is None:
        fail("flite is not installed (apt-get install flite)")
    root = Path(args.root)
    try:
        voices = pick_voices()
        # synthesis
        rows = []
        outputs: dict[Path, bytes] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for letter, voice in voices.items():
                texts = SENTENCES[letter]
                targets = [f"audio/{letter}1.wav", f"audio/{letter}2.wav", f"audio_db/{voice}.wav"]
                for rel, text in zip(targets, texts, strict=True):
                    wav = trim_edges(synthesise(voice, text, Path(tmp)))
                    wav = (wav * (PEAK / float(np.max(np.abs(wav))))).astype(np.float32)
                    data = to_wav_bytes(wav)
                    outputs[root / rel] = data
                    rows.append((rel, letter, text, len(wav) / SAMPLE_RATE, len(data)))
    except (AudioError, subprocess.CalledProcessError) as exc:
        fail(str(exc).splitlines()[0])
    total = sum(len(data) for data in outputs.values())
    if total > MAX_TOTAL_BYTES:
        fail(f"clips total {total} bytes, over the {MAX_TOTAL_BYTES} byte budget: shorten the sentences")
    # output
    for path, data in outputs.items():
        atomic_write_bytes(path, data)
    atomic_write_text(root / "audio" / "README.md", readme_text(rows, voices))
    for path in [*outputs, root / "audio" / "README.md"]:
        path.chmod(0o644)  # atomic writes come from mkstemp (0600); these are public files
    for rel, letter, _, seconds, size in rows:
        print(f"{rel:22s} voice {letter} ({voices[letter]:5s}) {seconds:5.2f} s {size:7d} bytes")
    print(f"total {total} bytes in {len(outputs)} clips -> {os.fspath(root)}")


if __name__ == "__main__":
    main()
