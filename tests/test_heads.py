"""Heads: head(embedding, label) -> (loss, accuracy) for every registered head."""

import math

import pytest
import torch

from utils.heads import HEADS, ArcFaceHead, build_head


@pytest.mark.parametrize("name", sorted(HEADS))
def test_contract_and_learning(name):
    torch.manual_seed(0)
    centres = torch.randn(5, 16) * 3
    label = torch.arange(5).repeat(20)
    emb = centres[label] + 0.3 * torch.randn(100, 16)
    head = build_head(name, 16, 5)
    optimiser = torch.optim.SGD(head.parameters(), lr=0.5)
    first = None
    for _ in range(60):
        loss, acc = head(emb, label)
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.dim() == 0 and 0.0 <= float(acc) <= 1.0
    assert loss.item() < first
    assert float(acc) > 0.9


def test_arcface_adds_the_angular_margin():
    head = ArcFaceHead(2, 2, margin=0.2, scale=1.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    theta = 0.5
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    cosine = head.cosine(emb)
    target = head.margin_logits(cosine, torch.tensor([0]))
    assert target[0, 0].item() == pytest.approx(math.cos(theta + 0.2), abs=1e-5)


def test_margin_warmup():
    head = ArcFaceHead(8, 3, margin=0.2)
    head.set_margin_fraction(0.25)
    assert head.margin == pytest.approx(0.05)
    head.set_margin_fraction(3.0)
    assert head.margin == pytest.approx(0.2)


def test_unknown_head():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("triplet", 8, 2)
