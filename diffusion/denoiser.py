"""`LatentDenoiser`: the conditional denoiser, X-rays in, network output on the latent out.

    condition(xrays)          -> Condition(context (B, V*T^2, D), features (B, V*K, x, y, z))
    forward(x_t, t, xrays)    -> UNet([x_t, features], t, context)   (B, C, x, y, z)

It owns the X-ray encoder, the geometry-aware back-projection (optional), the UNet and
the learned null context of classifier-free guidance. A dropped condition (``drop``
True for a sample) replaces that sample's context by the null context and its
back-projected features by zeros. Losses live in diffusion/loss.py, samplers in
diffusion/samplers.py; :meth:`guided` turns the network into the ``model_fn(x_t, t)`` a
sampler takes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from x2ct.diffusion.backprojection import FeatureBackprojector
from x2ct.diffusion.config import LatentDiffusionConfig
from x2ct.diffusion.schedule import NoiseSchedule
from x2ct.diffusion.unet import build_unet
from x2ct.diffusion.xray_encoder import XrayEncoder
from x2ct.projector import Geometry

__all__ = ["Condition", "LatentDenoiser"]


class Condition(NamedTuple):
    context: torch.Tensor  # (B, V*T^2, D) cross-attention tokens
    features: torch.Tensor | None  # (B, V*K, x, y, z) back-projected features, or None

    def repeat(self, n: int) -> Condition:
        """Each case repeated n times along the batch (case-major)."""
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)
        return Condition(rep(self.context), rep(self.features))

    def select(self, index) -> Condition:
        return Condition(
            self.context[index], None if self.features is None else self.features[index]
        )


class LatentDenoiser(nn.Module):
    def __init__(self, config: LatentDiffusionConfig):
        super().__init__()
        self.config = config
        self.encoder = XrayEncoder(config)
        self.unet = build_unet(config)
        n_tokens = config.num_views * config.token_grid**2
        self.null_context = nn.Parameter(torch.randn(n_tokens, config.context_dim) * 0.02)
        if config.geometry_aware:
            h, w = config.xray_shape
            f = config.encoder_downsample
            self.backprojector = FeatureBackprojector(
                config.geometry_obj, (h // f, w // f), config.latent_size, config.latent_spacing
            )
        else:
            self.backprojector = None
        self.schedule = NoiseSchedule(config)  # plain object: nothing to train or save
        self._view_backprojectors: dict = {}  # other view geometries (a refined pose)

    def backprojector_for(self, geometry: Geometry | None) -> FeatureBackprojector | None:
        """The back-projection of features along ``geometry``'s views (default: the
        config's). Another geometry (e.g. angles refined by pose refinement) must keep the
        number of views and the detector; its back-projector is built once and cached."""
        if self.backprojector is None or geometry is None or geometry == self.config.geometry_obj:
            return self.backprojector
        nominal = self.config.geometry_obj
        same_detector = geometry.detector_shape == nominal.detector_shape
        if geometry.num_views != nominal.num_views or not same_detector:
            raise ValueError(
                f"a view geometry must keep the model's {nominal.num_views} views and "
                f"{nominal.detector_shape} detector, got {geometry.to_dict()}"
            )
        if geometry not in self._view_backprojectors:
            h, w = self.config.xray_shape
            f = self.config.encoder_downsample
            self._view_backprojectors[geometry] = FeatureBackprojector(
                geometry, (h // f, w // f), self.config.latent_size, self.config.latent_spacing
            )
        return self._view_backprojectors[geometry].to(self.backprojector.inv_norm.device)

    # ------------------------------------------------------------------ conditioning
    def condition(
        self,
        xrays: torch.Tensor,
        drop: torch.Tensor | None = None,
        geometry: Geometry | None = None,
    ) -> Condition:
        """Encode X-rays (B, V, H, W); ``drop`` (B,) bool replaces a sample's condition by
        the null condition (classifier-free guidance training); ``geometry``: the views to
        back-project along, when not the config's (:meth:`backprojector_for`)."""
        expected = (self.config.num_views, *self.config.xray_shape)
        if xrays.ndim != 4 or tuple(xrays.shape[1:]) != expected:
            raise ValueError(
                f"expected X-rays of shape (B, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(the model's geometry), got {tuple(xrays.shape)}"
            )
        context, feats = self.encoder(xrays)
        backprojector = self.backprojector_for(geometry)
        features = backprojector(feats) if backprojector is not None else None
        if drop is not None:
            keep = ~drop.to(device=context.device, dtype=torch.bool)
            # torch.where keeps null_context in the graph even when nothing is dropped
            null = self.null_context.to(context.dtype)[None].expand_as(context)
            context = torch.where(keep[:, None, None], context, null)
            if features is not None:
                features = features * keep.to(features.dtype).reshape(-1, 1, 1, 1, 1)
        return Condition(context, features)

    def null_condition(self, batch: int, device=None, dtype=torch.float32) -> Condition:
        """The unconditional input: null context and zero back-projected features."""
        context = self.null_context.to(device=device, dtype=dtype)[None].expand(batch, -1, -1)
        features = None
        if self.backprojector is not None:
            c = self.config.num_views * self.config.backproject_channels
            features = torch.zeros(batch, c, *self.config.latent_size, device=device, dtype=dtype)
        return Condition(context, features)

    # ------------------------------------------------------------------ network
    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        xrays: torch.Tensor | None = None,
        *,
        cond: Condition | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output at (x_t, t) given X-rays (encoded here) or a precomputed
        ``cond``; x_t (B, C, x, y, z), t (B,) timesteps."""
        if cond is None:
            if xrays is None:
                raise ValueError("give the X-rays or a precomputed condition")
            cond = self.condition(xrays, drop)
        if tuple(x_t.shape[1:]) != (self.config.latent_channels, *self.config.latent_size):
            raise ValueError(
                f"expected latents (B, {self.config.latent_channels}, "
                f"{', '.join(map(str, self.config.latent_size))}), got {tuple(x_t.shape)}"
            )
        h = x_t if cond.features is None else torch.cat([x_t, cond.features.to(x_t.dtype)], 1)
        return self.unet(h, t, cond.context)

    def guided(self, cond: Condition, guidance_scale: float = 1.0):
        """``model_fn(x_t, t)`` for a sampler: classifier-free guidance (Ho & Salimans 2022)

            out = out_null + s (out_cond - out_null)

        evaluated in one doubled batch; s = 1 is the plain conditional model, s = 0 the
        unconditional one."""
        s = float(guidance_scale)

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if s == 1.0:
                return self(x_t, t, cond=cond)
            null = self.null_condition(x_t.shape[0], x_t.device, cond.context.dtype)
            if s == 0.0:
                return self(x_t, t, cond=null)
            both = Condition(
                torch.cat([cond.context, null.context]),
                None if cond.features is None else torch.cat([cond.features, null.features]),
            )
            out_c, out_u = self(torch.cat([x_t, x_t]), torch.cat([t, t]), cond=both).chunk(2)
            return out_u + s * (out_c - out_u)

        return model_fn
