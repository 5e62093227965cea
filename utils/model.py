"""Speaker-embedding backbones: features (B, F, T) -> embeddings (B, D).

`resnet34` is the original design's modified ResNet34 (insightface-style IR
blocks with squeeze-excitation and PReLU, 64-128-256-512 channels at width 64,
a 512-d embedding), made length-independent: the original flattened a fixed
257x257 map into its last layer, which is why it could only look at 2.6 s.
`pooling='max'` keeps its max-pooling character; `pooling='stats'` pools mean
and standard deviation over time (x-vector style), which suits variable-length
speech better. `width` scales every stage (16 or 32 is plenty for small corpora).

Add a backbone = one class here + one entry in MODELS + one test.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

POOLINGS = ("max", "stats")


class SEBlock(nn.Module):
    """Squeeze-and-excitation: reweight channels by their global average."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class IRBlock(nn.Module):
    """Improved residual block: BN-conv-BN-PReLU-conv-BN-SE plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, in_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.PReLU(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            SEBlock(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """IR-SE ResNet over a (B, 1, F, T) 'image' of the features, pooled to one embedding."""

    layers: tuple[int, ...] = (3, 4, 6, 3)

    def __init__(
        self,
        feat_dim: int = 80,
        embedding_dim: int = 512,
        width: int = 64,
        pooling: str = "stats",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
        self.pooling = pooling
        channels = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.PReLU(width),
            nn.MaxPool2d(2, 2),  # as in the original: halves frequency and time before the blocks
        )
        stages = []
        in_channels = width
        for i, (count, out_channels) in enumerate(zip(self.layers, channels)):
            blocks = [IRBlock(in_channels, out_channels, stride=1 if i == 0 else 2)]
            blocks += [IRBlock(out_channels, out_channels) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.final_bn = nn.BatchNorm2d(in_channels)
        out_bins = feat_dim // 2
        for _ in range(3):
            out_bins = math.ceil(out_bins / 2)
        pooled = in_channels if pooling == "max" else 2 * in_channels * out_bins
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(pooled, embedding_dim)
        self.bn_out = nn.BatchNorm1d(embedding_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.stem(feats.unsqueeze(1))
        x = self.final_bn(self.stages(x))  # (B, C, F', T')
        if self.pooling == "max":
            x = torch.amax(x, dim=(2, 3))
        else:
            x = x.flatten(1, 2).float()  # (B, C*F', T'); statistics in fp32 for AMP stability
            mean = x.mean(dim=2)
            std = torch.sqrt(torch.clamp(x.var(dim=2, unbiased=False), min=1e-5))
            x = torch.cat([mean, std], dim=1)
        return self.bn_out(self.fc(self.dropout(x)))


class ResNet34(ResNet):
    layers = (3, 4, 6, 3)


class ResNet18(ResNet):
    layers = (2, 2, 2, 2)


MODELS: dict[str, type[ResNet]] = {"resnet34": ResNet34, "resnet18": ResNet18}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered backbone; `name` plus kwargs is exactly what checkpoints store."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
