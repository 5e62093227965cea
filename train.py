"""Train a speaker-embedding model (ResNet34 + ArcFace by default) on list files.

Usage:
    python train.py                                    # dataset/train_list.txt -> runs/model/
    python train.py --max_minutes 10 --device cpu      # a run that ends (and is saved) within 10 minutes
    python train.py --config configs/default.yaml      # YAML defaults, command line wins
    python train.py --max_steps 20 --device cpu        # smoke run
    python train.py --resume                           # continue a killed run exactly
    torchrun --nproc_per_node=4 train.py ...           # DistributedDataParallel (NCCL on GPU, gloo on CPU)

    python train.py --teacher resemblyzer              # also distil from the pretrained Resemblyzer encoder

Honest selection: nothing is chosen on the set you report. By default the 3 training speakers
with the most utterances are held out (--valid_speakers) as the validation split; it gives the
per-epoch EER and the stored 1:1 (EER) and 1:N (1% false accepts) thresholds. The shipped model is
the average of the last --average_last epoch checkpoints (no "best epoch" is picked).

Outputs in --save_model: epoch_N/checkpoint.pt (full state, last 3 kept),
last/checkpoint.pt (mid-epoch state), inference.pt (self-contained model for
eval.py and the inference scripts, with the thresholds measured on the validation split),
train_log.csv and train_args.json.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports below: a Ctrl-C while they load ends in one line
    from utils.errors import hold_ctrl_c_until_main

    hold_ctrl_c_until_main()

import argparse
import contextlib
import csv
import io
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from utils.audio import AudioError, Augmenter, load_audio
from utils.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_torch_file,
    save_inference_model,
)
from utils.config import (
    HelpFormatter,
    check_output_dir,
    check_positive,
    check_ranges,
    fail,
    parse_with_config,
    print_arguments,
    resolve_device,
    save_arguments,
    str2bool,
)
from utils.data import (
    CropConfig,
    EpochSampler,
    ListError,
    TrainDataset,
    num_classes_of,
    read_list,
    split_validation,
    start_batches,
)
from utils.errors import run_cli
from utils.features import FEATURES, LOG_FLOORS, FeatureConfig, FeatureExtractor, spec_augment
from utils.fileio import atomic_write_text, remove_stale_temp_files
from utils.heads import HEADS, build_head
from utils.model import MODELS, POOLINGS, build_model, count_parameters
from utils.operating_points import OperatingPoints


def add_data_options(add: Any) -> None:
    """Data options."""
    add(
        "--train_list_path",
        default="dataset/train_list.txt",
        help="training list: <audio path>\t<speaker label> per line (create_data.py writes it)",
    )
    add(
        "--valid_list_path",
        default="",
        help="validation list (speakers not in training) for per-epoch EER and the stored thresholds "
        "(default: carve --valid_speakers out of the training list). Never pass the set you report",
    )
    add(
        "--valid_speakers",
        type=int,
        default=3,
        help="without --valid_list_path: hold out this many training speakers (those with the most "
        "utterances) for validation (0 = no validation)",
    )
    add("--batch_size", type=int, default=64, help="crops per optimiser step (per process under torchrun)")
    add("--num_workers", type=int, default=2, help="data loader processes that decode and augment audio")
    add("--crop_seconds", type=float, default=2.0, help="training crop length (the original: 2.57 s = 257 frames)")
    add("--epoch_size", type=int, default=0, help="samples per epoch (0 = number of list items)")
    add(
        "--balance",
        choices=("speakers", "utterances"),
        default="speakers",
        help="sample speakers uniformly or utterances",
    )
    add("--cache_audio", type=str2bool, default=False, help="decode every file once and keep it in memory")
    add("--eval_max_seconds", type=float, default=20.0, help="cap on each test utterance during per-epoch evaluation")
    add(
        "--valid_share",
        type=float,
        default=0.1,
        help="most of the run spent validating: an epoch end is validated when training since the last "
        "validation took at least (1/share - 1) times one validation (1 = every epoch; the last is always)",
    )


def add_augmentation_options(add: Any) -> None:
    """Augmentation options."""
    add("--speed_perturb", type=str2bool, default=True, help="0.9/1.1 speed copies as extra speakers")
    add("--reverse_prob", type=float, default=0.0, help="probability of time reversal (the original used 0.5)")
    add("--gain_db", type=float, default=6.0, help="random gain of up to +/- this many dB")
    add("--noise_prob", type=float, default=0.5, help="probability of adding noise to a crop (5-20 dB SNR)")
    add("--noise_dir", default=None, help="folder of noise recordings (default: generated coloured noise)")
    add("--reverb_prob", type=float, default=0.3, help="probability of adding reverberation to a crop")
    add("--rir_dir", default=None, help="folder of room impulse responses (default: synthetic)")
    add(
        "--spec_augment", type=str2bool, default=True, help="mask random frequency bands and time spans of the features"
    )


def add_features_and_model_options(add: Any) -> None:
    """Features and model options."""
    add(
        "--feature",
        choices=FEATURES,
        default="fbank",
        help="fbank (log-Mel) or spectrogram (the original STFT magnitude)",
    )
    add("--n_mels", type=int, default=80, help="Mel bands of the fbank feature")
    add("--log_floor", choices=LOG_FLOORS, default="relative", help="fbank log floor (relative = level-invariant)")
    add("--model", choices=sorted(MODELS), default="resnet34", help="backbone architecture")
    add("--width", type=int, default=16, help="channels of the first stage (the original: 64)")
    add(
        "--pooling",
        choices=POOLINGS,
        default="stats",
        help="how frame features become one vector: stats (mean and standard deviation) or max",
    )
    add("--embedding_dim", type=int, default=256, help="size of the speaker embedding")
    add("--dropout", type=float, default=0.0, help="dropout before the embedding layer")


def add_head_options(add: Any) -> None:
    """Head options."""
    add(
        "--head",
        choices=sorted(HEADS),
        default="arcface",
        help="training loss head (classification with an angular margin)",
    )
    add("--margin", type=float, default=0.2, help="angular / cosine margin of the head")
    add("--scale", type=float, default=30.0, help="logit scale of the head")
    add("--margin_warmup_epochs", type=float, default=1.0, help="grow the margin linearly from 0 over this many epochs")


def add_optimiser_options(add: Any) -> None:
    """Optimiser options."""
    add("--optimizer", choices=("sgd", "adamw"), default="adamw", help="optimiser")
    add("--learning_rate", type=float, default=2e-3, help="peak learning rate (after warm-up)")
    add("--weight_decay", type=float, default=5e-4, help="weight decay")
    add("--scheduler", choices=("step", "cosine"), default="cosine", help="learning-rate schedule after warm-up")
    add("--lr_step", type=int, default=10, help="step schedule: multiply the LR by --lr_gamma every N epochs")
    add("--lr_gamma", type=float, default=0.1, help="step schedule: factor applied every --lr_step epochs")
    add(
        "--warmup_epochs",
        type=float,
        default=1.0,
        help="linear learning-rate warm-up (at most a tenth of --max_minutes)",
    )
    add(
        "--num_epoch",
        type=int,
        default=None,
        help="number of epochs (default: 30; with --max_minutes, as many as the budget allows)",
    )
    add("--max_steps", type=int, default=0, help="stop after this many optimiser steps (0 = no limit)")
    add("--max_minutes", type=float, default=0, help="wall-clock budget: the LR schedule is fitted to it (0 = none)")
    add("--grad_clip", type=float, default=5.0, help="clip the gradient norm to this value")
    add("--amp", type=str2bool, default=False, help="mixed precision on CUDA (bf16 when supported)")


def add_run_options(add: Any) -> None:
    """Run options."""
    add("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add("--seed", type=int, default=0, help="random seed (data order, crops, augmentation, initialisation)")
    add(
        "--save_model",
        default="runs/model",
        help="output folder; one run per folder (a folder holding another run needs --resume or --overwrite)",
    )
    add("--overwrite", action="store_true", help="replace the run already in --save_model")
    add("--save_every_steps", type=int, default=200, help="mid-epoch checkpoint period (0 = only at epoch ends)")
    add("--keep_checkpoints", type=int, default=3, help="epoch checkpoints kept on disk (at least --average_last)")
    add("--resume", type=str2bool, nargs="?", const=True, default=False, help="continue from the newest checkpoint")
    add("--pretrained_model", default=None, help="initialise the backbone from an inference.pt or checkpoint")
    add(
        "--average_last",
        type=int,
        default=3,
        help="inference.pt = average of the last K epoch checkpoints (0 = the epoch with the best validation EER)",
    )
    add("--teacher", default=None, help="distil from 'resemblyzer' (pip install resemblyzer) or a model file")
    add("--teacher_weight", type=float, default=20.0, help="weight of the distillation loss")
    add("--inference_half", type=str2bool, default=False, help="store inference.pt weights as fp16 (half the size)")
    add("--tensorboard", type=str2bool, default=False, help="also log to <save_model>/tensorboard")
    add(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0 = tuned while training: the fastest count, re-checked now and then "
        "as other processes sharing the cores come and go)",
    )
    add("--verbose", action="store_true", help="print the whole configuration first")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = p.add_argument
    add("--config", default=None, help="YAML file of option: value defaults (unknown keys are an error)")
    add_data_options(p.add_argument_group("data").add_argument)
    add_augmentation_options(p.add_argument_group("augmentation").add_argument)
    add_features_and_model_options(p.add_argument_group("features and model").add_argument)
    add_head_options(p.add_argument_group("head").add_argument)
    add_optimiser_options(p.add_argument_group("optimiser").add_argument)
    add_run_options(p.add_argument_group("run").add_argument)
    return p


# checkpoint helpers


def checkpoint_paths(save_dir: Path) -> list[Path]:
    found = [p / "checkpoint.pt" for p in save_dir.glob("epoch_*") if (p / "checkpoint.pt").is_file()]
    if (save_dir / "last" / "checkpoint.pt").is_file():
        found.append(save_dir / "last" / "checkpoint.pt")
    return found


def newest_checkpoint(save_dir: Path) -> dict | None:
    """The loadable checkpoint with the most steps; a broken one is reported and skipped."""
    best = None
    for path in checkpoint_paths(save_dir):
        try:
            state = load_torch_file(path)
        except CheckpointError as exc:
            print(f"warning: skipping {exc}", file=sys.stderr)
            continue
        if best is None or state["global_step"] > best["global_step"]:
            best = state
    return best


RUN_FILES = ("train_args.json", "train_log.csv", "inference.pt", "last", "tensorboard")


def run_files(save_dir: Path) -> list[Path]:
    """What a training run writes into its folder (anything else there is the user's and left alone)."""
    if not save_dir.is_dir():
        return []
    return [p for p in save_dir.iterdir() if p.name in RUN_FILES or (p.name.startswith("epoch_") and p.is_dir())]


def claim_run_folder(save_dir: Path, resume: bool, overwrite: bool) -> None:
    """One run per folder: a new run never mixes its logs and checkpoints with another run's."""
    found = run_files(save_dir)
    if not found or resume:
        return
    if not overwrite:
        names = ", ".join(sorted(p.name for p in found)[:4])
        fail(
            f"{save_dir} holds another training run ({names}): pass --resume to continue it, --overwrite to "
            "replace it, or choose another --save_model"
        )
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def prune_epochs(save_dir: Path, keep: int) -> None:
    epochs = sorted(save_dir.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]) if p.name[6:].isdigit() else -1)
    for old in epochs[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def write_log_row(path: Path, row: dict) -> None:
    """One row per epoch in train_log.csv: a resumed epoch replaces its partial row (atomic rewrite, small file)."""
    rows = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [old for old in csv.DictReader(f) if old.get("epoch") != str(row["epoch"])]
    rows.append(row)
    fields = list(row) + [key for old in rows for key in old if key not in row]
    fields = list(dict.fromkeys(fields))
    buffer = io.StringIO()
    out = csv.DictWriter(buffer, fieldnames=fields, restval="")
    out.writeheader()
    out.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_pretrained(model: nn.Module, path: str) -> None:
    """Copy matching backbone weights; say what was skipped (e.g. a different feature size)."""
    blob = load_torch_file(path)
    state = blob.get("state_dict") or blob.get("model") if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no model weights")
    own = model.state_dict()
    loaded, skipped = 0, []
    for key, value in state.items():
        if key in own and own[key].shape == value.shape:
            own[key] = value.float() if value.is_floating_point() else value
            loaded += 1
        else:
            skipped.append(key)
    model.load_state_dict(own)
    print(f"pretrained: loaded {loaded} tensors from {path}; skipped {len(skipped)}: {', '.join(skipped[:8])}")


class TrainStep(nn.Module):
    """Backbone + head as one module, so DDP synchronises both; plus the distillation term when a
    teacher's embeddings of the same crops are given."""

    def __init__(self, model: nn.Module, head: nn.Module, teacher_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.teacher_weight = teacher_weight

    def forward(
        self, feats: torch.Tensor, label: torch.Tensor, teacher_emb: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model(feats)
        loss, acc = self.head(emb, label)
        if teacher_emb is not None:
            from utils.teacher import distillation_loss

            loss = loss + self.teacher_weight * distillation_loss(emb, teacher_emb)
        return loss, acc


def average_epoch_models(save_dir: Path, last: int, current: dict, current_epoch: int) -> tuple[dict, list[int]]:
    """Mean of the backbone weights of the current model and the newest `last - 1` epoch checkpoints on
    disk (WeSpeaker-style averaging); returns (state_dict, the epochs averaged)."""
    on_disk = sorted(
        (int(p.name.split("_")[1]), p / "checkpoint.pt")
        for p in save_dir.glob("epoch_*")
        if p.name[6:].isdigit() and (p / "checkpoint.pt").is_file() and int(p.name[6:]) < current_epoch
    )[-(last - 1) :] if last > 1 else []  # fmt: skip
    total, used = None, []
    for number, source in [*on_disk, (current_epoch, None)]:
        state = current if source is None else load_torch_file(source)["model"]
        if total is None:
            total = {k: v.double().clone() if v.is_floating_point() else v.clone() for k, v in state.items()}
        else:
            for k, v in state.items():
                if v.is_floating_point():
                    total[k] += v.double()
        used.append(number)
    averaged = {k: (v / len(used)).float() if v.is_floating_point() else v for k, v in total.items()}
    return averaged, used


# evaluation


@contextlib.contextmanager
def cudnn_autotune_off() -> Iterator[None]:
    """Validation utterances each have their own length: cuDNN autotuning per shape would cost minutes."""
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark


@torch.inference_mode()
def evaluate(model: nn.Module, extractor: nn.Module, wavs: list[np.ndarray], labels: np.ndarray, device) -> dict:
    """EER/minDCF over all pairs of the (speaker-disjoint) validation list, whole utterances."""
    from tqdm import tqdm

    from utils.metrics import all_pairs_metrics

    model.eval()
    with cudnn_autotune_off():
        emb = np.stack(
            [
                torch.nn.functional.normalize(model(extractor(torch.from_numpy(w)[None].to(device))).float(), dim=1)[0]
                .cpu()
                .numpy()
                for w in tqdm(wavs, desc="validation", leave=False, dynamic_ncols=True)
            ]
        )
    model.train()
    return all_pairs_metrics(emb, labels)


def estimate_eval_seconds(model: nn.Module, extractor: nn.Module, wavs: list[np.ndarray], device) -> float:
    """What one validation pass will cost, from timing the longest utterance (reserved in a time budget)."""
    longest = torch.from_numpy(max(wavs, key=len))[None].to(device)
    with torch.inference_mode(), cudnn_autotune_off():  # as evaluate() runs it
        model.eval()
        # the second call is timed: the first pays one-time costs (on a GPU, kernel loading), which once
        # reserved most of a short budget and ended the run early
        for _ in range(2):
            started = time.time()
            model(extractor(longest))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        model.train()
    per_sample = (time.time() - started) / longest.shape[1]
    return 1.5 * per_sample * sum(len(w) for w in wavs)


def time_validation(trainer: Trainer) -> None:
    """One validation's cost at the current thread count: it spaces the validations (--valid_share) and is
    reserved in the time budget for the final one."""
    trainer.validation_seconds = estimate_eval_seconds(trainer.module.model, trainer.extractor,
                                                       trainer.data.valid_wavs, trainer.proc.device)  # fmt: skip
    trainer.budget.reserve(trainer.validation_seconds)


# setup


POSITIVE_OPTIONS = (
    "batch_size", "crop_seconds", "num_epoch", "learning_rate", "width", "embedding_dim", "n_mels", "scale", "lr_step",
    "eval_max_seconds", "keep_checkpoints", "grad_clip", "num_workers", "epoch_size", "max_steps", "max_minutes",
    "save_every_steps", "warmup_epochs", "margin_warmup_epochs", "weight_decay", "threads", "valid_speakers",
    "average_last", "teacher_weight", "valid_share",
)  # fmt: skip
ZERO_ALLOWED = (
    "num_workers", "epoch_size", "max_steps", "max_minutes", "save_every_steps", "warmup_epochs",
    "margin_warmup_epochs", "weight_decay", "threads", "valid_speakers", "average_last", "teacher_weight",
)  # fmt: skip


RANGES = {  # values that once reached the code (a traceback, or memory for a 1e9 s crop)
    "batch_size": (2, 1_000_000),  # batch normalisation needs two examples in training
    "crop_seconds": (0.1, 60.0),
    "dropout": (0.0, 0.99),
    "margin": (0.0, 1.0),
    "reverse_prob": (0.0, 1.0),
    "noise_prob": (0.0, 1.0),
    "reverb_prob": (0.0, 1.0),
    "gain_db": (0.0, 40.0),
    "lr_gamma": (1e-6, 1.0),
    "seed": (0, 2**32 - 1),  # numpy's seed range
}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    args = parse_with_config(build_parser(), argv)
    check_positive(args, POSITIVE_OPTIONS, allow_zero=ZERO_ALLOWED)
    check_ranges(args, RANGES)
    check_output_dir(args.save_model, "--save_model")
    if args.resume and args.overwrite:
        fail("--resume continues the run in --save_model, --overwrite replaces it: pass one of them")
    if args.valid_share > 1:
        fail(f"--valid_share is a share of the run, from above 0 to 1, got {args.valid_share}")
    return args


def epoch_limit(args: argparse.Namespace) -> int:
    """--num_epoch, or its default: 30 epochs, or as many as --max_minutes allows."""
    if args.num_epoch is not None:
        return args.num_epoch
    return 10**9 if args.max_minutes else 30


@dataclass
class Process:
    """This process's place in a (possibly distributed) run."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_process(args: argparse.Namespace) -> Process:
    """Device, torchrun's process group, threads and seeds."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(args.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    torch.backends.cudnn.benchmark = True
    return Process(device, rank, local_rank, world_size)


@dataclass
class TrainData:
    items: list[tuple[str, int]]
    num_speakers: int
    dataset: TrainDataset
    sampler: EpochSampler
    loader: torch.utils.data.DataLoader
    valid_wavs: list[np.ndarray]  # whole validation utterances (capped), decoded once; empty on other ranks
    valid_labels: np.ndarray


def read_training_lists(args: argparse.Namespace, is_main: bool) -> tuple[list, list, int]:
    """(training items, validation items, number of training labels), with warnings for odd lists."""
    try:
        train_items = read_list(args.train_list_path)
        if args.valid_list_path:
            valid_items = read_list(args.valid_list_path)
        else:
            train_items, valid_items = split_validation(train_items, args.valid_speakers)
        num_speakers = num_classes_of(train_items)
    except ListError as exc:
        fail(str(exc))
    unused = num_speakers - len({label for _, label in train_items})
    if unused and is_main:
        print(
            f"warning: {unused} of labels 0..{num_speakers - 1} have no utterance in {args.train_list_path}",
            file=sys.stderr,
        )
    missing = sum(not os.path.isfile(path) for path, _ in train_items)
    if missing == len(train_items):
        fail(f"none of the {missing} files in {args.train_list_path} exist (run from the folder the list expects?)")
    if missing and is_main:
        print(f"warning: {missing} of {len(train_items)} files in {args.train_list_path} do not exist", file=sys.stderr)
    return train_items, valid_items, num_speakers


def load_validation(args: argparse.Namespace, valid_items: list) -> tuple[list[np.ndarray], np.ndarray]:
    if not valid_items:
        return [], np.zeros(0, dtype=np.int64)
    try:
        wavs = [load_audio(path, max_seconds=args.eval_max_seconds) for path, _ in valid_items]
    except AudioError as exc:
        fail(f"validation list: {exc}")
    labels = np.array([label for _, label in valid_items])
    if len(set(labels.tolist())) < 2:
        fail(f"{args.valid_list_path or 'the validation split'} needs at least 2 speakers for verification trials")
    where = args.valid_list_path or f"{len(set(labels.tolist()))} speakers held out of the training list"
    print(f"validation: {len(valid_items)} utterances ({where}); it picks nothing you should report")
    return wavs, labels


def build_data(args: argparse.Namespace, proc: Process) -> TrainData:
    items, valid_items, num_speakers = read_training_lists(args, proc.is_main)
    try:
        augmenter = Augmenter(gain_db=args.gain_db, noise_prob=args.noise_prob, noise_dir=args.noise_dir,
                              reverb_prob=args.reverb_prob, rir_dir=args.rir_dir)  # fmt: skip
    except AudioError as exc:
        fail(str(exc))
    crop = CropConfig(seconds=args.crop_seconds, speed_perturb=args.speed_perturb, reverse_prob=args.reverse_prob)
    dataset = TrainDataset(items, num_speakers, crop, augmenter, seed=args.seed, cache_audio=args.cache_audio)
    if args.cache_audio:
        dataset.preload(num_workers=max(args.num_workers, 1), progress=proc.is_main)
    sampler = EpochSampler(
        [label for _, label in items], args.batch_size, seed=args.seed, balance=args.balance,
        epoch_size=args.epoch_size or None, rank=proc.rank, world_size=proc.world_size,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=args.num_workers, pin_memory=proc.device.type == "cuda",
        prefetch_factor=4 if args.num_workers > 0 else None,
    )  # fmt: skip
    valid_wavs, valid_labels = load_validation(args, valid_items) if proc.is_main else ([], np.zeros(0, np.int64))
    return TrainData(items, num_speakers, dataset, sampler, loader, valid_wavs, valid_labels)


def build_optimizer(args: argparse.Namespace, module: nn.Module) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            module.parameters(), lr=args.learning_rate, momentum=0.9, weight_decay=args.weight_decay, nesterov=True
        )
    return torch.optim.AdamW(module.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)


class Budget:
    """--max_minutes is the whole run, counted from process start: training stops early enough for the final
    validation and save. `used` is the elapsed share of the training part, the same on every rank."""

    SAVE_SECONDS = 5.0  # writing the last checkpoint and inference.pt, on top of the final validation

    def __init__(self, minutes: float, started: float, proc: Process) -> None:
        self.seconds = minutes * 60
        self.started = started  # moved back by the elapsed time of a resumed run
        self.eval_reserve = self.SAVE_SECONDS
        self.used = 0.0
        self.ahead = 0.0  # `used` after one more step: the run stops before a step would overrun the budget
        self.step_started: float | None = None
        self.proc = proc

    def reserve(self, validation_seconds: float) -> None:
        """Keep the final validation and save out of the training time."""
        self.eval_reserve = self.SAVE_SECONDS + validation_seconds

    def restart_step_clock(self) -> None:
        """After a validation: the next step's length must not include it."""
        self.step_started = None

    def update(self) -> float:
        """Max over ranks, so every DDP replica uses the same learning rate and stops at the same step."""
        now = time.time()
        step_seconds = now - self.step_started if self.step_started is not None else 0.0
        self.step_started = now
        train_seconds = max(self.seconds - self.eval_reserve, self.seconds * 0.1)
        used, ahead = (now - self.started) / train_seconds, (now - self.started + step_seconds) / train_seconds
        if self.proc.world_size > 1:  # on the training device: NCCL cannot reduce CPU tensors
            shared = torch.tensor([used, ahead], device=self.proc.device)
            dist.all_reduce(shared, op=dist.ReduceOp.MAX)
            used, ahead = (float(x) for x in shared.tolist())
        self.used, self.ahead = used, ahead  # one process: no device tensor, so no GPU sync per step
        return self.used


class ThreadTuner:
    """--threads 0 on a CPU, one process: torch's default of one thread per core collapses when other
    processes share the cores (2 cores beside two busy processes: 5.9 s per step with 2 threads, 3.6 s
    with 1; idle: 1.5 s vs 2.6 s). So the loop times its steps' compute now and then at the current count
    and at a neighbouring one (half or double) and keeps the faster; re-checked after a minute, as
    neighbours come and go, and twice as late after each trial that changed nothing (a trial of a slower
    count costs a few slow steps: on an idle machine it would otherwise cost ~7% of the run)."""

    def __init__(self, recheck_seconds: float = 60.0, trial_steps: int = 3) -> None:
        self.max_threads = self.threads = torch.get_num_threads()
        self.recheck_seconds, self.trial_steps = recheck_seconds, trial_steps
        self.interval = recheck_seconds  # doubles after each trial that changed nothing, up to 16x
        self.direction = -1  # torch starts at the most threads: try fewer first
        self.phase = "wait"  # wait -> baseline (time the current count) -> trial (time the candidate)
        self.next_check = 0.0
        self.skip, self.times, self.baseline, self.previous = 1, [], 0.0, self.threads

    def candidate(self) -> int | None:
        for direction in (self.direction, -self.direction):
            threads = max(1, self.threads // 2) if direction < 0 else min(self.max_threads, self.threads * 2)
            if threads != self.threads:
                self.direction = direction
                return threads
        return None

    def set_threads(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.threads, self.skip = threads, 1  # the first step after a change starts the new threads

    def record(self, seconds: float) -> str | None:
        """One step's compute time; a message when the thread count changed for good."""
        now = time.time()
        if self.phase == "wait":
            if now < self.next_check:
                return None
            self.phase, self.times = "baseline", []
        if self.skip:
            self.skip -= 1
            return None
        self.times.append(seconds)
        if len(self.times) < self.trial_steps:
            return None
        median, self.times = float(np.median(self.times)), []
        if self.phase == "baseline":
            candidate = self.candidate()
            if candidate is None:
                self.phase, self.next_check = "wait", now + self.interval
                return None
            self.baseline, self.previous, self.phase = median, self.threads, "trial"
            self.set_threads(candidate)
            return None
        self.phase = "wait"
        if median < 0.95 * self.baseline:  # keep it, and go on the same way at once
            self.next_check, self.interval = now, self.recheck_seconds
            return (
                f"threads {self.previous} -> {self.threads}: {median:.2f} s per step instead of {self.baseline:.2f} s"
            )
        self.set_threads(self.previous)
        self.direction, self.next_check = -self.direction, now + self.interval
        self.interval = min(2 * self.interval, 16 * self.recheck_seconds)
        return None


class LearningRateSchedule:
    """Linear warm-up, then cosine (or step) decay; with a time budget, by whichever runs out first."""

    def __init__(self, args: argparse.Namespace, steps_per_epoch: int, budget: Budget) -> None:
        self.args, self.steps_per_epoch, self.budget = args, steps_per_epoch, budget
        total = epoch_limit(args) * steps_per_epoch
        self.total_steps = min(total, args.max_steps) if args.max_steps else total
        self.warmup_steps = int(args.warmup_epochs * steps_per_epoch)

    def factor(self, step: int) -> float:
        args, used = self.args, self.budget.used
        if step < self.warmup_steps:
            warm = (step + 1) / self.warmup_steps
            if args.max_minutes:  # a slow machine must not spend its whole budget warming up: at most a tenth
                warm = max(warm, used / 0.1)
            if warm < 1.0:
                return warm
        if args.scheduler == "step":
            return args.lr_gamma ** (step // (args.lr_step * self.steps_per_epoch))
        progress = max(step - self.warmup_steps, 0) / max(self.total_steps - self.warmup_steps, 1)
        if args.max_minutes:
            progress = max(progress, used)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class Progress:
    """Where the run is; a checkpoint stores it so that --resume continues exactly."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: dict = field(default_factory=lambda: {"eer": None, "epoch": None, "threshold": None, "min_dcf": None})
    sum_loss: Any = 0.0  # running sums of the unfinished epoch (device tensors while training)
    sum_acc: Any = 0.0
    count: int = 0

    def start_epoch(self) -> None:
        self.sum_loss, self.sum_acc, self.count = 0.0, 0.0, 0


@dataclass
class Trainer:
    """Everything the loop touches, set up once by main()."""

    args: argparse.Namespace
    proc: Process
    data: TrainData
    extractor: nn.Module
    model_config: dict
    feature_config: FeatureConfig
    step_module: nn.Module  # TrainStep, wrapped in DDP under torchrun
    teacher: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    budget: Budget
    save_dir: Path
    thread_tuner: ThreadTuner | None = None
    trained_since_validation: float = 0.0  # seconds; with --valid_share, when the next validation is due
    validation_seconds: float = 0.0  # what one validation costs (estimated, then measured)
    writer: Any = None

    @property
    def module(self) -> TrainStep:
        """The TrainStep itself (unwrapped from DDP)."""
        wrapped = isinstance(self.step_module, nn.parallel.DistributedDataParallel)
        return self.step_module.module if wrapped else self.step_module


def build_teacher(args: argparse.Namespace, device: torch.device) -> Any:
    if not args.teacher:
        return None
    from utils.teacher import TeacherError, load_teacher

    try:
        return load_teacher(args.teacher, device)
    except TeacherError as exc:
        fail(str(exc))


# resume and save


def resume_state(trainer: Trainer) -> Progress:
    """Load the newest checkpoint of --save_model into the trainer (model, head, optimiser, schedule, RNG)."""
    args, save_dir, module = trainer.args, trainer.save_dir, trainer.module
    state = newest_checkpoint(save_dir)
    if state is None and checkpoint_paths(save_dir):
        # a run whose every checkpoint is damaged: starting afresh would write over its log and model
        fail(
            f"--resume: no checkpoint in {save_dir} can be read (see the warnings above); nothing was changed: "
            "pass --overwrite to start a new run there, or choose another --save_model"
        )
    if state is None:
        if trainer.proc.is_main:
            print(f"--resume: no checkpoint in {save_dir}, starting from scratch")
        return Progress()
    if state["model_config"] != trainer.model_config or state["feature_config"] != trainer.feature_config.to_dict():
        fail(f"checkpoint in {save_dir} was trained with another model or feature config")
    shapes = {k: tuple(v.shape) for k, v in state["head"].items()}
    if shapes != {k: tuple(v.shape) for k, v in module.head.state_dict().items()}:
        fail(
            f"checkpoint in {save_dir} was trained with another head or number of classes than "
            f"{args.train_list_path} gives ({trainer.data.dataset.num_classes}): resume with the same list and "
            "--head, or train into a new --save_model (--pretrained_model reuses the backbone)"
        )
    module.model.load_state_dict(state["model"])
    module.head.load_state_dict(state["head"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    progress = Progress(state["epoch"], state["step_in_epoch"], state["global_step"], state["best"])
    if progress.step_in_epoch:  # the unfinished epoch's running loss/accuracy, so its log row covers all of it
        progress.sum_loss, progress.sum_acc, progress.count = state.get("epoch_sums") or (0.0, 0.0, 0)
    trainer.budget.started -= float(state.get("elapsed", 0.0))
    if trainer.proc.is_main:
        print(f"resumed from step {progress.global_step} (epoch {progress.epoch}, batch {progress.step_in_epoch})")
    return progress


def save_state(trainer: Trainer, progress: Progress, path: Path, epoch: int, step_in_epoch: int) -> None:
    """Full training state (what --resume needs), written atomically."""
    args = trainer.args
    sums = [float(progress.sum_loss), float(progress.sum_acc), progress.count] if step_in_epoch else [0.0, 0.0, 0]
    atomic_torch_save(
        {
            "model": trainer.module.model.state_dict(),
            "head": trainer.module.head.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": progress.global_step,
            "best": progress.best,
            "elapsed": time.time() - trainer.budget.started,
            "epoch_sums": sums,
            "model_config": trainer.model_config,
            "feature_config": trainer.feature_config.to_dict(),
            "config": {k: v for k, v in vars(args).items() if v is None or isinstance(v, (str, int, float, bool))},
        },
        path,
    )


# one epoch


def train_one_epoch(trainer: Trainer, progress: Progress) -> bool:
    """Train until the epoch ends or a limit (--max_steps, --max_minutes) is reached; True when a limit was."""
    from tqdm import tqdm

    args, proc, data, module = trainer.args, trainer.proc, trainer.data, trainer.module
    device, budget = proc.device, trainer.budget
    data.sampler.set_epoch(progress.epoch, progress.step_in_epoch)
    data.dataset.set_epoch(progress.epoch)
    margin_warmup = max(args.margin_warmup_epochs * data.sampler.batches_per_rank, 1)
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    use_amp = args.amp and device.type == "cuda"
    stop = False
    bar = tqdm(start_batches(data.loader), total=len(data.sampler), disable=not proc.is_main, desc=f"epoch {progress.epoch}",
               dynamic_ncols=True)  # fmt: skip
    for wav, label in bar:
        if hasattr(module.head, "set_margin_fraction"):
            warm = progress.global_step / margin_warmup
            module.head.set_margin_fraction(max(warm, budget.used / 0.2) if args.max_minutes else warm)
        step_started = time.perf_counter()
        wav, label = wav.to(device, non_blocking=True), label.to(device, non_blocking=True)
        teacher_emb = trainer.teacher(wav) if trainer.teacher is not None else None
        feats = trainer.extractor(wav)
        if args.spec_augment:
            generator = torch.Generator().manual_seed(args.seed * 1_000_003 + progress.global_step * 31 + proc.rank)
            feats = spec_augment(feats, generator)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            loss, acc = trainer.step_module(feats, label, teacher_emb)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.unscale_(trainer.optimizer)
        nn.utils.clip_grad_norm_(trainer.step_module.parameters(), args.grad_clip)
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        if trainer.thread_tuner is not None:
            message = trainer.thread_tuner.record(time.perf_counter() - step_started)
            if message and proc.is_main:
                bar.write(message)
                if data.valid_wavs:  # validation runs at the new count too: re-time what it will cost
                    time_validation(trainer)
        if args.max_minutes:
            budget.update()
        trainer.scheduler.step()
        progress.global_step += 1
        progress.step_in_epoch += 1
        progress.sum_loss += loss.detach()  # summed on the device: no GPU sync per step
        progress.sum_acc += acc.detach()
        progress.count += 1
        if proc.is_main and (progress.count % 10 == 0 or progress.count == 1):
            bar.set_postfix(
                loss=f"{float(progress.sum_loss) / progress.count:.3f}",
                acc=f"{float(progress.sum_acc) / progress.count:.3f}",
                lr=f"{trainer.scheduler.get_last_lr()[0]:.2e}",
            )
        if proc.is_main and args.save_every_steps and progress.global_step % args.save_every_steps == 0:
            save_state(trainer, progress, trainer.save_dir / "last" / "checkpoint.pt", progress.epoch,
                       progress.step_in_epoch)  # fmt: skip
        stop = bool(args.max_steps) and progress.global_step >= args.max_steps
        stop = stop or bool(args.max_minutes) and budget.ahead >= 1.0
        if stop:
            break
    bar.close()
    return stop


# evaluate and save


def model_to_ship(trainer: Trainer, epoch: int) -> tuple[nn.Module, list[int]]:
    """The average of the newest --average_last epochs (with this one), or this epoch's weights."""
    model = trainer.module.model
    if not trainer.args.average_last:
        return model, []
    current = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state, averaged = average_epoch_models(trainer.save_dir, trainer.args.average_last, current, epoch)
    ship = build_model(**trainer.model_config).to(trainer.proc.device)
    ship.load_state_dict(state)
    return ship, averaged


def save_inference(trainer: Trainer, progress: Progress, model: nn.Module, averaged: list[int], epoch: int) -> None:
    """inference.pt: the model, its feature config and the thresholds measured on the validation split."""
    args, best = trainer.args, progress.best
    valid = args.valid_list_path or f"{args.valid_speakers} speakers held out of train_list"
    meta = {"epoch": epoch, "global_step": progress.global_step, "averaged_epochs": averaged,
            "valid_eer": best["eer"], "valid_min_dcf": best["min_dcf"], "train_list": args.train_list_path,
            "teacher": args.teacher, "valid": valid,
            "selection": f"average of the last {args.average_last} epochs" if args.average_last
            else "epoch with the best validation EER"}  # fmt: skip
    points = OperatingPoints(
        verification=best["threshold"], identification=best.get("recognition_threshold"),
        measured_on=valid if best["eer"] is not None else "",
    )  # fmt: skip
    save_inference_model(trainer.save_dir / "inference.pt", model, trainer.model_config,
                         trainer.feature_config.to_dict(), points, meta, half=args.inference_half)  # fmt: skip


def validation_due(trainer: Trainer, progress: Progress, stop: bool) -> bool:
    """The last epoch always; before it, only as often as --valid_share allows (tiny epochs on a CPU would
    otherwise spend most of the run validating: 26 validations in a 10-minute run of 9-step epochs)."""
    if not trainer.data.valid_wavs or stop or progress.epoch >= epoch_limit(trainer.args):
        return True
    return trainer.trained_since_validation >= (1 / trainer.args.valid_share - 1) * trainer.validation_seconds


def evaluate_and_save(trainer: Trainer, progress: Progress, epoch_done: bool, train_seconds: float,
                      validate: bool) -> None:  # fmt: skip
    """Rank 0 after each epoch (or a mid-epoch stop, which stays resumable): validate the model to ship
    (when due), write inference.pt when it is the one to keep, checkpoint, and log one row."""
    args, data = trainer.args, trainer.data
    eval_started = time.time()
    epoch = progress.epoch - 1 if epoch_done else progress.epoch
    row = {"epoch": epoch, "global_step": progress.global_step,
           "loss": round(float(progress.sum_loss) / max(progress.count, 1), 5),
           "accuracy": round(float(progress.sum_acc) / max(progress.count, 1), 5),
           "lr": trainer.scheduler.get_last_lr()[0], "seconds": round(train_seconds, 1), "eer": "", "min_dcf": ""}  # fmt: skip
    summary = f"epoch {epoch}: loss {row['loss']:.4f} acc {row['accuracy']:.4f}"
    trainer.trained_since_validation += train_seconds
    improved, metrics = validate and (not data.valid_wavs or bool(args.average_last)), None
    if validate:
        ship_model, averaged = model_to_ship(trainer, progress.epoch)
    if validate and data.valid_wavs:
        validation_started = time.time()
        metrics = evaluate(ship_model, trainer.extractor, data.valid_wavs, data.valid_labels, trainer.proc.device)
        trainer.validation_seconds, trainer.trained_since_validation = time.time() - validation_started, 0.0
        row["eer"], row["min_dcf"] = round(metrics["eer"], 5), round(metrics["min_dcf"], 5)
        improved = improved or progress.best["eer"] is None or metrics["eer"] <= progress.best["eer"]
        what = f"average of epochs {','.join(map(str, averaged))}" if averaged else "model"
        summary += (
            f" | validation EER ({what}) {metrics['eer']:.2%} minDCF(0.01) {metrics['min_dcf']:.4f}"
            f" threshold {metrics['threshold']:.3f}{' (best)' if improved and not averaged else ''}"
        )
    if improved:
        progress.best = {"eer": None, "epoch": epoch, "threshold": None, "min_dcf": None}
        if metrics is not None:
            progress.best.update(eer=metrics["eer"], threshold=metrics["threshold"], min_dcf=metrics["min_dcf"],
                                 recognition_threshold=metrics["threshold_at_far_1pct"])  # fmt: skip
        save_inference(trainer, progress, ship_model, averaged, epoch)
    if epoch_done:
        save_state(trainer, progress, trainer.save_dir / f"epoch_{progress.epoch}" / "checkpoint.pt", progress.epoch, 0)
        prune_epochs(trainer.save_dir, max(args.keep_checkpoints, args.average_last))  # the averaged ones stay
    else:
        save_state(trainer, progress, trainer.save_dir / "last" / "checkpoint.pt", progress.epoch,
                   progress.step_in_epoch)  # fmt: skip
    eval_seconds = time.time() - eval_started
    row["eval_seconds"] = round(eval_seconds, 1)
    if validate:
        trainer.budget.reserve(1.25 * eval_seconds)  # measured: the final validation and save, with a margin
        print(f"{summary} | train {row['seconds']} s, validation and save {row['eval_seconds']} s")
    else:
        print(f"{summary} | train {row['seconds']} s, save {row['eval_seconds']} s (validated every "
              f"~{(1 / args.valid_share - 1) * trainer.validation_seconds:.0f} s of training: --valid_share)")  # fmt: skip
    write_log_row(trainer.save_dir / "train_log.csv", row)
    if trainer.writer is not None:
        for key in ("loss", "accuracy", "lr"):
            trainer.writer.add_scalar(f"train/{key}", row[key], progress.global_step)
        if row["eer"] != "":
            trainer.writer.add_scalar("valid/eer", row["eer"], progress.global_step)
            trainer.writer.add_scalar("valid/min_dcf", row["min_dcf"], progress.global_step)


def print_start_notes(trainer: Trainer, num_parameters: int) -> None:
    args, data = trainer.args, trainer.data
    print(
        f"model {args.model} width {args.width} ({num_parameters / 1e6:.2f} M parameters), "
        f"{args.feature} {trainer.feature_config.num_bins} bins, head {args.head} over {data.dataset.num_classes} "
        f"classes, {len(data.items)} training files, device {trainer.proc.device}, {trainer.proc.world_size} process(es)"
    )
    if args.amp and trainer.proc.device.type != "cuda":
        print("warning: --amp applies to CUDA only; training in fp32 on CPU")
    if args.margin_warmup_epochs and hasattr(trainer.module.head, "set_margin_fraction"):
        span = f"{args.margin_warmup_epochs:g} epoch(s)" + (" or a fifth of --max_minutes" if args.max_minutes else "")
        print(f"note: the {args.head} margin grows from 0 to {args.margin} over the first {span}, "
              "so the loss rises at first by design")  # fmt: skip
    if trainer.teacher is not None:
        print(f"distilling from {args.teacher} (weight {args.teacher_weight:g}): loss = {args.head} + distillation")


def print_next_steps(save_dir: Path, progress: Progress) -> None:
    inference_path = save_dir / "inference.pt"
    where = f"inference model at {inference_path}" if inference_path.is_file() else "no inference model written"
    print(f"done: {progress.global_step} steps; {where}")
    best = progress.best
    if best["eer"] is not None:
        print(f"validation EER of the shipped model {best['eer']:.2%} (threshold {best['threshold']:.3f})")
    if inference_path.is_file():
        model_arg = f"--model_path {inference_path}"
        print("next:")
        print(f"  python eval.py {model_arg}                      # EER on dataset/test_list.txt, once")
        print(f"  python infer_contrast.py {model_arg} --audio_path1 A.wav --audio_path2 B.wav")
        print(f"  python infer_recognition.py {model_arg} --audio_db audio_db --recognize C.wav")


def main(argv: list[str] | None = None) -> None:
    process_started = time.time()  # --max_minutes counts from here: start-up and evaluation are part of the budget
    args = parse_arguments(argv)
    proc = setup_process(args)
    if proc.is_main and args.verbose:
        print_arguments(args)
    save_dir = Path(args.save_model)
    if proc.is_main:
        claim_run_folder(save_dir, args.resume, args.overwrite)

    # data
    data = build_data(args, proc)

    # model
    feature_config = FeatureConfig(feature=args.feature, n_mels=args.n_mels, log_floor=args.log_floor)
    extractor = FeatureExtractor(feature_config).to(proc.device)
    model_config = {"name": args.model, "feat_dim": feature_config.num_bins, "embedding_dim": args.embedding_dim,
                    "width": args.width, "pooling": args.pooling, "dropout": args.dropout}  # fmt: skip
    model = build_model(**model_config)
    if args.pretrained_model and not args.resume:
        try:
            load_pretrained(model, args.pretrained_model)
        except CheckpointError as exc:
            fail(str(exc))

    # head (and the teacher, whose embeddings of the same crops add a distillation term)
    head = build_head(args.head, args.embedding_dim, data.dataset.num_classes, margin=args.margin, scale=args.scale)
    step_module = TrainStep(model, head, args.teacher_weight if args.teacher else 0.0).to(proc.device)
    teacher = build_teacher(args, proc.device)

    # optimiser
    optimizer = build_optimizer(args, step_module)
    budget = Budget(args.max_minutes, process_started, proc)
    schedule = LearningRateSchedule(args, data.sampler.batches_per_rank, budget)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step))
    use_fp16_scaler = args.amp and proc.device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_fp16_scaler)
    trainer = Trainer(args, proc, data, extractor, model_config, feature_config, step_module, teacher, optimizer,
                      scheduler, scaler, budget, save_dir)  # fmt: skip

    # resume
    progress = resume_state(trainer) if args.resume else Progress()
    if proc.world_size > 1:
        trainer.step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[proc.local_rank] if proc.device.type == "cuda" else None
        )
    if proc.is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(save_dir)  # a run killed while writing a checkpoint leaves its temp file
        save_arguments(args, save_dir / "train_args.json")
        print_start_notes(trainer, count_parameters(model))
        if args.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            trainer.writer = SummaryWriter(str(save_dir / "tensorboard"))
    if data.valid_wavs:
        time_validation(trainer)
    if proc.device.type == "cpu" and proc.world_size == 1 and args.threads == 0:
        trainer.thread_tuner = ThreadTuner()

    # loop
    stop = bool(args.max_steps) and progress.global_step >= args.max_steps
    trainer.step_module.train()
    while progress.epoch < epoch_limit(args) and not stop:
        started = time.time()
        stop = train_one_epoch(trainer, progress)
        epoch_done = progress.step_in_epoch >= data.sampler.batches_per_rank
        if epoch_done:
            progress.epoch += 1
            progress.step_in_epoch = 0

        # evaluate and save
        if proc.is_main:
            evaluate_and_save(
                trainer, progress, epoch_done, time.time() - started, validation_due(trainer, progress, stop)
            )
        if proc.world_size > 1:
            dist.barrier()
        budget.restart_step_clock()
        progress.start_epoch()

    # done
    if proc.is_main:
        print_next_steps(save_dir, progress)
    if trainer.writer is not None:
        trainer.writer.close()
    if proc.world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
