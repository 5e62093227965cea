"""Checkpoints: torch saving (atomic, through utils.fileio), weights-only loads, self-describing inference models.

`load_torch_file` is the only place that calls `torch.load`, always with
`weights_only=True`, so a checkpoint downloaded from the internet cannot run code.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError
from utils.fileio import atomic_write_bytes
from utils.operating_points import OperatingPoints

INFERENCE_FORMAT = "voiceprint-inference-v1"


class CheckpointError(UserError, ValueError):
    """A model or checkpoint file that cannot be used; one-line message for the user."""


# saving


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# loading


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load` with weights_only=True and one-line errors for missing or broken files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"expected a model file but got a directory: {path}")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"model file is empty (0 bytes): {path}")
        if not _is_zip(path) and not _is_pickle(path):
            # torch's own words for a WAV given as the model were "101" or "pop from empty list"
            raise CheckpointError(f"cannot load model file {path}: not a PyTorch weights file, or it is damaged")
        _check_zip_crc(path)
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ..." is noise for the user: we refuse anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        reason = text[0].split(". ")[0] if text else type(exc).__name__  # torch appends paragraphs of advice
        if (
            "Unsupported global" in str(exc)
            or "GLOBAL" in str(exc)
            or ("Weights only load failed" in str(exc) and _is_pickle(path))
        ):
            reason = "it contains Python objects other than weights (refused: loading it could run code)"
        elif "Weights only load failed" in str(exc):
            reason = "not a PyTorch weights file, or it is damaged"
        raise CheckpointError(f"cannot load model file {path}: {reason}") from None


def _is_zip(path: Path) -> bool:
    """torch.save writes a zip archive (since torch 1.6)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _is_pickle(path: Path) -> bool:
    """A plain pickle (protocol 2-5) starts with PROTO <n>; random bytes almost never do."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _check_zip_crc(path: Path) -> None:
    """torch.load does not verify the CRC32 of the zip members torch.save writes: damaged bytes inside a model
    would load silently as damaged weights. Check them (about 10 ms per 3 MB)."""
    if not zipfile.is_zipfile(path):
        return  # the legacy format, or so broken that torch.load says why
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return  # let torch.load report it
    if bad is not None:
        raise CheckpointError(f"cannot load model file {path}: it is damaged (checksum mismatch in {bad})")


# inference models


def save_inference_model(
    path: str | os.PathLike,
    model: torch.nn.Module,
    model_config: dict[str, Any],
    feature_config: dict[str, Any],
    operating_points: OperatingPoints | None,
    meta: dict[str, Any] | None = None,
    half: bool = False,
) -> None:
    """One self-contained file: weights + how to build the model + how to compute its features + its
    operating points (thresholds, utils/operating_points.py).

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
            "operating_points": (operating_points or OperatingPoints()).to_dict(),
            "meta": dict(meta or {}),
            "state_dict": state,
        },
        path,
    )


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_model_path(path: str | os.PathLike) -> str:
    """A relative model path that does not exist here is looked up in the project, so the default
    `models/voiceprint_resnet34.pt` works when a script is run from another folder."""
    if not Path(path).exists() and not Path(path).is_absolute() and (PROJECT_ROOT / path).exists():
        return str(PROJECT_ROOT / path)
    return str(path)


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
        info = {k: blob[k] for k in ("model_config", "feature_config", "meta")}
        info["operating_points"] = OperatingPoints.from_info(blob).to_dict()
        _check_inference_info(info, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path} {exc}") from None
    except (RuntimeError, TypeError, KeyError, ValueError, AttributeError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
        detail = lines[0] + (f" {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else "")
        detail = detail if len(detail) <= 240 else detail[:240] + " ..."  # a key list can run to pages
        raise CheckpointError(f"{path} does not match its model description: {detail}") from None
    model.to(device).eval()
    return model, info


def _check_inference_info(info: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """What load_state_dict cannot see: features that fit the model, a usable threshold, finite weights."""
    from utils.features import FeatureConfig

    features = FeatureConfig.from_dict(info["feature_config"])  # ValueError for an unknown feature
    feat_dim = info["model_config"].get("feat_dim")
    if feat_dim is not None and features.num_bins != feat_dim:
        raise CheckpointError(
            f"does not match its model description: features have {features.num_bins} bins, the model expects {feat_dim}"
        )
    try:
        OperatingPoints.from_info(info).check()
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in state.values()):
        raise CheckpointError("has NaN or infinite weights (a diverged or damaged model)")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
