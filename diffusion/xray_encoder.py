"""The X-ray encoder: one 2-D network shared by both views.

    xrays (B, V, H, W), normalised line integrals (drr / xray_scale)
      -> features (B, V, F, H/f, W/f)       f = 2^len(encoder_channels)
      -> context tokens (B, V * T^2, D)     T = token_grid, D = context_dim
      -> back-projection features (B, V, K, H/f, W/f)   K = backproject_channels

Each view is encoded by the same stride-2 residual stages (MONAI ``ResidualUnit``); its
feature map is average-pooled to a T x T grid, projected to D channels, and given a 2-D
positional encoding (initialised sinusoidal, learned) and a learned per-view embedding,
so attention can tell AP tokens from lateral ones and where on the detector each came
from. The unpooled feature map feeds the geometry-aware back-projection.
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from x2ct.diffusion.config import LatentDiffusionConfig

__all__ = ["XrayEncoder", "sinusoidal_2d"]


def _groups(channels: int, wanted: int = 8) -> int:
    return math.gcd(channels, wanted)


def sinusoidal_2d(grid: int, dim: int) -> torch.Tensor:
    """(grid * grid, dim) 2-D sine-cosine positional encoding: the first half of the
    channels encodes the row, the second half the column (Vaswani et al. 2017, per axis)."""
    half = dim // 2
    pos = torch.arange(grid, dtype=torch.float64)

    def axis(n: int) -> torch.Tensor:  # (grid, n)
        k = torch.arange((n + 1) // 2, dtype=torch.float64)
        freq = torch.exp(-math.log(10000.0) * 2 * k / max(n, 1))
        ang = pos[:, None] * freq[None]
        return torch.cat([ang.sin(), ang.cos()], 1)[:, :n]

    rows = axis(half)[:, None, :].expand(grid, grid, half)
    cols = axis(dim - half)[None, :, :].expand(grid, grid, dim - half)
    return torch.cat([rows, cols], -1).reshape(grid * grid, dim).float()


class XrayEncoder(nn.Module):
    def __init__(self, config: LatentDiffusionConfig):
        super().__init__()
        chans = config.encoder_channels
        self.num_views = config.num_views
        self.stem = Convolution(
            spatial_dims=2,
            in_channels=1,
            out_channels=chans[0],
            kernel_size=3,
            act="SWISH",
            norm=("group", {"num_groups": _groups(chans[0])}),
        )
        stages, c_in = [], chans[0]
        for c in chans:  # each stage halves H and W
            stages.append(
                ResidualUnit(
                    spatial_dims=2,
                    in_channels=c_in,
                    out_channels=c,
                    strides=2,
                    kernel_size=3,
                    subunits=2,
                    act="SWISH",
                    norm=("group", {"num_groups": _groups(c)}),
                )
            )
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(config.token_grid)
        self.to_context = nn.Linear(chans[-1], config.context_dim)
        n_tok = config.token_grid**2
        # (T^2, D), learned from a sinusoidal start
        self.position = nn.Parameter(sinusoidal_2d(config.token_grid, config.context_dim))
        self.view_embedding = nn.Parameter(torch.randn(self.num_views, config.context_dim) * 0.02)
        self.norm = nn.LayerNorm(config.context_dim)
        self.to_backproject = (
            nn.Conv2d(chans[-1], config.backproject_channels, kernel_size=1)
            if config.geometry_aware
            else None
        )
        self.tokens_per_view = n_tok

    def forward(self, xrays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """xrays (B, V, H, W) -> context (B, V*T^2, D), back-projection features
        (B, V, K, H/f, W/f) or None without geometry-aware conditioning."""
        if xrays.ndim != 4 or xrays.shape[1] != self.num_views:
            raise ValueError(
                f"expected X-rays of shape (B, {self.num_views}, H, W), got {tuple(xrays.shape)}"
            )
        b, v, h, w = xrays.shape
        feats = self.stages(self.stem(xrays.reshape(b * v, 1, h, w)))  # (B*V, F, h', w')
        tokens = self.pool(feats).flatten(2).transpose(1, 2)  # (B*V, T^2, F)
        tokens = self.to_context(tokens) + self.position  # (B*V, T^2, D)
        tokens = tokens.reshape(b, v, self.tokens_per_view, -1) + self.view_embedding[None, :, None]
        context = self.norm(tokens.reshape(b, v * self.tokens_per_view, -1))  # (B, V*T^2, D)
        if self.to_backproject is None:
            return context, None
        bp = self.to_backproject(feats)  # (B*V, K, h', w')
        return context, bp.reshape(b, v, *bp.shape[1:])
