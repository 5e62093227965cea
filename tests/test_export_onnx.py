"""export_onnx.py and Embedder on .onnx files: ONNX Runtime must reproduce the PyTorch model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxruntime)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnx onnxruntime)")

from export_onnx import main  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402
from utils.embedder import Embedder  # noqa: E402
from utils.onnx_model import export_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "voiceprint_resnet34.pt"
DEMO = ROOT / "audio"


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "bundled.onnx"
    worst = export_onnx(BUNDLED, out, verify_files=[DEMO / "a1.wav", DEMO / "b1.wav"])
    assert out.is_file() and worst < 1e-4
    return out


@pytest.fixture(scope="module")
def embedders(onnx_path: Path) -> tuple[Embedder, Embedder]:
    return Embedder(BUNDLED, device="cpu"), Embedder(onnx_path)


def test_onnx_matches_torch_on_real_speech(shared_data: Path, embedders: tuple[Embedder, Embedder]) -> None:
    torch_embedder, onnx_embedder = embedders
    speakers = sorted(p for p in (shared_data / "librispeech" / "dev-clean").iterdir() if p.is_dir())[:2]
    files = [sorted(s.rglob("*.mp3"))[0] for s in speakers]
    from utils.audio import load_audio

    for f in files:
        wav = load_audio(f, max_seconds=6.0)
        a, b = torch_embedder.embed_array(wav), onnx_embedder.embed_array(wav)
        assert 1.0 - float(a @ b) < 1e-4, f"{f.name}: cosine distance {1.0 - float(a @ b):.2e}"


def test_onnx_embedder_is_self_describing_and_gives_same_verdicts(embedders: tuple[Embedder, Embedder]) -> None:
    torch_embedder, onnx_embedder = embedders
    assert onnx_embedder.threshold == pytest.approx(torch_embedder.threshold)
    assert onnx_embedder.feature_config == torch_embedder.feature_config
    assert onnx_embedder.info["model_config"] == torch_embedder.info["model_config"]
    assert onnx_embedder.embedding_dim == 256 and str(onnx_embedder.device) == "cpu"
    for x, y, same in (("a1", "a2", True), ("a1", "b1", False)):
        scores = []
        for e in embedders:
            ex, ey = e.embed_file(DEMO / f"{x}.wav"), e.embed_file(DEMO / f"{y}.wav")
            assert ex.dtype == np.float32 and abs(float(np.linalg.norm(ex)) - 1.0) < 1e-5
            scores.append(float(ex @ ey))
        assert scores[0] == pytest.approx(scores[1], abs=1e-4)
        assert (scores[0] >= torch_embedder.threshold) is same
        assert (scores[1] >= onnx_embedder.threshold) is same
    batch, errors = onnx_embedder.embed_files([DEMO / "c1.wav", DEMO / "b1.wav"])
    assert batch.shape == (2, 256) and errors == [None, None]


def test_mismatching_export_fails_and_writes_nothing(
    onnx_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from onnx import numpy_helper

    import utils.onnx_model as module

    # a broken exporter: the embedding layer's bias is shifted, so ONNX Runtime disagrees with PyTorch
    proto = onnx.load(str(onnx_path))
    bias = max(proto.graph.initializer, key=lambda t: (len(t.dims) == 1 and t.dims[0] == 256, t.name))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
    monkeypatch.setattr(module, "export_backbone", lambda *args: proto.SerializeToString())
    out = tmp_path / "never.onnx"
    with pytest.raises(CheckpointError, match="differs from PyTorch.*not written"):
        export_onnx(BUNDLED, out, verify_files=[DEMO / "a1.wav"])
    assert list(tmp_path.iterdir()) == []


def test_bad_onnx_files_give_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from onnx import TensorProto, helper

    with pytest.raises(CheckpointError, match="model file not found"):
        Embedder(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load ONNX model"):
        Embedder(garbage)
    # a valid ONNX model that is not a voiceprint export
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(CheckpointError, match="not a voiceprint ONNX model"):
        Embedder(foreign)
    assert onnx.load(str(foreign)) is not None
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(CheckpointError, match=r"^onnxruntime is not installed: pip install onnxruntime$"):
        Embedder(garbage)


def test_cli_reports_bad_model_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--model_path", str(tmp_path / "missing.pt")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model file not found") and "Traceback" not in err
    assert not (tmp_path / "missing.onnx").exists()
    # an ONNX model named .pt loaded nowhere; a NaN tolerance failed every check, confusingly
    model = str(ROOT / "models" / "voiceprint_resnet34.pt")
    for argv, expected in (
        (["--model_path", model, "--output", str(tmp_path / "m.pt")], "must end in .onnx"),
        (["--model_path", model, "--output", str(tmp_path / "m.onnx"), "--tolerance", "nan"], "--tolerance is"),
        (["--model_path", str(tmp_path / "m.onnx")], "is an ONNX model already"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 1 and err.startswith("error: ") and expected in err, err
    assert not list(tmp_path.iterdir())


def test_ctrl_c_during_the_export_waits_for_the_export_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt inside the exporter's native imports once crashed eval.py (segfault, exit -11):
    Ctrl-C is held until the export is complete, then raised."""
    import os
    import signal

    import torch

    from utils.checkpoint import load_inference_model
    from utils.features import FeatureConfig
    from utils.onnx_model import export_backbone

    model, info = load_inference_model(BUNDLED, torch.device("cpu"))
    real_export, finished = torch.onnx.export, []

    def interrupted_export(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the keypress arrives as the export starts
        real_export(*args, **kwargs)
        finished.append(True)

    monkeypatch.setattr(torch.onnx, "export", interrupted_export)
    with pytest.raises(KeyboardInterrupt):
        export_backbone(model, FeatureConfig.from_dict(info["feature_config"]).num_bins)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards
