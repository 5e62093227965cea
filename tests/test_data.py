"""List files, the training Dataset and the resumable sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from utils.audio import Augmenter
from utils.data import CropConfig, EpochSampler, ListError, TrainDataset, num_classes_of, read_list, write_list


def test_list_round_trip_with_bom_crlf_and_blank_lines(tmp_path: Path):
    path = tmp_path / "l.txt"
    path.write_bytes("\ufeffa b/中文.wav\t0\r\n\r\nc.flac\t2\r\n".encode())
    assert read_list(path) == [("a b/中文.wav", 0), ("c.flac", 2)]
    write_list(tmp_path / "out.txt", [("x.wav", 1)])
    assert (tmp_path / "out.txt").read_text() == "x.wav\t1\n"
    assert num_classes_of(read_list(path)) == 3


@pytest.mark.parametrize(
    "text,message",
    [
        ("a.wav 1\n", "no tab"),
        ("a.wav\tone\n", "not an integer"),
        ("a.wav\t-1\n", "negative"),
        ("\t3\n", "empty audio"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "l.txt"
    path.write_text("ok.wav\t0\n" + text)
    with pytest.raises(ListError, match=message) as info:
        read_list(path)
    assert ":2:" in str(info.value)


def test_sampler_is_deterministic_balanced_and_resumable():
    labels = [0] * 90 + [1] * 5 + [2] * 5  # one speaker with most utterances
    sampler = EpochSampler(labels, batch_size=10, seed=3, balance="speakers", epoch_size=3000)
    sampler.set_epoch(1)
    batches = list(sampler)
    again = list(sampler)
    assert batches == again
    drawn = np.array([labels[i] for batch in batches for _, i in batch])
    assert np.allclose(np.bincount(drawn) / len(drawn), 1 / 3, atol=0.05)
    sampler.set_epoch(1, start_batch=7)
    assert list(sampler) == batches[7:]
    # two ranks split each global batch without overlap
    ranks = [EpochSampler(labels, 5, seed=3, epoch_size=3000, rank=r, world_size=2) for r in (0, 1)]
    positions = [{p for batch in s for p, _ in batch} for s in ranks]
    assert not positions[0] & positions[1]


def test_dataset_crops_are_reproducible_and_speed_labels_extend_classes(shared_data: Path):
    files = sorted((shared_data / "librispeech" / "train-clean-100").glob("*.flac"))[:2]
    dataset = TrainDataset([(str(f), i) for i, f in enumerate(files)], 2, CropConfig(1.5, speed_perturb=True),
                           Augmenter(noise_prob=0.5, reverb_prob=0.5), seed=1)  # fmt: skip
    assert dataset.num_classes == 6
    wav, label = dataset[(5, 1)]
    again, label_again = dataset[(5, 1)]
    assert wav.shape == (24000,) and torch.equal(wav, again) and label == label_again
    assert label in (1, 3, 5)
    labels = {dataset[(p, 0)][1] for p in range(30)}
    assert labels == {0, 2, 4}
    cached = TrainDataset(dataset.items, 2, CropConfig(1.0), seed=1, cache_audio=True)
    cached.preload(num_workers=0)
    assert len(cached.cache) == 2 and cached[(0, 0)][0].shape == (16000,)


def test_validation_split_holds_out_whole_speakers_with_the_most_utterances():
    from utils.data import split_validation

    items = [(f"s{label}_{k}.wav", label) for label, count in ((0, 5), (1, 1), (2, 7), (3, 3), (4, 7)) for k in
             range(count)]  # fmt: skip
    train, valid = split_validation(items, 2)
    assert {label for _, label in valid} == {2, 4}  # 7 utterances each; ties go to the lower label
    assert len(valid) == 14 and not {p for p, _ in valid} & {p for p, _ in train}
    # the remaining speakers are renumbered 0..K-1 in order, so the head has no unused classes
    assert sorted({label for _, label in train}) == [0, 1, 2]
    assert ("s3_0.wav", 2) in train and ("s1_0.wav", 1) in train
    assert split_validation(items, 0) == (items, [])
    with pytest.raises(ListError, match="speaker\\(s\\) with 2\\+ utterances"):
        split_validation([("a.wav", 0), ("b.wav", 0), ("c.wav", 1)], 3)


LOADER_SCRIPT = """
import os, signal, sys, time, torch
from utils.data import start_batches
from utils.errors import run_cli

class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        time.sleep(0.01)
        return i

def main():
    loader = torch.utils.data.DataLoader(Items(), batch_size=None, num_workers=2)
    os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C at each fork
    for _ in ITERATE(loader):
        pass
    print("ran to the end")

run_cli(main)
"""


def test_ctrl_c_while_loader_workers_fork_interrupts_cleanly(tmp_path: Path) -> None:
    """With iter(loader), a Ctrl-C as the workers forked was lost (eval.py ran on to exit 0), printed an
    AttributeError traceback from the half-built iterator, or left workers alive (20 tries: 18 went wrong)."""
    import subprocess
    import sys

    from tests.test_errors import kill_leftovers

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", LOADER_SCRIPT.replace("ITERATE", "start_batches")], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    status = proc.wait(timeout=120)
    left_behind = kill_leftovers(proc)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert status == 130 and not left_behind and out == "", (status, left_behind, out, err[-1000:])
    assert "Traceback" not in err and err.strip() == "interrupted", err[-1000:]
