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

from x2ct.projector import (
    Geometry,
    backproject,
    backproject_views,
    rescale_views,
    view_vectors,
)

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
    """(B, V, K, h, w) feature maps -> (B, V*K, X, Y, Z) mean features along each ray.

    The rays are the geometry's (rescaled to the feature map), or per case those of
    ``views`` (B, V, 15) given to :meth:`forward`: view vectors on the X-ray detector's
    (H, W) pixels in the latent volume's frame (``x2ct.projector.view_vectors``,
    ``stack_views``), e.g. radiographs taken at other distances, or views refined by pose
    refinement. The normaliser (back-projection of ones) is then computed per case."""

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
        self.detector_shape = tuple(geometry.detector_shape)
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.volume_spacing = tuple(float(s) for s in volume_spacing)
        self.step = float(step)
        self.parallel = geometry.parallel
        # one single-view geometry per view, on the feature map's pixels
        self.views = [rescale_geometry(geometry, self.feature_shape, (a,)) for a in geometry.angles]
        nominal = torch.cat([view_vectors(g, torch.float64) for g in self.views])  # (V, 15)
        inv = self._inverse_norm(nominal[None])[0]  # (V, X, Y, Z)
        # derived from the config, so not saved with the weights
        self.register_buffer("inv_norm", inv.float(), persistent=False)

    def _inverse_norm(self, views: torch.Tensor) -> torch.Tensor:
        """1 / (back-projection of ones) per case and view, 0 where no ray reaches:
        (B, V, 15) feature-map view vectors -> (B, V, X, Y, Z)."""
        b, v = views.shape[:2]
        ones = torch.ones(b * v, 1, *self.feature_shape, dtype=views.dtype, device=views.device)
        norm = backproject_views(
            ones, views.reshape(b * v, 1, 15), self.volume_shape, self.volume_spacing,
            self.step, self.parallel, backend="torch",
        ).reshape(b, v, *self.volume_shape)
        peak = norm.flatten(2).amax(-1)[..., None, None, None]  # (B, V, 1, 1, 1)
        return torch.where(norm > 1e-6 * peak, 1.0 / norm, torch.zeros_like(norm))

    def forward(self, features: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        b, v, k, h, w = features.shape
        if v != len(self.views) or (h, w) != self.feature_shape:
            raise ValueError(
                f"expected features (B, {len(self.views)}, K, {self.feature_shape[0]}, "
                f"{self.feature_shape[1]}), got {tuple(features.shape)}"
            )
        if views is None:
            out = []
            for i, g in enumerate(self.views):
                f = features[:, i].reshape(b * k, 1, h, w)  # channels folded into the batch
                vol = backproject(f, g, self.volume_shape, self.volume_spacing, self.step)
                out.append(vol.reshape(b, k, *self.volume_shape) * self.inv_norm[i])
            return torch.cat(out, 1)  # (B, V*K, X, Y, Z)
        views = views.expand(b, *views.shape[-2:]) if views.ndim == 2 else views
        if tuple(views.shape) != (b, v, 15):
            raise ValueError(f"views must be ({b}, {v}, 15), got {tuple(views.shape)}")
        fviews = rescale_views(views.double(), self.detector_shape, self.feature_shape)
        # one projector call per case and view: its K channels and a channel of ones (the
        # normaliser) folded into the batch
        ones = torch.ones(b, v, 1, h, w, dtype=features.dtype, device=features.device)
        stacked = torch.cat([features, ones], 2)  # (B, V, K+1, h, w)
        out = []
        for i in range(b):
            for j in range(v):
                vol = backproject_views(
                    stacked[i, j][:, None], fviews[i, j : j + 1].to(features.dtype),
                    self.volume_shape, self.volume_spacing, self.step, self.parallel,
                )[:, 0]  # (K+1, X, Y, Z)
                norm = vol[k:].detach()
                peak = norm.amax()
                inv = torch.where(norm > 1e-6 * peak, 1.0 / norm, torch.zeros_like(norm))
                out.append(vol[:k] * inv)
        return torch.stack(out).reshape(b, v * k, *self.volume_shape)
