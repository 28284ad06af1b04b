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
from x2ct.diffusion.xray_input import network_input
from x2ct.projector import Geometry, view_vectors

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

    # ------------------------------------------------------------------ conditioning
    def condition(
        self,
        xrays: torch.Tensor,
        drop: torch.Tensor | None = None,
        geometry: Geometry | None = None,
        views: torch.Tensor | None = None,
    ) -> Condition:
        """Encode X-rays (B, V, H, W); ``drop`` (B,) bool replaces a sample's condition by
        the null condition (classifier-free guidance training). The features are
        back-projected along the config's views, or along ``views``: (B, V, 15) or (V, 15)
        view vectors on the model's (H, W) detector in the CT field's frame (each case's
        own acquisition: distances, pixel size, angles), or those of ``geometry`` (which
        must keep the model's detector and number of views). The X-rays are first mapped
        to the network's input (``config.xray_input``, diffusion/xray_input.py)."""
        expected = (self.config.num_views, *self.config.xray_shape)
        if xrays.ndim != 4 or tuple(xrays.shape[1:]) != expected:
            raise ValueError(
                f"expected X-rays of shape (B, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(the model's geometry), got {tuple(xrays.shape)}"
            )
        if geometry is not None:
            if views is not None:
                raise ValueError("give the views or a geometry, not both")
            nominal = self.config.geometry_obj
            if geometry.num_views != nominal.num_views or (
                geometry.detector_shape != nominal.detector_shape
            ):
                raise ValueError(
                    f"a view geometry must keep the model's {nominal.num_views} views and "
                    f"{nominal.detector_shape} detector, got {geometry.to_dict()}"
                )
            if geometry != nominal:
                views = view_vectors(geometry, device=xrays.device)
        context, feats = self.encoder(network_input(xrays, self.config.xray_input))
        features = None
        if self.backprojector is not None:
            features = self.backprojector(feats, views)
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
        views: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output at (x_t, t) given X-rays (encoded here, along ``views`` if given)
        or a precomputed ``cond``; x_t (B, C, x, y, z), t (B,) timesteps."""
        if cond is None:
            if xrays is None:
                raise ValueError("give the X-rays or a precomputed condition")
            cond = self.condition(xrays, drop, views=views)
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
