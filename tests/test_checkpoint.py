"""Atomic writes, weights-only loading, self-describing inference models."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from utils.checkpoint import (
    CheckpointError,
    load_inference_model,
    load_torch_file,
    save_inference_model,
)
from utils.features import FeatureConfig
from utils.fileio import atomic_write_bytes
from utils.model import build_model
from utils.operating_points import OperatingPoints

CONFIG = {"name": "resnet18", "feat_dim": 80, "embedding_dim": 16, "width": 4, "pooling": "stats", "dropout": 0.0}


def test_atomic_write_replaces_whole_file(tmp_path: Path):
    path = tmp_path / "a" / "list.txt"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in path.parent.iterdir()) == ["list.txt"]  # no temp files left
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("half", [False, True])
def test_inference_model_round_trip(tmp_path: Path, half: bool):
    model = build_model(**CONFIG).eval()
    path = tmp_path / "m.pt"
    points = OperatingPoints(verification=0.42, identification=0.5, measured_on="valid")
    save_inference_model(path, model, CONFIG, FeatureConfig().to_dict(), points, {"eer": 0.05}, half=half)
    loaded, info = load_inference_model(path)
    assert OperatingPoints.from_info(info) == points and info["meta"]["eer"] == 0.05
    x = torch.randn(2, 80, 120)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=5e-2 if half else 1e-5, rtol=1e-2 if half else 1e-5)
    # the file alone is enough: plain weights-only torch.load reads it
    assert torch.load(path, weights_only=True)["format"] == "voiceprint-inference-v1"


def test_code_carrying_pickle_is_refused(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(CheckpointError, match="refused"):
        load_torch_file(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_missing_and_foreign_files(tmp_path: Path):
    model = build_model(**CONFIG)
    good = tmp_path / "good.pt"
    save_inference_model(good, model, CONFIG, FeatureConfig().to_dict(), None)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot load"):
        load_inference_model(cut)
    with pytest.raises(CheckpointError, match="not found"):
        load_inference_model(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "train.pt")
    with pytest.raises(CheckpointError, match="not a voiceprint inference model"):
        load_inference_model(tmp_path / "train.pt")
    other = dict(CONFIG, width=8)  # a checkpoint whose weights do not fit its description
    blob = torch.load(good, weights_only=True)
    blob["model_config"] = other
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_inference_model(tmp_path / "mismatch.pt")
