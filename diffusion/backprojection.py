"""Geometry-aware conditioning: X-ray feature maps back-projected into the latent grid.

Each view's (h, w) feature map is spread along that view's true rays into the latent
volume with ``x2ct.projector.backproject`` (the exact adjoint of the projector), using
the training geometry rescaled to the feature map:

    detector_shape  (H, W) -> (h, w)                     same physical detector extent
    pixel_spacing   (dv, du) -> (dv * H / h, du * W / w)
    voxel spacing   CT spacing * the autoencoder's downsampling (the latent's voxels)

and divided by the back-projection of ones, so each latent voxel holds the mean feature
along the rays through it (voxels no ray reaches get 0). Views are kept apart (one group
of K channels per view) and channels are folded into the batch dimension for the
projector:  (B, V, K, h, w) -> (B, V*K, x, y, z).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from x2ct.projector import Geometry, backproject

__all__ = ["FeatureBackprojector", "rescale_geometry"]


def rescale_geometry(geometry: Geometry, shape: Sequence[int], angles=None) -> Geometry:
    """The same detector (physical extent, source and distances) sampled on ``shape``
    pixels; optionally only some of its ``angles``."""
    (height, width), (dv, du) = geometry.detector_shape, geometry.pixel_spacing
    h, w = (int(n) for n in shape)
    return dataclasses.replace(
        geometry,
        detector_shape=(h, w),
        pixel_spacing=(dv * height / h, du * width / w),
        angles=geometry.angles if angles is None else tuple(angles),
    )


class FeatureBackprojector(nn.Module):
    """(B, V, K, h, w) feature maps -> (B, V*K, X, Y, Z) mean features along each ray."""

    def __init__(
        self,
        geometry: Geometry,
        feature_shape: Sequence[int],
        volume_shape: Sequence[int],
        volume_spacing: Sequence[float],
        step: float = 0.5,
    ):
        super().__init__()
        self.feature_shape = tuple(int(n) for n in feature_shape)
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.volume_spacing = tuple(float(s) for s in volume_spacing)
        self.step = float(step)
        # one single-view geometry per view, on the feature map's pixels
        self.views = [rescale_geometry(geometry, self.feature_shape, (a,)) for a in geometry.angles]
        inv = []
        for g in self.views:
            ones = torch.ones(1, 1, *self.feature_shape, dtype=torch.float64)
            norm = backproject(
                ones, g, self.volume_shape, self.volume_spacing, self.step, backend="torch"
            )
            norm = norm[0, 0]  # (X, Y, Z): summed ray length x trilinear weight per voxel
            inv.append(torch.where(norm > 1e-6 * norm.max(), 1.0 / norm, torch.zeros_like(norm)))
        # derived from the config, so not saved with the weights
        self.register_buffer("inv_norm", torch.stack(inv).float(), persistent=False)  # (V, X, Y, Z)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, v, k, h, w = features.shape
        if v != len(self.views) or (h, w) != self.feature_shape:
            raise ValueError(
                f"expected features (B, {len(self.views)}, K, {self.feature_shape[0]}, "
                f"{self.feature_shape[1]}), got {tuple(features.shape)}"
            )
        out = []
        for i, g in enumerate(self.views):
            f = features[:, i].reshape(b * k, 1, h, w)  # channels folded into the batch
            vol = backproject(f, g, self.volume_shape, self.volume_spacing, self.step)
            out.append(vol.reshape(b, k, *self.volume_shape) * self.inv_norm[i])  # (B, K, X, Y, Z)
        return torch.cat(out, 1)  # (B, V*K, X, Y, Z)
