"""ConvNeXt-V2-style hierarchical encoder (depthwise conv, LayerNorm, MLP with GRN, drop-path).

Four stages at strides 4, 8, 16 and 32. Written in plain torch (no timm/torchvision).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a (B, C, H, W) tensor."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt V2) on channels-last (B, H, W, C) input."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p == 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype) >= p
    return x * keep / (1 - p)


class Block(nn.Module):
    """dwconv 7x7 -> LN -> Linear(4C) -> GELU -> GRN -> Linear(C), residual with drop-path."""

    def __init__(self, dim: int, drop_path_rate: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.dropout = nn.Dropout(dropout)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pw2(self.dropout(self.grn(self.act(self.pw1(self.norm(y))))))
        return x + drop_path(y.permute(0, 3, 1, 2), self.drop_path_rate, self.training)


class ConvNeXtV2Encoder(nn.Module):
    """Input (B, 3, H, W) -> four feature maps (B, dims[i], H / 2**(i+2), W / 2**(i+2))."""

    def __init__(self, dims=(32, 64, 128, 256), depths=(1, 1, 3, 1), drop_path_rate: float = 0.0,
                 dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        self.downs = nn.ModuleList(
            nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
            for i in range(1, len(dims))
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        k = 0
        for dim, depth in zip(dims, depths, strict=True):
            self.stages.append(nn.Sequential(*(Block(dim, rates[k + j], dropout) for j in range(depth))))
            k += depth
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downs[i - 1](x)
            x = stage(x)
            feats.append(x)
        return feats


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d | nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
