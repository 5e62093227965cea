"""Training heads: head(embedding, label) -> (loss, accuracy).

A head owns the class weights; only the backbone is kept for inference.
Add a loss = one class here + one entry in HEADS + one test.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxHead(nn.Module):
    """Plain linear classifier with cross-entropy (baseline)."""

    def __init__(self, embedding_dim: int, num_classes: int, **_: float) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_dim, num_classes)

    def forward(self, emb: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(emb.float())
        return F.cross_entropy(logits, label), _accuracy(logits, label)


class MarginHead(nn.Module):
    """Shared parts of the cosine-margin heads: normalised weights, scale, margin warm-up."""

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.max_margin = margin
        self.margin = margin
        self.scale = scale

    def set_margin_fraction(self, fraction: float) -> None:
        """Margin warm-up: start easy (small margin) so early training does not collapse."""
        self.margin = self.max_margin * min(max(fraction, 0.0), 1.0)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(emb.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)

    def margin_logits(self, cosine: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, emb: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = self.cosine(emb)
        target = self.margin_logits(cosine, label)
        one_hot = F.one_hot(label, cosine.size(1)).bool()
        logits = self.scale * torch.where(one_hot, target, cosine)
        return F.cross_entropy(logits, label), _accuracy(cosine, label)


class ArcFaceHead(MarginHead):
    """Additive angular margin: cos(theta + m) for the true class (the original's loss)."""

    def margin_logits(self, cosine: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        m = self.margin
        sine = torch.sqrt((1.0 - cosine.square()).clamp(min=1e-7))
        phi = cosine * math.cos(m) - sine * math.sin(m)
        # past theta = pi - m, cos(theta + m) is no longer monotonic: fall back to a cosine margin
        return torch.where(cosine > math.cos(math.pi - m), phi, cosine - math.sin(math.pi - m) * m)


class AMSoftmaxHead(MarginHead):
    """Additive cosine margin: cos(theta) - m for the true class."""

    def margin_logits(self, cosine: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return cosine - self.margin


def _accuracy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == label).float().mean()


HEADS: dict[str, type[nn.Module]] = {"arcface": ArcFaceHead, "amsoftmax": AMSoftmaxHead, "softmax": SoftmaxHead}


def build_head(name: str, embedding_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0) -> nn.Module:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose from {', '.join(HEADS)}")
    return HEADS[name](embedding_dim, num_classes, margin=margin, scale=scale)
