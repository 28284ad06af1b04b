"""The projection loss: the X-rays of the predicted CT must match the input X-rays.

From the noisy latent and the network's output, the clean-latent estimate x0_hat is
decoded by the frozen autoencoder (under gradient checkpointing, so the decoder's
activations are recomputed in the backward pass instead of kept), mapped to attenuation
and rendered along the model's views; the loss is the L1 distance to the input X-rays in
the networks' normalised domain (line integral / xray_scale), per sample weighted by a
function of the timestep so that near-clean steps, whose x0_hat is sharp, weigh most:

    L_proj = mean_b  w(t_b) * mean |project(hu_to_mu(hu(decode(x0_hat_b)))) / s - xray_b|

    w(t) = abar_t ("alpha_bar"), min(SNR_t, 5) / 5 ("snr") or 1 ("constant").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from x2ct.projector import Geometry, hu_to_mu, project, project_views

__all__ = ["ProjectionLoss", "remove_background", "timestep_weight", "unit_to_hu_linear"]


def _pad_odd(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """Pad ``pad`` entries at both ends of ``dim`` by point reflection about the end
    values (2 x_0 - x_k): linear trends continue, so a Gaussian blur keeps them."""
    if pad == 0:
        return x
    n = x.shape[dim]
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
    head = 2 * first - x.narrow(dim, 1, pad).flip(dim)
    tail = 2 * last - x.narrow(dim, n - 1 - pad, pad).flip(dim)
    return torch.cat([head, x, tail], dim)


def remove_background(r: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``r - G_sigma * r`` per image (..., H, W): the residual without its smooth part (a
    separable Gaussian of ``sigma_px`` pixels; borders padded by point reflection, so a
    linear trend is removed exactly). Radiographs of a patient hold the tissue around the
    model's field too; seen from the field, that adds a slowly varying background, which
    this removes before residuals are compared."""
    radius = max(1, int(round(3 * sigma_px)))
    shape = r.shape
    img = r.reshape(-1, 1, *shape[-2:])
    out = img
    for dim, n in ((2, shape[-2]), (3, shape[-1])):
        pad = min(radius, n - 1)
        x = torch.arange(-pad, pad + 1, dtype=r.dtype, device=r.device)
        k = torch.exp(-0.5 * (x / sigma_px) ** 2)
        k = (k / k.sum()).reshape(1, 1, -1, 1) if dim == 2 else (k / k.sum()).reshape(1, 1, 1, -1)
        out = torch.nn.functional.conv2d(_pad_odd(out, pad, dim), k)
    return r - out.reshape(shape)


def timestep_weight(alpha_bar: torch.Tensor, weighting: str) -> torch.Tensor:
    """w(t) from abar_t, (B,)."""
    if weighting == "alpha_bar":
        return alpha_bar
    if weighting == "snr":
        return (alpha_bar / (1 - alpha_bar).clamp_min(1e-8)).clamp(max=5.0) / 5.0
    if weighting == "constant":
        return torch.ones_like(alpha_bar)
    raise ValueError(f"unknown projection weighting {weighting!r}")


def unit_to_hu_linear(x: torch.Tensor, hu_window: Sequence[float]) -> torch.Tensor:
    """[-1, 1] -> HU over the window, without clipping (keeps gradients at the ends)."""
    lo, hi = hu_window
    return (x + 1.0) * (0.5 * (hi - lo)) + lo


class ProjectionLoss:
    """Renders decoded latents and compares them to X-rays; not a module (holds no weights,
    only a reference to the frozen autoencoder)."""

    def __init__(
        self,
        autoencoder,
        geometry: Geometry,
        ct_shape: Sequence[int],
        xray_scale: float,
        step: float = 1.0,
        weighting: str = "alpha_bar",
        checkpointing: bool | None = None,
        background_sigma_px: float | None = None,
    ):
        """``checkpointing``: recompute the decoder in the backward pass instead of keeping
        its activations; None: only when the autoencoder does not checkpoint its own blocks
        (``gradient_checkpointing``), since a checkpoint around block checkpoints saves no
        more memory and runs the whole decoder a third time.
        ``background_sigma_px``: compare residuals without their smooth part
        (:func:`remove_background`), for X-rays that hold more than the field (whole-body
        radiographs); None compares them whole."""
        self.autoencoder = autoencoder
        self.geometry = geometry
        self.ct_shape = tuple(int(n) for n in ct_shape)
        self.spacing = tuple(autoencoder.config.spacing)
        self.hu_window = tuple(autoencoder.config.hu_window)
        self.xray_scale = float(xray_scale)
        self.step = float(step)
        self.weighting = weighting
        if checkpointing is None:
            checkpointing = not getattr(autoencoder.config, "gradient_checkpointing", False)
        self.checkpointing = bool(checkpointing)
        self.background_sigma_px = background_sigma_px
        timestep_weight(torch.ones(1) * 0.5, weighting)  # validates the name

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> CT in [-1, 1] (B, 1, X, Y, Z)."""
        fn = lambda v: self.autoencoder.decode(v, shape=self.ct_shape)
        if self.checkpointing and torch.is_grad_enabled() and z.requires_grad:
            return checkpoint(fn, z, use_reentrant=False)
        return fn(z)

    def drr(self, ct_unit: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """CT in [-1, 1] -> normalised DRRs (B, V, H, W), along the geometry's views or
        per case along ``views`` ((B, V, 15) or (V, 15) view vectors)."""
        mu = hu_to_mu(unit_to_hu_linear(ct_unit.float(), self.hu_window))
        if views is None:
            return project(mu, self.geometry, self.spacing, step=self.step) / self.xray_scale
        drr = project_views(
            mu, views, self.geometry.detector_shape, self.spacing, self.step, self.geometry.parallel
        )
        return drr / self.xray_scale

    def per_sample(
        self, z0: torch.Tensor, xrays: torch.Tensor, views: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) mean |DRR(decode(z0)) - xrays|, unweighted; ``xrays`` are normalised line
        integrals (line integral / xray_scale)."""
        drr = self.drr(self.decode(z0), views)
        r = drr - xrays.to(drr.dtype)
        if self.background_sigma_px is not None:
            r = remove_background(r, self.background_sigma_px)
        return r.abs().flatten(1).mean(1)

    def __call__(
        self,
        z0: torch.Tensor,
        xrays: torch.Tensor,
        alpha_bar: torch.Tensor,
        views: torch.Tensor | None = None,
    ):
        """Weighted loss (scalar) and the unweighted per-sample errors (B,)."""
        err = self.per_sample(z0, xrays, views)
        w = timestep_weight(alpha_bar.to(err.device, err.dtype), self.weighting)
        return (w * err).mean(), err.detach()
