"""Backbones: the (B, F, T) -> (B, D) contract for every registered model and pooling."""

import pytest
import torch

from utils.model import MODELS, POOLINGS, build_model, count_parameters


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("pooling", POOLINGS)
def test_contract_any_length(name, pooling):
    model = build_model(name, feat_dim=80, embedding_dim=64, width=8, pooling=pooling).eval()
    for frames in (40, 101, 333):
        with torch.no_grad():
            out = model(torch.randn(2, 80, frames))
        assert out.shape == (2, 64)
        assert torch.isfinite(out).all()


def test_original_configuration_is_resnet34_at_width_64():
    model = build_model("resnet34", feat_dim=257, embedding_dim=512, width=64, pooling="max")
    assert [len(stage) for stage in model.stages] == [3, 4, 6, 3]
    assert model.stages[-1][-1].body[4].out_channels == 512
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 257, 257)).shape == (1, 512)


def test_width_scales_parameters():
    small = count_parameters(build_model("resnet34", feat_dim=80, width=16))
    large = count_parameters(build_model("resnet34", feat_dim=80, width=32))
    assert 3.0 < large / small < 4.5


def test_gradients_reach_the_stem():
    model = build_model("resnet18", feat_dim=80, embedding_dim=32, width=8)
    model(torch.randn(4, 80, 100)).pow(2).sum().backward()
    assert model.stem[0].weight.grad.abs().sum() > 0


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet1000")
    with pytest.raises(ValueError, match="unknown pooling"):
        build_model("resnet34", pooling="mean")
