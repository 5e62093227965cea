"""Pack the shared training split into .gpu/ (under 64 MB) for a remote GPU run.

Usage:
    python scripts/prepare_gpu_bundle.py [--shared ../shared/data] [--out .gpu]

train-clean-100 FLAC is transcoded to MP3 (libsndfile, ~75 kbps) so that it and
the dev-clean MP3s fit the transfer limit; then create_data.py writes the lists
(train: train-clean-100 + 10 dev-clean speakers; test: the other 5 dev-clean
speakers). This is how the bundled model's data was prepared (models/README.md).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import soundfile as sf

DEV_SPEAKERS = ["777", "1272", "1988", "2035", "2803"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--out", default=".gpu")
    args = parser.parse_args()
    src = Path(args.shared) / "librispeech"
    data = Path(args.out) / "data"
    (data / "train-clean-100").mkdir(parents=True, exist_ok=True)
    for flac in sorted((src / "train-clean-100").glob("*.flac")):
        wav, rate = sf.read(flac, dtype="float32")
        sf.write(data / "train-clean-100" / f"{flac.stem}.mp3", wav, rate, format="MP3",
                 bitrate_mode="CONSTANT", compression_level=0.55)  # fmt: skip
    shutil.copytree(src / "dev-clean", data / "dev-clean", dirs_exist_ok=True)
    subprocess.run([sys.executable, "create_data.py", "--dataset_dir", str(data / "train-clean-100"),
                    str(data / "dev-clean"), "--dataset_format", "flat", "folder", "--speaker_regex", r"^(\d+)-",
                    "--test_speaker_ids", *[f"dev-clean/{s}" for s in DEV_SPEAKERS],
                    "--list_dir", str(Path(args.out) / "lists")], check=True)  # fmt: skip


if __name__ == "__main__":
    main()
