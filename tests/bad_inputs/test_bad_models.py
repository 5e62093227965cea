"""Bad input: model files. Rows, expectations and speed rules: helpers.py."""

from __future__ import annotations

import builtins
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bad_inputs.helpers import (
    MODEL,
    assert_error,
    record,
    run_main,
)

# models


class Payload:
    """A pickle that runs code when loaded: it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


def model_blob() -> dict:
    from utils.checkpoint import load_torch_file

    return load_torch_file(MODEL)


def put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def save(blob: object, path: Path) -> Path:
    from utils.checkpoint import atomic_torch_save

    atomic_torch_save(blob, path)
    return path


def changed(**parts) -> Callable[[Path, Path], Path]:
    def make(d: Path, trained: Path) -> Path:
        blob = model_blob()
        for key, update in parts.items():
            blob[key] = update(blob[key])
        return save(blob, d / "model.pt")

    return make


def make_truncated_model(d: Path, trained: Path) -> Path:
    data = MODEL.read_bytes()
    (d / "model.pt").write_bytes(data[: len(data) // 2])
    return d / "model.pt"


def make_corrupted_model(d: Path, trained: Path) -> Path:
    data = bytearray(MODEL.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\x00" * 4096  # a damaged zip member
    (d / "model.pt").write_bytes(bytes(data))
    return d / "model.pt"


def make_pickle_payload(d: Path, trained: Path) -> Path:
    (d / "model.pt").write_bytes(pickle.dumps({"format": "voiceprint-inference-v1", "x": Payload(d / "PWNED")}, 2))
    return d / "model.pt"


def make_torch_payload(d: Path, trained: Path) -> Path:
    buffer = io.BytesIO()
    torch.save({"format": "voiceprint-inference-v1", "state_dict": {}, "x": Payload(d / "PWNED")}, buffer)
    (d / "model.pt").write_bytes(buffer.getvalue())
    return d / "model.pt"


def make_onnx_junk(d: Path, trained: Path) -> Path:
    (d / "model.onnx").write_bytes(np.random.default_rng(1).bytes(4000))
    return d / "model.onnx"


MODEL_ROWS = {
    "missing file": (lambda d, t: d / "nope.pt", "model file not found"),
    "a directory": (lambda d, t: d, "expected a model file but got a directory"),
    "empty file": (lambda d, t: put(d / "model.pt", b""), "model file is empty (0 bytes)"),
    "truncated file": (make_truncated_model, "PytorchStreamReader failed reading zip archive"),
    "corrupted bytes inside": (make_corrupted_model, "it is damaged (checksum mismatch in archive/data/"),
    "random bytes": (
        lambda d, t: put(d / "model.pt", np.random.default_rng(2).bytes(3000)),
        "not a PyTorch weights file, or it is damaged",
    ),
    "config of another architecture (width)": (
        changed(model_config=lambda c: {**c, "width": 32}),
        "does not match its model description: Error(s) in loading",
    ),
    "config of another architecture (resnet18)": (
        changed(model_config=lambda c: {**c, "name": "resnet18"}),
        "does not match its model description",
    ),
    "features that do not fit the model": (
        changed(feature_config=lambda c: {**c, "n_mels": 40}),
        "features have 40 bins, the model expects 80",
    ),
    "unknown feature type": (changed(feature_config=lambda c: {**c, "feature": "mfcc"}), "unknown feature 'mfcc'"),
    "NaN weights": (
        changed(state_dict=lambda s: {k: v * float("nan") if v.is_floating_point() else v for k, v in s.items()}),
        "has NaN or infinite weights",
    ),
    "NaN threshold": (
        changed(operating_points=lambda p: {**p, "verification": float("nan")}),
        "stores an invalid verification threshold: nan",
    ),
    "a tensor, not a model": (lambda d, t: save(torch.zeros(3), d / "model.pt"), "is not a voiceprint inference model"),
    "training checkpoint instead of inference.pt": (
        lambda d, t: next(t.rglob("checkpoint.pt")),
        "is not a voiceprint inference model (a training checkpoint? use <save_model>/inference.pt)",
    ),
    "pickle that runs code (plain pickle)": (make_pickle_payload, "refused: loading it could run code"),
    "pickle that runs code (torch.save zip)": (make_torch_payload, "refused: loading it could run code"),
    "random bytes named .onnx": (make_onnx_junk, "cannot load ONNX model file"),
}


@pytest.mark.parametrize("row_id", list(MODEL_ROWS))
def test_model(
    row_id: str, trained: Path, good: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    make, expected = MODEL_ROWS[row_id]
    if row_id.endswith(".onnx"):
        pytest.importorskip("onnxruntime")
    model = make(tmp_path, trained)
    outcome = run_main("infer_contrast", ["--audio_path1", str(good), "--audio_path2", str(good),
                                          "--model_path", str(model), "--device", "cpu"], capsys)  # fmt: skip
    line = assert_error(outcome, expected)
    assert not (tmp_path / "PWNED").exists(), "loading the model ran code from it"
    record("model", row_id, "infer_contrast.py --model_path X", line, trained.parent.parent)


def test_payload_pickles_are_real(tmp_path: Path) -> None:
    """The two 'pickle that runs code' rows test something: unpickled without weights_only they DO run."""
    make_pickle_payload(tmp_path, tmp_path)
    pickle.loads((tmp_path / "model.pt").read_bytes())
    assert (tmp_path / "PWNED").exists()
    (tmp_path / "PWNED").unlink()
    make_torch_payload(tmp_path, tmp_path)
    torch.load(tmp_path / "model.pt", weights_only=False)  # the unsafe call the project never makes
    assert (tmp_path / "PWNED").exists()
