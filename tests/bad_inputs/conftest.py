"""Fixtures of the bad-input matrix (tests/bad_inputs/): real speech to build rows from, one shared Embedder,
a tiny trained run, one torch thread, and the optional Markdown table of every row (see helpers.py)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.bad_inputs.helpers import MATRIX, MODEL, TINY_TRAIN, messy, record


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Rows run one after another in this process; one torch thread leaves the other core to the hour job."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def matrix_file():
    yield
    target = os.environ.get("VOICEPRINT_MATRIX_MD")
    if not target or not MATRIX:
        return
    lines = ["| # | area | row | command | what the user sees |", "| --- | --- | --- | --- | --- |"]
    for n, (area, row, command, seen) in enumerate(MATRIX, start=1):
        cell = seen.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {n} | {area} | {row} | `{command}` | `{cell}` |")
    Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> np.ndarray:
    """3 s of real 16 kHz speech (LibriSpeech train-clean-100) to build every test recording from."""
    wav, rate = sf.read(shared_data / "librispeech" / "train-clean-100" / "103-1240-0000.flac", dtype="float32")
    assert rate == 16000
    return wav[16000 : 16000 * 4]


@pytest.fixture(scope="module")
def good(shared_data: Path) -> Path:
    """The second recording of every infer_contrast row: real speech, 3.7 s."""
    return shared_data / "seed_samples" / "a_1.wav"


@pytest.fixture(scope="module")
def embedder():
    from utils.embedder import Embedder

    return Embedder(str(MODEL), device="cpu")


@pytest.fixture
def reuse_embedder(monkeypatch: pytest.MonkeyPatch, embedder) -> None:
    """Scripts that load the bundled model get the module's Embedder (saves ~1 s per row); others load theirs."""
    import utils.embedder

    real = utils.embedder.Embedder

    def factory(model_path, device="auto", **kwargs):
        if not kwargs and Path(model_path).resolve() == MODEL.resolve():
            return embedder
        return real(model_path, device=device, **kwargs)

    monkeypatch.setattr(utils.embedder, "Embedder", factory)


@pytest.fixture(scope="module")
def four(shared_data: Path) -> list[tuple[str, int]]:
    """Two real speakers, two recordings each."""
    seed = shared_data / "seed_samples"
    return [
        (str(seed / "a_1.wav"), 0),
        (str(seed / "a_2.wav"), 0),
        (str(seed / "b_1.wav"), 1),
        (str(seed / "b_2.wav"), 1),
    ]


@pytest.fixture(scope="module")
def trained(four: list[tuple[str, int]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.py on a BOM + CRLF + blank-line list: must train; its checkpoint is reused by the model rows."""
    tmp = tmp_path_factory.mktemp("train")
    (tmp / "train_list.txt").write_bytes(messy(four))
    import train

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        train.main(["--train_list_path", str(tmp / "train_list.txt"), "--save_model", str(tmp / "model"), *TINY_TRAIN])
    assert "done: 1 steps" in out.getvalue()
    record("train list", "blank lines, CRLF and UTF-8 BOM", "train.py --train_list_path X --max_steps 1",
           next(x for x in out.getvalue().splitlines() if x.startswith("done:")), tmp)  # fmt: skip
    return tmp / "model"
