"""Checkpoints: atomic writes, weights-only loads, self-describing inference models.

Every file this project writes that a user would hate to lose (lists,
checkpoints, inference models, the voiceprint library) goes through
`atomic_write_bytes`: a temporary file in the same folder, fsync, rename, fsync
of the folder. A crash leaves either the old file or the new one, never half.

`load_torch_file` is the only place that calls `torch.load`, always with
`weights_only=True`, so a checkpoint downloaded from the internet cannot run code.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

INFERENCE_FORMAT = "voiceprint-inference-v1"


class CheckpointError(ValueError):
    """A model or checkpoint file that cannot be used; one-line message for the user."""


# atomic writes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files; give the file the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# loading


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load` with weights_only=True and one-line errors for missing or broken files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"expected a model file but got a directory: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        reason = text[0] if text else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it contains Python objects other than weights (refused: loading it could run code)"
        raise CheckpointError(f"cannot load model file {path}: {reason}") from None


# inference models


def save_inference_model(
    path: str | os.PathLike,
    model: torch.nn.Module,
    model_config: dict[str, Any],
    feature_config: dict[str, Any],
    threshold: float | None,
    meta: dict[str, Any] | None = None,
    half: bool = False,
) -> None:
    """One self-contained file: weights + how to build the model + how to compute its features.

    `half=True` stores floating weights as fp16 (half the size); they are
    loaded back as fp32.
    """
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    atomic_torch_save(
        {
            "format": INFERENCE_FORMAT,
            "model_config": dict(model_config),
            "feature_config": dict(feature_config),
            "threshold": None if threshold is None else float(threshold),
            "meta": dict(meta or {}),
            "state_dict": state,
        },
        path,
    )


def load_inference_model(path: str | os.PathLike, device: Any = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the backbone described in an inference file; returns (model in eval mode, info)."""
    from utils.model import build_model

    blob = load_torch_file(path)
    if not isinstance(blob, dict) or blob.get("format") != INFERENCE_FORMAT:
        hint = (
            " (a training checkpoint? use <save_model>/inference.pt)"
            if isinstance(blob, dict) and "model" in blob
            else ""
        )
        raise CheckpointError(f"{path} is not a voiceprint inference model{hint}")
    try:
        model = build_model(**blob["model_config"])
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in blob["state_dict"].items()}
        model.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match its model description: {str(exc).splitlines()[0]}") from None
    model.to(device).eval()
    info = {k: blob[k] for k in ("model_config", "feature_config", "threshold", "meta")}
    return model, info


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
