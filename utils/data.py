"""List files (`<audio path>\\t<speaker label>`), the label map, and the training Dataset."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.audio import (
    SAMPLE_RATE,
    AudioError,
    Augmenter,
    audio_info,
    load_audio,
    quiet_c_stderr,
    random_crop,
    speed_perturb,
)
from utils.errors import UserError
from utils.fileio import atomic_write_text, deferred_interrupt


class ListError(UserError, ValueError):
    """A malformed list file; the message names the file and line."""


# list files


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file (BOM allowed) or a one-line ListError naming `what` ("list", "trials")."""
    if not path.is_file():
        raise ListError(f"{what} file not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ListError(f"{what} file {path} is not UTF-8 text") from None


def read_list(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> list[tuple[str, int]]:
    """Read `<audio path>\\t<integer label>` lines.

    Blank lines, a UTF-8 BOM and CRLF line ends are accepted. Relative audio
    paths are taken as given (relative to the working directory, as the
    original did) unless `base_dir` is set.
    """
    path = Path(path)
    text = read_text_file(path, "list")
    items: list[tuple[str, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip("\r\n")
        if not line.strip():
            continue
        if "\t" not in line:
            raise ListError(f"{path}:{number}: expected '<audio path>\\t<label>', found no tab")
        audio_path, label_text = line.rsplit("\t", 1)
        try:
            label = int(label_text.strip())
        except ValueError:
            raise ListError(f"{path}:{number}: label {label_text.strip()!r} is not an integer") from None
        if label < 0:
            raise ListError(f"{path}:{number}: label {label} is negative")
        if not audio_path.strip():
            raise ListError(f"{path}:{number}: empty audio path")
        if base_dir is not None and not os.path.isabs(audio_path):
            audio_path = os.path.join(base_dir, audio_path)
        items.append((audio_path, label))
    return items


def write_list(path: str | os.PathLike, items: Iterable[tuple[str, int]]) -> None:
    """Atomically write a list file."""
    atomic_write_text(path, format_list(items))


def format_list(items: Iterable[tuple[str, int]]) -> str:
    """The text of a list file: `<audio path>\t<label>` lines (a path with a tab or newline is refused)."""
    lines = []
    for audio_path, label in items:
        if "\t" in audio_path or "\n" in audio_path:
            raise ListError(f"audio path contains a tab or newline: {audio_path!r}")
        lines.append(f"{audio_path}\t{int(label)}\n")
    return "".join(lines)


def num_classes_of(items: Sequence[tuple[str, int]]) -> int:
    """Number of classes implied by a list: labels must be 0..K-1 (checked, not assumed)."""
    if not items:
        raise ListError("the list is empty")
    labels = sorted({label for _, label in items})
    return labels[-1] + 1


def split_validation(
    items: Sequence[tuple[str, int]], num_speakers: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Hold out whole training speakers for model selection and thresholds: (train, valid).

    The `num_speakers` speakers with the most utterances are held out (ties: lowest label),
    so the split is the same on every run and every rank and has same-speaker trials. The
    remaining training labels are renumbered 0..K-1.
    """
    if num_speakers == 0:
        return list(items), []
    counts: dict[int, int] = {}
    for _, label in items:
        counts[label] = counts.get(label, 0) + 1
    eligible = sorted((label for label, n in counts.items() if n >= 2), key=lambda label: (-counts[label], label))
    held = set(eligible[:num_speakers])
    if num_speakers and len(held) < 2:
        raise ListError(
            f"--valid_speakers {num_speakers}: the training list has {len(held)} speaker(s) with 2+ utterances; "
            "pass --valid_list_path or --valid_speakers 0"
        )
    kept = sorted({label for _, label in items} - held)
    renumber = {label: i for i, label in enumerate(kept)}
    train = [(path, renumber[label]) for path, label in items if label not in held]
    valid = [(path, label) for path, label in items if label in held]
    return train, valid


# training data


def start_batches(loader: torch.utils.data.DataLoader) -> Iterator:
    """iter(loader), with Ctrl-C held while its worker processes fork. A KeyboardInterrupt between a fork
    and torch's bookkeeping was lost (the run went on to the end, exit 0), left workers behind, or printed a
    traceback from the half-built iterator's __del__."""
    with deferred_interrupt():
        return iter(loader)


@dataclass
class CropConfig:
    seconds: float = 2.0
    speed_perturb: bool = False  # 0.9 / 1.1 copies become extra speakers
    reverse_prob: float = 0.0  # the original's random time reversal


class TrainDataset(torch.utils.data.Dataset):
    """Random fixed-length crops of list items, returned as raw waveforms.

    Features are computed later on the batch (on the GPU when there is one),
    so workers only decode and augment. Each item's randomness comes from
    (seed, epoch, position), which makes a resumed run replay the same batches.
    Only the cropped window is decoded, so long recordings cost little.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        num_speakers: int,
        crop: CropConfig,
        augmenter: Augmenter | None = None,
        seed: int = 0,
        cache_audio: bool = False,
    ) -> None:
        self.items = list(items)
        self.num_speakers = num_speakers
        self.crop = crop
        self.augmenter = augmenter
        self.seed = seed
        self.epoch = 0
        self.num_samples = int(round(crop.seconds * SAMPLE_RATE))
        self.cache: dict[int, np.ndarray] | None = {} if cache_audio else None
        self._info: dict[int, tuple[int, int]] = {}
        self._warned: set[int] = set()  # items whose failure was reported (once per process)

    def preload(self, num_workers: int = 2, progress: bool = False) -> None:
        """Decode every file once (in worker processes) before training forks its loader workers,
        which then share the decoded audio copy-on-write."""
        from tqdm import tqdm

        loader = torch.utils.data.DataLoader(
            _DecodeDataset([path for path, _ in self.items]), batch_size=None, num_workers=num_workers
        )
        self.cache = {}
        for index, wav in enumerate(
            tqdm(start_batches(loader), total=len(self.items), disable=not progress, desc="caching audio")
        ):
            if wav.numel():  # a file that failed is retried (and reported) when a batch asks for it
                self.cache[index] = wav.numpy()

    @property
    def num_classes(self) -> int:
        return self.num_speakers * (3 if self.crop.speed_perturb else 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _load_window(self, index: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
        path = self.items[index][0]
        if self.cache is not None:
            if index not in self.cache:
                self.cache[index] = load_audio(path)
            return random_crop(self.cache[index], int(round(seconds * SAMPLE_RATE)), rng)
        if index not in self._info:
            self._info[index] = audio_info(path)
        frames, rate = self._info[index]
        total = frames / rate
        start = float(rng.uniform(0.0, max(total - seconds, 0.0)))
        if start > 0 and path.lower().endswith(".mp3"):
            # seeking into an MP3 makes libmpg123 print harmless "error: part2_3_length ..." lines on fd 2
            with quiet_c_stderr():
                wav = load_audio(path, start_seconds=start, max_seconds=seconds + 0.05)
        else:
            wav = load_audio(path, start_seconds=start, max_seconds=seconds + 0.05)
        return random_crop(wav, int(round(seconds * SAMPLE_RATE)), rng)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        # the sampler passes (position in epoch, item index) so randomness is per position
        position, index = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng([self.seed, self.epoch, position])
        label = self.items[index][1]
        factor = 1.0
        if self.crop.speed_perturb:
            choice = int(rng.integers(3))
            factor = (1.0, 0.9, 1.1)[choice]
            label = label + choice * self.num_speakers
        try:
            # read enough source audio that the perturbed crop still has the right length
            wav = self._load_window(index, self.crop.seconds * factor + 0.02, rng)
        except AudioError as exc:
            # files were checked by create_data.py; one vanishing mid-run is replaced by silence-free noise,
            # but never silently: a moved dataset would otherwise train on nothing but noise
            if index not in self._warned:
                from tqdm import tqdm

                self._warned.add(index)
                tqdm.write(f"warning: training file replaced by noise: {exc}", file=sys.stderr)  # not glued to a bar
            wav = rng.standard_normal(self.num_samples).astype(np.float32) * 0.01
        wav = speed_perturb(wav, factor)
        wav = random_crop(wav, self.num_samples, rng)
        if self.crop.reverse_prob > 0 and rng.random() < self.crop.reverse_prob:
            wav = wav[::-1]
        if self.augmenter is not None and self.augmenter.enabled:
            wav = self.augmenter(wav, rng)
        return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), label


class EpochSampler(torch.utils.data.Sampler):
    """Deterministic, resumable, optionally speaker-balanced, rank-sharded sampling.

    Each epoch draws `epoch_size` items (default: the list length). With
    `balance='speakers'` every speaker is equally likely regardless of how many
    utterances it has (LibriSpeech train-clean-100 here has one long file per
    speaker, dev-clean has ~60: uniform sampling over utterances would let ten
    speakers dominate). Yields (position, item index) pairs; `start_batch`
    skips batches already trained on before a resume.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        balance: str = "speakers",
        epoch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = np.asarray(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.balance = balance
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        total = epoch_size or len(self.labels)
        # every rank gets the same whole number of batches (DDP needs equal step counts)
        self.batches_per_rank = max(total // (batch_size * world_size), 1)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, 7919])
        count = self.batches_per_rank * self.batch_size * self.world_size
        if self.balance == "speakers":
            speakers, inverse = np.unique(self.labels, return_inverse=True)
            weights = 1.0 / np.bincount(inverse)[inverse]
            return rng.choice(len(self.labels), size=count, replace=True, p=weights / weights.sum())
        repeats = -(-count // len(self.labels))
        order = np.concatenate([rng.permutation(len(self.labels)) for _ in range(repeats)])
        return order[:count]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self._draw()
        per_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_rank):
            chunk = order[b * per_batch : (b + 1) * per_batch]
            mine = chunk[self.rank :: self.world_size]
            base = b * per_batch
            yield [(base + self.rank + i * self.world_size, int(idx)) for i, idx in enumerate(mine)]

    def __len__(self) -> int:
        return self.batches_per_rank - self.start_batch


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            return torch.from_numpy(load_audio(self.paths[i]))
        except AudioError:
            return torch.zeros(0)  # an exception here would end training with a worker traceback
