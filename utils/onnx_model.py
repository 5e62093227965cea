"""The ONNX model format, written and read in one place.

An exported model is the backbone only (features (B, F, T) -> embedding (B, D), dynamic batch and
time axes); the features stay in torch (utils/features.py). The model description, feature
config, operating points and training metadata travel as ONNX metadata_props (JSON), so an
.onnx file is as self-describing as an inference .pt. `export_onnx` writes it (after checking
ONNX Runtime against PyTorch on real audio); `load_onnx_model` reads it for the Embedder.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.checkpoint import CheckpointError
from utils.features import FeatureConfig
from utils.fileio import deferred_interrupt
from utils.operating_points import OperatingPoints

ONNX_FORMAT = "voiceprint-onnx-v1"
ONNX_INPUT, ONNX_OUTPUT = "features", "embedding"
# ONNX metadata_props; every value except "format" is JSON
ONNX_METADATA_KEYS = ("model_config", "feature_config", "operating_points", "meta")
MAX_VERIFY_SECONDS = 30.0
DEFAULT_OPSET = 17  # export_onnx() and Embedder(engine="onnx"); export_onnx.py repeats it so --help needs no torch


# reading


def is_onnx_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".onnx")


class OnnxBackbone(torch.nn.Module):
    """An ONNX Runtime session behind the backbone's interface: features (B, F, T) tensor -> embeddings (B, D) tensor."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(feats.detach().float().cpu().numpy())
        out = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0]
        return torch.from_numpy(out).to(feats.device)


def onnx_session(model: str | os.PathLike | bytes, num_threads: int | None = None) -> Any:
    """A CPU InferenceSession using as many threads as torch (`num_threads` overrides); one-line errors."""
    try:
        with deferred_interrupt():  # see export_backbone
            import onnxruntime as ort
    except ImportError:
        raise CheckpointError("onnxruntime is not installed: pip install onnxruntime") from None
    if not isinstance(model, bytes):
        path = Path(model)
        if not path.exists():
            raise CheckpointError(f"model file not found: {path}")
        if path.is_dir():
            raise CheckpointError(f"expected a model file but got a directory: {path}")
        model = str(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers on stderr
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = str(exc).strip().splitlines()
        name = "ONNX model" if isinstance(model, bytes) else f"ONNX model file {model}"
        raise CheckpointError(f"cannot load {name}: {text[0] if text else type(exc).__name__}") from None


def load_onnx_model(path: str | os.PathLike, num_threads: int | None = None) -> tuple[OnnxBackbone, dict[str, Any]]:
    """Load a backbone exported by export_onnx.py; returns (backbone, info) like `load_inference_model`."""
    session = onnx_session(path, num_threads)
    return OnnxBackbone(session), onnx_info(session, str(path))


def onnx_info(session: Any, name: str = "ONNX model") -> dict[str, Any]:
    """The model_config / feature_config / operating_points / meta stored in the ONNX metadata_props
    (files exported before operating points kept a "threshold" instead)."""
    props = session.get_modelmeta().custom_metadata_map
    if props.get("format") != ONNX_FORMAT:
        raise CheckpointError(f"{name} is not a voiceprint ONNX model (no {ONNX_FORMAT} metadata; use export_onnx.py)")
    names = [i.name for i in session.get_inputs()] + [o.name for o in session.get_outputs()]
    if names != [ONNX_INPUT, ONNX_OUTPUT]:
        raise CheckpointError(f"{name} has inputs/outputs {names}, expected [{ONNX_INPUT!r}, {ONNX_OUTPUT!r}]")
    try:
        info = {key: json.loads(props[key]) for key in ONNX_METADATA_KEYS if key in props}
        if "operating_points" not in info:
            info["operating_points"] = OperatingPoints.from_info({**info, "threshold": json.loads(props["threshold"])})
            info["operating_points"] = info["operating_points"].to_dict()
        info = {key: info[key] for key in ONNX_METADATA_KEYS}
        OperatingPoints.from_info(info).check()
        FeatureConfig.from_dict(info["feature_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{name} has broken voiceprint metadata: {str(exc).splitlines()[0]}") from None
    return info


# writing


def export_backbone(model: Any, num_bins: int, opset: int = DEFAULT_OPSET) -> bytes:
    """torch.onnx.export of the backbone with dynamic batch and time axes; returns the serialised model."""
    example = torch.randn(1, num_bins, 300)
    buffer = io.BytesIO()
    # Ctrl-C is held until the export ends: a KeyboardInterrupt inside the exporter's native imports (protobuf)
    # can leave a half-made module that crashes the process (measured: a segfault, ~1 in 50 interrupts)
    with deferred_interrupt(), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # the TorchScript-based exporter needs no onnxscript; torch 2.9+ warns that it is no longer the default
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch", 2: "frames"}, ONNX_OUTPUT: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def add_metadata(model_bytes: bytes, info: dict[str, Any], source: str) -> bytes:
    """Store format + JSON model/feature config, operating points and meta as metadata_props."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    meta = dict(info.get("meta") or {}, exported_from=Path(source).name, torch_version=torch.__version__)
    values = {"format": ONNX_FORMAT, **{k: json.dumps(info[k] if k != "meta" else meta) for k in ONNX_METADATA_KEYS}}
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "voiceprint export_onnx.py"
    proto.doc_string = "speaker-embedding backbone: features (batch, F, frames) -> embedding (batch, D); see metadata"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def verify(model_bytes: bytes, model: Any, feature_config: dict[str, Any], files: list[Path]) -> list[float]:
    """Cosine distance between PyTorch and ONNX Runtime embeddings for each file (plus one batch of two)."""
    from utils.audio import load_audio
    from utils.features import FeatureExtractor

    session = onnx_session(model_bytes)
    onnx_info(session)  # the metadata must read back
    backbone = OnnxBackbone(session)
    extractor = FeatureExtractor(FeatureConfig.from_dict(feature_config))
    wavs = [load_audio(f, max_seconds=MAX_VERIFY_SECONDS) for f in files]
    shortest = min(len(w) for w in wavs)
    inputs = [torch.from_numpy(w)[None] for w in wavs]
    inputs.append(torch.from_numpy(np.stack([w[:shortest] for w in wavs[:2]])))  # dynamic batch axis
    distances = []
    with torch.inference_mode():
        for wav in inputs:
            feats = extractor(wav)
            a = torch.nn.functional.normalize(model(feats).float(), dim=1)
            b = torch.nn.functional.normalize(backbone(feats).float(), dim=1)
            distances += (1.0 - (a * b).sum(dim=1).double()).abs().tolist()
    return distances


def export_onnx(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    verify_files: list[Path] | None = None,
    tolerance: float = 1e-4,
    source: str = "the given files",
) -> float:
    """Export, verify against PyTorch, then write `output` atomically; returns the max cosine distance.

    Raises CheckpointError (nothing written) when the model cannot be loaded or exported, or when ONNX
    Runtime disagrees with PyTorch by more than `tolerance`.
    """
    from utils.checkpoint import load_inference_model
    from utils.fileio import atomic_write_bytes

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CheckpointError("onnx is not installed: pip install onnx onnxruntime") from None
    model, info = load_inference_model(model_path, "cpu")
    num_bins = FeatureConfig.from_dict(info["feature_config"]).num_bins
    try:
        model_bytes = add_metadata(export_backbone(model, num_bins, opset), info, str(model_path))
    except Exception as exc:
        raise CheckpointError(f"ONNX export of {model_path} failed: {str(exc).strip().splitlines()[0]}") from None
    if not verify_files:
        raise CheckpointError("no audio to verify the export on (pass --verify_files)")
    distances = verify(model_bytes, model, info["feature_config"], list(verify_files))
    worst = max(distances)
    print(f"verified on {len(verify_files)} recordings ({source}) + one batch of 2: "
          f"max cosine distance ONNX Runtime vs PyTorch {worst:.2e} (tolerance {tolerance:g})")  # fmt: skip
    if not worst < tolerance:
        raise CheckpointError(
            f"ONNX Runtime output differs from PyTorch: max cosine distance {worst:.2e} >= {tolerance:g}; "
            f"{output} not written"
        )
    atomic_write_bytes(output, model_bytes)
    return worst
