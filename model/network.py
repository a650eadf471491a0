"""A plain 3D U-Net (imports only torch).

Four input channels in the order T1, T1c, T2, FLAIR; three sigmoid outputs, the BraTS regions
WT (labels 1+2+4), TC (1+4) and ET (4). The logits are returned; callers apply the sigmoid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetworkConfig:
    in_channels: int = 4
    out_channels: int = 3
    base_filters: int = 16
    depth: int = 4  # number of resolution levels
    max_filters: int = 256
    norm: str = "instance"  # "instance" | "batch" | "group"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> NetworkConfig:
        return cls(**data)

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this."""
        return 2 ** (self.depth - 1)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True, eps=1e-5)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be instance, batch or group; got {kind!r}")


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, norm: str, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            _norm(norm, c_out),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet3D(nn.Module):
    """Encoder with strided convolutions, decoder with transposed convolutions and skips."""

    def __init__(self, config: NetworkConfig = NetworkConfig()) -> None:
        super().__init__()
        if config.depth < 2:
            raise ValueError(f"depth must be >= 2; got {config.depth}")
        self.config = config
        widths = [min(config.base_filters * 2**i, config.max_filters) for i in range(config.depth)]
        self.encoders = nn.ModuleList()
        c_in = config.in_channels
        for i, w in enumerate(widths):
            self.encoders.append(ConvBlock(c_in, w, config.norm, stride=1 if i == 0 else 2))
            c_in = w
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(config.depth - 1, 0, -1):
            self.ups.append(nn.ConvTranspose3d(widths[i], widths[i - 1], 2, stride=2, bias=False))
            self.decoders.append(ConvBlock(2 * widths[i - 1], widths[i - 1], config.norm))
        self.head = nn.Conv3d(widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decoders, strict=True):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
